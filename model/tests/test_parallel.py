"""Data-parallel training (config "procs"): gradients averaged over processes equal the full batch's gradient,
the processes take disjoint rows, and a two-process stage trains and writes one checkpoint."""
import json
import os
import tempfile

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import TINY
from test_train_export import make_dataset, train
from model import load_checkpoint
import train as train_py


def _half_batch_gradients(rank, world, init, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    rows = slice(rank * 4, rank * 4 + 4)
    torch.nn.functional.cross_entropy(net(x[rows]), y[rows]).backward()
    train_py.average_gradients(list(net.parameters()), world)
    torch.save([p.grad for p in net.parameters()], os.path.join(out, f"grads{rank}.pt"))
    dist.destroy_process_group()


def test_averaged_gradients_equal_the_full_batch_gradient(tmp_path):
    mp.spawn(_half_batch_gradients, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    torch.nn.functional.cross_entropy(net(x), y).backward()
    g0, g1 = (torch.load(tmp_path / f"grads{r}.pt") for r in (0, 1))
    for a, b, full in zip(g0, g1, net.parameters()):
        assert torch.equal(a, b)  # every process steps with the same gradient
        assert torch.allclose(a, full.grad, atol=1e-6)


def test_processes_draw_disjoint_rows():
    class Rows:
        def __len__(self):
            return 10
    seen = []
    for rank in (0, 1):
        b = train_py.Batches(Rows(), None, 4, 0, np.random.default_rng(rank), rank=rank, world=2)
        idx = np.concatenate([b.indices() for _ in range(5)])  # two epochs of the process's 5 rows and a bit
        assert len(idx) == 10 and set(idx) == set(range(rank, 10, 2))
        seen.append(set(idx))
    assert not seen[0] & seen[1]


def test_two_process_stage_trains_and_writes_one_checkpoint(tmp_path):
    make_dataset(tmp_path / "data", n_img=32, n_clip=8)
    model = {**TINY, "expert_form": "dense", "memory_mixer": 1}
    train(tmp_path, 0, 3, model=model, batch_clips=2)
    losses, out = train(tmp_path, 2, 16, init="stage0.pt", train=["resampler", "experts", "memory", "xattn", "gates"],
                        batch_clips=2, lr_mult={"gates": 10}, gate_push=0.1, gate_push_steps=4, procs=2)
    assert losses[-1] < losses[0], out
    assert out.count('"step": 0,') == 1  # one process logs
    m, ck = load_checkpoint(str(tmp_path / "run" / "stage2.pt"))
    assert ck["metrics"]["rows_seen"] == 16 * (8 + 2)  # both processes' rows
    assert ck["train_config"]["procs"] == 2
