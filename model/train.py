"""Train the reference model, one stage per config file (model/configs/stage{0,1,2,3}.json).

    /usr/bin/python3 model/train.py --config model/configs/stage1.json --data out/evlm-data --out out/evlm

Stage 0 (vision encoder): the stand-in for the papers' pretrained vision encoder (EVA-CLIP), which cannot be
         downloaded here: the ViT learns, with training-only linear heads on its taps (heads.PatchHeads), to label
         every patch with the (shape, color, size) of the object in its grid cell and of the object covering it
         (labels from the scene description of the training rows; clip frames included). The heads are not exported.
Stage 1 (text): the decoder learns the language of captions and answers, no image.
Stage 2 (align + multi-task): ViT, resampler, visual FFN, cross-attention memory and gated cross-attention
         learn captions, VQA and video with the language model frozen (optionally unfrozen late, at a low rate),
         helped by training-only heads (heads.CellHeads, heads.BowHead).
Stage 3 (experts): the visual FFN is upcycled into experts (model.VisualExperts.upcycle_from); the router and
         experts train, the rest frozen, with a load-balancing loss.

Each stage reads the previous stage's checkpoint (`init`), writes `{out}/stage{n}.pt` (config + weights + the
stage config + metrics) and logs to `{out}/stage{n}.log`. Everything is seeded; torch runs on one thread.
train_stage (stages 1-3) is the loop; its parts are validation_sets, training_heads, stage_optimizer, stage_batches,
step_loss (one step's forward pass and losses), log_step, validate_and_save and finish_stage.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one BLAS thread: the machine is shared

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import EVLM, EVLMConfig, greedy_generate, load_checkpoint, save_checkpoint  # noqa: E402
from data import BOS, SEP, Split, Vocab, pack, segments_for  # noqa: E402
from heads import CELL_HEADS, BowHead, CellHeads, PatchHeads, grid_targets  # noqa: E402

DEFAULTS = {
    "stage": 1,
    "init": None,               # checkpoint of the previous stage (relative to --out)
    "init_from": {},            # {module: checkpoint}: these modules' weights from another checkpoint of the same
                                # architecture (stage 2: the ViT of stage 0, when stage 1 ran beside stage 0)
    "init_seed": None,          # with init None: torch seed of the model's construction (default: seed); stage 1
                                # uses stage 0's, so that it starts from exactly the decoder stage 0 saved
    "model": {},                # EVLMConfig fields (stage 1: the architecture; stage 3: expert_form etc.)
    "train": ["decoder"],       # parameter groups that learn (model.EVLM.param_groups)
    "freeze": [],               # parameter name prefixes that stay frozen inside those groups (e.g. "memory.mixer")
    "steps": 1000,
    "batch_images": 32,         # images per step (stage 1: text rows per step)
    "batch_clips": 0,           # video clips per step
    "qa_per_image": 2,          # questions packed with each image's caption per step
    "loss_on_prompt": False,    # stage 1: language-model loss on the whole text (questions too)
    "lr": 1e-3,
    "warmup": 100,
    "min_lr_frac": 0.05,        # cosine decay to lr * min_lr_frac
    "weight_decay": 0.05,
    "grad_clip": 1.0,
    "label_smoothing": 0.0,
    "answer_weight": 1.0,       # loss weight of answer tokens relative to caption tokens
    "lb_coef": 0.01,            # load-balancing loss coefficient (stage 3)
    "lr_mult": {},              # per parameter group learning-rate multipliers, e.g. {"gates": 10}
    "adam_eps": 1e-8,
    "unfreeze": [],             # [{"at": fraction of steps, "groups": [...], "lr_mult": x}]: groups joining later
    "eval_every": 0,
    "eval_rows": 128,
    "images": "train",          # dataset stems under --data
    "video": "video",
    "val_dir": None,            # validation data (relative to --data); stems val / video
    "gate_push": 0.0,           # during the first gate_push_steps: loss -= gate_push * sum of gates (opens them)
    "gate_push_steps": 0,
    "bow_coef": 0.0,            # auxiliary bag-of-words loss on pooled visual tokens (images; stage 2)
    "grid_taps": [-1],          # stage 0: taps (indices into cfg.taps) that carry the per-patch label heads
    "cover_coef": 1.0,          # stage 0: weight of the "cover" labels relative to the "cell" labels
    "motion_coef": 0.0,         # stage 2: weights of the training-only cell heads (heads.CELL_HEADS), labels per cell:
    "order_coef": 0.0,          # motion (clips: the direction of the cell's object), order (clips: its place in the
    "group_coef": 0.0,          # caption), group (images: alone, or first / later member of a group of 2 or 3) and
    "object_coef": 0.0,         # object (images and clips: its shape and color)
    "cell_taps": [-1],          # taps (indices into the model's taps) whose memory tokens the cell heads read, a head
                                # per tap (the loss is their mean)
    "procs": 1,                 # data-parallel processes, one torch thread each: every process takes its share of
                                # the batch from its own half (third, ...) of the rows, and the gradients are averaged
                                # (gloo all-reduce) before every step, so the weights stay identical in all of them
    "seed": 0,
}


def log(fh, msg):
    if fh is None:  # data-parallel processes other than the first one are silent
        return
    print(msg, flush=True)
    fh.write(msg + "\n")
    fh.flush()


def lr_at(step, cfg):
    if step < cfg["warmup"]:
        return cfg["lr"] * (step + 1) / cfg["warmup"]
    p = (step - cfg["warmup"]) / max(1, cfg["steps"] - cfg["warmup"])
    m = cfg["min_lr_frac"]
    return cfg["lr"] * (m + (1 - m) * 0.5 * (1 + math.cos(math.pi * p)))


MODULES = ("vit", "resampler", "experts", "memory", "decoder")


def build_model(cfg, out_dir):
    if cfg["init"] is None:
        if cfg["init_seed"] is not None:
            torch.manual_seed(cfg["init_seed"])
        model = EVLM(EVLMConfig(**cfg["model"]))
        torch.manual_seed(cfg["seed"])
        return model
    prev, _ = load_checkpoint(os.path.join(out_dir, cfg["init"]))
    for module, path in cfg["init_from"].items():
        assert module in MODULES, f"init_from: unknown module {module!r} (one of {MODULES})"
        with torch.random.fork_rng():  # building it must not move the torch RNG (the training heads draw from it)
            other, _ = load_checkpoint(os.path.join(out_dir, path))
        assert other.cfg.to_dict() == prev.cfg.to_dict(), f"init_from: {path} and {cfg['init']} differ in architecture"
        getattr(prev, module).load_state_dict(getattr(other, module).state_dict())
    want = {**prev.cfg.to_dict(), **cfg["model"]}
    if want == prev.cfg.to_dict():
        return prev
    # stage 3: same model, visual FFN upcycled into experts
    model = EVLM(EVLMConfig(**want))
    state = {k: v for k, v in prev.state_dict().items() if not k.startswith("experts.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("experts.") for k in missing), (missing, unexpected)
    model.experts.upcycle_from(prev.experts)
    return model


def optimizer_groups(model, groups, cfg, lr_mult=1.0):
    """AdamW parameter groups for the named parts: weight decay on matrices only."""
    named = model.param_groups()
    frozen = {id(p) for n, p in model.named_parameters() if any(n.startswith(f) for f in cfg["freeze"])}
    out = []
    for g in groups:
        ps = [p for p in named[g] if id(p) not in frozen]
        for p in ps:
            p.requires_grad_(True)
        d = [p for p in ps if p.dim() >= 2]
        nd = [p for p in ps if p.dim() < 2]
        if d:
            out.append({"params": d, "weight_decay": cfg["weight_decay"], "lr_mult": lr_mult, "name": g})
        if nd:
            out.append({"params": nd, "weight_decay": 0.0, "lr_mult": lr_mult, "name": g})
    return out


class Batches:
    """Epoch-shuffled indices over a split; packs each row's caption + questions. With data-parallel processes
    (world > 1) each process draws n / world rows per step from its own rows (rank, rank + world, ...)."""

    def __init__(self, split: Split, vocab, n, n_qa, rng, loss_on_prompt=False, rank=0, world=1):
        assert n % world == 0, f"a batch of {n} rows does not split evenly over {world} processes"
        self.split, self.vocab, self.n, self.n_qa, self.rng = split, vocab, n // world, n_qa, rng
        self.loss_on_prompt = loss_on_prompt
        self.rows = np.arange(rank, len(split), world)
        self.order, self.pos, self.epoch = rng.permutation(self.rows), 0, 0

    def indices(self):
        if self.pos + self.n > len(self.order):
            self.order, self.pos, self.epoch = self.rng.permutation(self.rows), 0, self.epoch + 1
        idx = self.order[self.pos:self.pos + self.n]
        self.pos += self.n
        return np.sort(idx)

    def text(self, idx):
        segs = [segments_for(self.split.rows[i], self.vocab, self.n_qa, self.rng) for i in idx]
        return pack(segs, self.loss_on_prompt)


def average_gradients(params, world):
    """Data parallel: replace every gradient by its mean over the processes (one all-reduce of one flat buffer).
    The sum is computed once and sent to every process, so all of them take the same optimizer step."""
    if world == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world
    for g, avg in zip(grads, _unflatten_dense_tensors(flat, grads)):
        g.copy_(avg)


def broadcast_weights(modules, world):
    """Data parallel: every process starts from the first process's weights (they are built from the same seed; this
    makes it a guarantee)."""
    if world == 1:
        return
    for m in modules:
        for t in m.state_dict().values():
            dist.broadcast(t, 0)


def text_loss(logits, batch, cfg):
    """Mean cross-entropy over target tokens; answer tokens weighted by answer_weight. Returns (loss, parts)."""
    tgt = batch["targets"]
    ce = F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=-100, reduction="none",
                         label_smoothing=cfg["label_smoothing"]).view_as(tgt)
    on = (tgt != -100).float()
    w = on * torch.where(batch["kind"] == 1, cfg["answer_weight"], 1.0)
    parts = {}
    for name, k in (("cap", 0), ("ans", 1)):
        m = on * (batch["kind"] == k).float()
        parts[name] = ((ce * m).sum() / m.sum().clamp(min=1)).item()
    return (ce * w).sum(), w.sum(), parts


@torch.no_grad()
def validate(model, vocab, val, n):
    """Greedy exact match on a few validation rows: captions, first questions, clips."""
    model.eval()
    res = {}
    for name, split in val.items():
        idx = np.arange(min(n, len(split)))
        px, fm = split.frames(idx)
        (xk, xv, xm), _ = model.encode(px.to(DEV), fm.to(DEV))
        cap = greedy_generate(model.decoder, xk, xv, xm, [[BOS]] * len(idx))
        res[f"{name}_caption_em"] = float(np.mean([vocab.decode(c) == split.rows[i]["caption"] for c, i in zip(cap, idx)]))
        prompts = [[BOS] + vocab.encode(split.rows[i]["question"]) + [SEP] for i in idx]
        ans = greedy_generate(model.decoder, xk, xv, xm, prompts, max_new_tokens=4)
        res[f"{name}_vqa_acc"] = float(np.mean([vocab.decode(a) == split.rows[i]["answer"] for a, i in zip(ans, idx)]))
    model.train()
    return res


DEV = torch.device("cpu")


class TapsCache:
    """The frozen ViT's taps of a split's frames, computed on a row's first visit and kept (float16) for later visits:
    stages 2 and 3 see each row a few times and the ViT is a third of their step time. encode() gets the taps of the
    valid frames, flattened in the order EVLM.encode flattens them."""

    def __init__(self, model, split: Split):
        cfg = model.cfg
        frames = split.pixels.shape[1] if split.video else 1
        self.vit = model.vit
        # np.zeros maps untouched pages lazily: memory grows with the rows seen (about 49 KB per frame)
        self.taps = np.zeros((len(split), frames, cfg.n_taps, cfg.n_patches, cfg.vit_dim), np.float16)
        self.done = np.zeros(len(split), bool)

    @torch.no_grad()
    def get(self, idx, px, fm):
        nf = fm.sum(1).long().tolist()
        todo = [j for j, i in enumerate(idx) if not self.done[i]]
        if todo:
            keep = fm[todo].reshape(-1) > 0
            new = self.vit(px[todo].reshape(-1, *px.shape[2:])[keep].to(DEV)).cpu().numpy().astype(np.float16)
            o = 0
            for j in todo:
                self.taps[idx[j], :nf[j]] = new[o:o + nf[j]]
                o += nf[j]
            self.done[idx[todo]] = True
        return torch.from_numpy(np.concatenate([self.taps[i, :n] for i, n in zip(idx, nf)]).astype(np.float32)).to(DEV)


def pretrain_vision(cfg, args, fh, images, clips, rng, rank, world):
    """Stage 0: the ViT alone, supervised per patch by heads.PatchHeads (see the module docstring). Writes stage0.pt."""
    model = build_model(cfg, args.out).to(DEV)
    for p in model.parameters():
        p.requires_grad_(False)
    heads = PatchHeads(model.cfg.vit_dim, cfg["grid_taps"]).to(DEV)
    groups = optimizer_groups(model, ["vit"], cfg)
    groups.append({"params": list(heads.parameters()), "weight_decay": 0.0, "lr_mult": 1.0, "name": "heads"})
    opt = torch.optim.AdamW(groups, lr=cfg["lr"], betas=(0.9, 0.98), eps=cfg["adam_eps"])
    log(fh, f"# model {json.dumps(model.cfg.to_dict())}")
    log(fh, f"# params {sum(p.numel() for p in model.parameters())}, trainable {sum(p.numel() for p in model.vit.parameters())} (vit) + heads")
    broadcast_weights([model, heads], world)
    img_b = Batches(images, None, cfg["batch_images"], 0, rng, rank=rank, world=world)
    vid_b = Batches(clips, None, cfg["batch_clips"], 0, rng, rank=rank, world=world) if cfg["batch_clips"] else None
    params = [p for g in opt.param_groups for p in g["params"]]
    model.train()
    t_start, cpu_start, seen, hist = time.time(), time.process_time(), 0, []
    for step in range(cfg["steps"]):
        lr = lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_mult"]
        px, lab = grid_targets(images, img_b.indices())
        if vid_b is not None:
            vpx, vlab = grid_targets(clips, vid_b.indices())
            px, lab = torch.cat([px, vpx]), torch.cat([lab, vlab])
        px, lab = px.to(DEV), lab.to(DEV)
        loss, acc = heads.loss(model.vit(px), lab, cfg["cover_coef"])  # model.vit(px): taps [N,L,P,Dv]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(params, world)
        gn = torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip"])
        opt.step()
        seen += len(px) * world
        hist.append(acc[-3:])  # the last tap's cell accuracies on object patches: shape, color, size
        if step % 25 == 0 or step == cfg["steps"] - 1:
            el = time.time() - t_start
            a = np.mean(hist[-25:], axis=0)
            log(fh, json.dumps({"step": step, "loss": round(loss.item(), 4), "acc_shape": round(a[0], 4),
                                "acc_color": round(a[1], 4), "acc_size": round(a[2], 4), "lr": round(lr, 6),
                                "gnorm": round(gn.item(), 3), "frames_per_s": round(seen / el, 1),
                                "elapsed_s": round(el, 1), "cpu_s": round(time.process_time() - cpu_start, 1)}))
    metrics = {"train_seconds": round(time.time() - t_start, 1), "train_cpu_seconds": round(time.process_time() - cpu_start, 1),
               "steps": cfg["steps"], "frames_seen": seen, "patch_acc_last25": np.mean(hist[-25:], axis=0).round(4).tolist()}
    model.eval()
    if rank == 0:
        save_checkpoint(os.path.join(args.out, "stage0.pt"), model, stage=0, train_config=cfg, metrics=metrics)
    log(fh, f"# done: {json.dumps(metrics)}; wrote {os.path.join(args.out, 'stage0.pt')}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--data", default="out/evlm-data", help="directory with the exported training data")
    ap.add_argument("--out", default="out/evlm", help="run directory: checkpoints and logs")
    ap.add_argument("--steps", type=int, default=None, help="override the config's steps (smoke tests)")
    ap.add_argument("--device", default="cpu", help="torch device (the committed model is trained on cpu)")
    ap.add_argument("--procs", type=int, default=None, help="override the config's data-parallel processes")
    args = ap.parse_args()

    cfg = {**DEFAULTS, **json.load(open(args.config))}
    if args.steps is not None:
        cfg["steps"] = args.steps
    if args.procs is not None:
        cfg["procs"] = args.procs
    world = cfg["procs"]
    if world == 1:
        return run(0, 1, args, cfg, None)
    assert args.device == "cpu", "data-parallel training (procs > 1) is for the CPU recipe"
    rendezvous = tempfile.mkdtemp(prefix="evlm-train-")
    try:  # one process per rank; an exception in one of them ends them all and is raised here
        torch.multiprocessing.spawn(run, args=(world, args, cfg, os.path.join(rendezvous, "init")), nprocs=world)
    finally:
        shutil.rmtree(rendezvous, ignore_errors=True)


def row_rng(cfg, rank, world):
    """The numpy generator that picks a process's rows and questions: seeded by the stage's seed (and the rank)."""
    if world == 1:
        return np.random.default_rng(cfg["seed"])
    return np.random.default_rng(np.random.SeedSequence(cfg["seed"]).spawn(world)[rank])


def run(rank, world, args, cfg, rendezvous):
    """One training process (of `world` data-parallel ones; the first one logs and writes the checkpoints)."""
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    global DEV
    DEV = torch.device(args.device)
    torch.manual_seed(cfg["seed"])
    rng = row_rng(cfg, rank, world)
    os.makedirs(args.out, exist_ok=True)
    stage = cfg["stage"]
    fh = open(os.path.join(args.out, f"stage{stage}.log"), "w") if rank == 0 else None
    log(fh, f"# stage {stage} config {json.dumps(cfg)}")

    vocab = Vocab(os.path.join(args.data, "vocab.txt"))
    t0 = time.time()
    images = Split.load(args.data, cfg["images"])
    clips = Split.load(args.data, cfg["video"]) if cfg["batch_clips"] or stage == 1 else None
    log(fh, f"# data: {len(images)} images" + (f", {len(clips)} clips" if clips else "") + f" loaded in {time.time() - t0:.1f}s")
    if stage == 0:
        pretrain_vision(cfg, args, fh, images, clips, rng, rank, world)
    else:
        train_stage(cfg, args, fh, images, clips, vocab, rng, rank, world)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def train_stage(cfg, args, fh, images, clips, vocab, rng, rank, world):
    """Stages 1, 2 and 3 (see the module docstring). Writes stage{n}.pt."""
    stage = cfg["stage"]
    val = validation_sets(cfg, args.data) if rank == 0 else {}  # the first process validates
    model = build_model(cfg, args.out).to(DEV)
    assert model.cfg.vocab_size == len(vocab)
    for p in model.parameters():
        p.requires_grad_(False)
    bow, cells = training_heads(cfg, model)
    opt = stage_optimizer(cfg, model, bow, cells)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(fh, f"# model {json.dumps(model.cfg.to_dict())}")
    log(fh, f"# params {sum(p.numel() for p in model.parameters())}, trainable {n_train} ({', '.join(cfg['train'])})")
    if model.cfg.expert_form == "eve" and "experts" in cfg["train"]:  # Eve: the original FFN (expert 0) stays frozen
        for name in ("w1", "b1", "w2", "b2"):
            p = getattr(model.experts, name)
            p.register_hook(lambda g: torch.cat([torch.zeros_like(g[:1]), g[1:]]))
    img_b, vid_b = stage_batches(cfg, images, clips, vocab, rng, rank, world)
    broadcast_weights([m for m in (model, bow, cells) if m is not None], world)
    unfreeze = cfg["unfreeze"] if isinstance(cfg["unfreeze"], list) else [cfg["unfreeze"]] if cfg["unfreeze"] else []
    trains_vit = "vit" in cfg["train"] or any("vit" in u["groups"] for u in unfreeze)
    caches = {} if stage == 1 or trains_vit else {"img": TapsCache(model, images)}
    if caches and clips is not None:
        caches["vid"] = TapsCache(model, clips)

    model.train()
    clock = {"t_start": time.time(), "cpu_start": time.process_time()}
    seen = 0
    expert_counts = None
    pending = sorted(unfreeze, key=lambda u: u["at"])
    for step in range(cfg["steps"]):
        while pending and step >= int(pending[0]["at"] * cfg["steps"]):
            uf = pending.pop(0)
            for g in optimizer_groups(model, uf["groups"], cfg, uf.get("lr_mult", 1.0)):
                opt.add_param_group(g)
            log(fh, f"# step {step}: unfreezing {uf['groups']} at lr x{uf.get('lr_mult', 1.0)}")
        lr = lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_mult"]
        loss, parts, aux_loss, counts, rows = step_loss(cfg, model, bow, cells, vocab, img_b, vid_b, caches)
        seen += rows * world
        for c in counts:  # routed slots per expert, of the images then the clips
            expert_counts = c if expert_counts is None else expert_counts + c
        if step < cfg["gate_push_steps"]:
            # Cross-attention gates start at 0, so the stage starts from the unchanged language model. With a
            # from-scratch vision tower the gates stay trapped at 0 (random cross-attention output only hurts, so
            # the gate gradient pulls them back, and the cross-attention weights' gradients, proportional to
            # tanh(gate), flip sign with it). A small push during the first steps opens them at a controlled rate.
            loss = loss - cfg["gate_push"] * sum(p.sum() for p in model.param_groups()["gates"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in opt.param_groups for p in g["params"]]
        average_gradients(params, world)
        gn = torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip"])
        opt.step()
        if step % 25 == 0 or step == cfg["steps"] - 1:
            log_step(fh, cfg, model, step, loss, parts, aux_loss, lr, gn, seen, clock)
        if cfg["eval_every"] and val and ((step + 1) % cfg["eval_every"] == 0 or step == cfg["steps"] - 1):
            validate_and_save(fh, cfg, args, model, vocab, val, step, clock)
    finish_stage(fh, cfg, args, model, rank, world, seen, expert_counts, clock)


def validation_sets(cfg, data_dir):
    """The validation rows stages 2 and 3 track ("val_dir", "eval_every"): {"val": images, "val_video": clips}."""
    val = {}
    if cfg["val_dir"] and cfg["eval_every"]:
        vd = os.path.join(data_dir, cfg["val_dir"])
        val["val"] = Split.load(vd, "val", limit=cfg["eval_rows"])
        if cfg["batch_clips"]:
            val["val_video"] = Split.load(vd, "video", limit=cfg["eval_rows"] // 2)
    return val


def training_heads(cfg, model):
    """The stage's training-only heads (model/heads.py), each when its coefficient is set: (BowHead or None,
    CellHeads or None)."""
    bow = BowHead(model.cfg.vit_dim, model.cfg.vocab_size).to(DEV) if cfg["bow_coef"] else None
    names = [name for name in CELL_HEADS if cfg[f"{name}_coef"]]
    if not names:
        return bow, None
    grid = model.cfg.resampler_grid or int(round(math.sqrt(model.cfg.n_query)))  # see model.spatial_prior
    cells = CellHeads(names, model.cfg.d_visual, cfg["cell_taps"], grid).to(DEV)
    assert model.cfg.resampler_prior > 0 and model.cfg.memory_mixer, "the cell heads need grid queries and a mixer"
    return bow, cells


def stage_optimizer(cfg, model, bow, cells):
    """AdamW over the groups in cfg["train"] (at their lr_mult) and the training heads (one group per head, no decay)."""
    groups = [g for name in cfg["train"] for g in optimizer_groups(model, [name], cfg, cfg["lr_mult"].get(name, 1.0))]
    heads = ([("bow", bow)] if bow is not None else []) + (list(cells.heads.items()) if cells is not None else [])
    for name, head in heads:
        groups.append({"params": list(head.parameters()), "weight_decay": 0.0, "lr_mult": 1.0, "name": name})
    return torch.optim.AdamW(groups, lr=cfg["lr"], betas=(0.9, 0.98), eps=cfg["adam_eps"])


def stage_batches(cfg, images, clips, vocab, rng, rank, world):
    """(image batches, clip batches or None). Stage 1 (text only): captions and QA of images and clips, as packed rows."""
    if cfg["stage"] == 1:
        texts = [r for r in images.rows] + ([r for r in clips.rows] if clips else [])
        text_split = Split(np.zeros((len(texts), 1), np.uint8), texts, False)
        return Batches(text_split, vocab, cfg["batch_images"], cfg["qa_per_image"], rng, cfg["loss_on_prompt"], rank, world), None
    img_b = Batches(images, vocab, cfg["batch_images"], cfg["qa_per_image"], rng, rank=rank, world=world)
    vid_b = Batches(clips, vocab, cfg["batch_clips"], 1, rng, rank=rank, world=world) if cfg["batch_clips"] else None
    return img_b, vid_b


def step_loss(cfg, model, bow, cells, vocab, img_b, vid_b, caches):
    """One step's images and clips through the model -> (loss, parts (per-task losses), the experts' load-balancing
    loss, the routed slots per expert of the images and of the clips (a list of 0-2 tensors [E]), rows used)."""
    total, count, parts, aux_loss, extra_loss = 0.0, 0.0, {}, 0.0, 0.0
    expert_counts, rows = [], 0
    for kind, b in (("img", img_b), ("vid", vid_b)):
        if b is None:
            continue
        idx = b.indices()
        batch = {k: v.to(DEV) for k, v in b.text(idx).items()}
        x = model.decoder.embed(batch["input_ids"], batch["position_ids"])
        if cfg["stage"] == 1:
            logits, _, _ = model.decoder.run(x, batch["bias"])
        else:
            px, fm = b.split.frames(idx)
            taps = caches[kind].get(idx, px, fm) if caches else None
            (xk, xv, xm), aux = model.encode(px.to(DEV), fm.to(DEV), taps)
            logits, _, _ = model.decoder.run(x, batch["bias"], None, None, xk, xv, xm)
            if bow is not None and kind == "img":
                bow_loss = bow.loss(aux["taps"][:, -1], [b.split.rows[i]["caption"] for i in idx], vocab, DEV)
                parts["bow"] = bow_loss.item()
                extra_loss = extra_loss + cfg["bow_coef"] * bow_loss
            if cells is not None:
                rows_b = [b.split.rows[i] for i in idx]
                for name, head_loss in cells.losses(kind, rows_b, aux["memory_tokens"], fm.shape[1], model.cfg.n_query, DEV).items():
                    parts[name] = head_loss.item()
                    extra_loss = extra_loss + cfg[f"{name}_coef"] * head_loss
            if "lb_loss" in aux:
                aux_loss = aux_loss + aux["lb_loss"]
                expert_counts.append(aux["expert_counts"])
        s, n, p = text_loss(logits, batch, cfg)
        total, count = total + s, count + n
        parts.update({f"{kind}_{k}": v for k, v in p.items()})
        rows += len(idx)
    return total / count + cfg["lb_coef"] * aux_loss + extra_loss, parts, aux_loss, expert_counts, rows


def log_step(fh, cfg, model, step, loss, parts, aux_loss, lr, gn, seen, clock):
    el = time.time() - clock["t_start"]
    msg = {"step": step, "loss": round(loss.item(), 4), **{k: round(v, 4) for k, v in parts.items()},
           "lr": round(lr, 6), "gnorm": round(gn.item(), 3), "rows_per_s": round(seen / el, 1), "elapsed_s": round(el, 1),
           "cpu_s": round(time.process_time() - clock["cpu_start"], 1)}
    if aux_loss:
        msg["lb"] = round(float(aux_loss), 4)
    if cfg["stage"] > 1:
        msg["gates"] = [round(float(torch.tanh(l.xattn.attn_gate)), 3) for l in model.decoder.layers]
    log(fh, json.dumps(msg))


def validate_and_save(fh, cfg, args, model, vocab, val, step, clock):
    """Greedy validation and a partial checkpoint; their time is not counted as training time."""
    te, ce = time.time(), time.process_time()
    res = validate(model, vocab, val, cfg["eval_rows"])
    log(fh, json.dumps({"step": step + 1, "eval": {k: round(v, 4) for k, v in res.items()}, "eval_s": round(time.time() - te, 1)}))
    save_checkpoint(os.path.join(args.out, f"stage{cfg['stage']}.pt"), model, stage=cfg["stage"], train_config=cfg,
                    metrics={"partial": True, "step": step + 1, "eval": res})
    clock["t_start"] += time.time() - te
    clock["cpu_start"] += time.process_time() - ce


def finish_stage(fh, cfg, args, model, rank, world, seen, expert_counts, clock):
    """The stage's metrics (expert load summed over the processes) and its checkpoint, written by the first process."""
    stage = cfg["stage"]
    metrics = {"train_seconds": round(time.time() - clock["t_start"], 1),
               "train_cpu_seconds": round(time.process_time() - clock["cpu_start"], 1), "steps": cfg["steps"], "rows_seen": seen}
    if expert_counts is not None:
        if world > 1:
            expert_counts = expert_counts.clone()
            dist.all_reduce(expert_counts)
        metrics["expert_load_train"] = (expert_counts / expert_counts.sum()).tolist()
    model.eval()
    if rank == 0:
        save_checkpoint(os.path.join(args.out, f"stage{stage}.pt"), model, stage=stage, train_config=cfg, metrics=metrics)
    log(fh, f"# done: {json.dumps(metrics)}; wrote {os.path.join(args.out, f'stage{stage}.pt')}")


if __name__ == "__main__":
    main()
