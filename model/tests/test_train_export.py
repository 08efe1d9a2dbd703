"""A 20-step training smoke test (stages 1 -> 2 -> 3 on a tiny config and a tiny synthetic dataset) and the
export of a tiny random configuration (structural: files, manifest, reference; ORT numbers: parity.test.ts)."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import MODEL_DIR, REPO, TINY, VOCAB, tiny
from model import EVLM, load_checkpoint

COLORS = ["red", "green", "blue", "yellow"]
RGB = {"red": (230, 30, 30), "green": (30, 200, 60), "blue": (30, 60, 230), "yellow": (240, 200, 20)}
SHAPE = {"left": (8, 24), "right": (40, 56)}


def make_dataset(d, n_img=64, n_clip=12, seed=0):
    """Images of one colored square on the left or right, captioned by the scenes grammar's words."""
    rng = np.random.default_rng(seed)
    os.makedirs(d, exist_ok=True)
    shutil.copy(VOCAB, os.path.join(d, "vocab.txt"))
    imgs = np.full((n_img, 64, 64, 3), 128, np.uint8)
    with open(os.path.join(d, "train.jsonl"), "w") as f:
        for i in range(n_img):
            c, side = COLORS[rng.integers(4)], ["left", "right"][rng.integers(2)]
            a, b = SHAPE[side]
            imgs[i, 24:40, a:b] = RGB[c]
            qa = [{"type": "color", "question": "what color is the square?", "answer": c},
                  {"type": "where", "question": f"where is the {c} square?", "answer": side}]
            scene = {"kind": "image", "width": 64, "height": 64, "objects": [  # for the stage-0 patch labels
                {"shape": "square", "color": c, "size": "large", "row": 1, "col": 0 if side == "left" else 2,
                 "x": (a + b) / 2, "y": 32, "r": 8}]}
            f.write(json.dumps({"id": f"i{i}", "caption": f"a large {c} square on the {side}", "question": qa[0]["question"],
                                "answer": c, "qa": qa, "scene": scene}) + "\n")
    np.save(os.path.join(d, "train.images.npy"), imgs)
    frames = np.zeros((n_clip, 8, 64, 64, 3), np.uint8)
    with open(os.path.join(d, "video.jsonl"), "w") as f:
        for i in range(n_clip):
            c, nf, up = COLORS[rng.integers(4)], int(rng.integers(4, 9)), bool(rng.integers(2))
            for t in range(nf):
                y = 40 - 4 * t if up else 8 + 4 * t
                frames[i, t] = 128
                frames[i, t, y:y + 12, 26:38] = RGB[c]
            dirn = "up" if up else "down"
            qa = [{"type": "direction", "question": f"which way does the {c} square move?", "answer": dirn}]
            path = [[32, (40 - 4 * t if up else 8 + 4 * t) + 6] for t in range(nf)]
            scene = {"kind": "video", "width": 64, "height": 64, "objects": [
                {"shape": "square", "color": c, "size": "large", "direction": dirn, "r": 6, "path": path}]}
            f.write(json.dumps({"id": f"v{i}", "caption": f"a {c} square moves {dirn}", "question": qa[0]["question"],
                                "answer": dirn, "qa": qa, "num_frames": nf, "scene": scene}) + "\n")
    np.save(os.path.join(d, "video.frames.npy"), frames)


def train(tmp_path, stage, steps, **extra):
    cfg = {"stage": stage, "steps": steps, "batch_images": 8, "qa_per_image": 2, "warmup": 2, "lr": 3e-3, "seed": 0,
           **extra}
    path = tmp_path / f"stage{stage}.json"
    path.write_text(json.dumps(cfg))
    r = subprocess.run([sys.executable, os.path.join(MODEL_DIR, "train.py"), "--config", str(path),
                        "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    losses = [json.loads(l)["loss"] for l in r.stdout.splitlines() if l.startswith('{"step"') and '"loss"' in l]
    return losses, r.stdout


def test_three_stage_smoke_training_loss_falls(tmp_path):
    make_dataset(tmp_path / "data")
    model = {**TINY, "expert_form": "dense", "vit_stem": "deep", "memory_mixer": 1}
    # stage 0 (vision encoder pre-training, per-patch labels from the scenes): the loss falls, only the ViT moves
    l0, out0 = train(tmp_path, 0, 12, model=model, batch_clips=2, grid_taps=[0, 1], lr=1e-2)
    assert l0[-1] < l0[0], out0
    m0, ck0 = load_checkpoint(str(tmp_path / "run" / "stage0.pt"))
    assert ck0["stage"] == 0 and m0.cfg.vit_stem == "deep"
    torch.manual_seed(0)  # train.py seeds with the config's seed (0) before building the model
    s0, init = m0.state_dict(), EVLM(m0.cfg).state_dict()
    assert all(torch.equal(s0[k], v) for k, v in init.items() if not k.startswith("vit."))
    assert not all(torch.equal(s0[k], v) for k, v in init.items() if k.startswith("vit."))
    l1, _ = train(tmp_path, 1, 10, init="stage0.pt", train=["decoder"], loss_on_prompt=True)
    l2, out2 = train(tmp_path, 2, 20, init="stage1.pt", train=["vit", "resampler", "experts", "memory", "xattn", "gates"],
                     batch_clips=2, unfreeze=[{"at": 0.5, "groups": ["decoder"], "lr_mult": 0.1}], lr_mult={"gates": 10},
                     gate_push=0.1, gate_push_steps=5, bow_coef=1.0, motion_coef=1.0,
                     order_coef=1.0, group_coef=1.0, object_coef=1.0, cell_taps=[0, 1])
    l3, out3 = train(tmp_path, 3, 6, init="stage2.pt", model={"expert_form": "evlm"}, train=["experts"], batch_clips=2)
    assert l1[-1] < l1[0]
    assert len(l2) >= 2 and l2[-1] < l2[0], out2  # 20 steps of stage 2: the loss falls
    assert "unfreezing ['decoder']" in out2
    for head in ("motion", "order", "group", "object"):  # the cell heads are on
        assert all(f'"{head}"' in l for l in out2.splitlines() if l.startswith('{"step"') and '"loss"' in l), head
    gates = [json.loads(l)["gates"] for l in out2.splitlines() if l.startswith('{"step"') and '"gates"' in l]
    assert any(g != 0 for g in gates[-1])  # the gates left 0
    # checkpoints carry their config; stage 3 upcycled the visual FFN into experts
    m3, ck = load_checkpoint(str(tmp_path / "run" / "stage3.pt"))
    assert ck["config"]["expert_form"] == "evlm" and ck["stage"] == 3
    assert m3.cfg.tap_for_layer == tuple(TINY["tap_for_layer"])
    assert len(ck["metrics"]["expert_load_train"]) == m3.cfg.n_experts
    assert os.path.exists(tmp_path / "run" / "stage2.log")
    # only the experts moved in stage 3
    m2, _ = load_checkpoint(str(tmp_path / "run" / "stage2.pt"))
    s2, s3 = m2.state_dict(), m3.state_dict()
    assert all(torch.equal(s2[k], s3[k]) for k in s2 if not k.startswith("experts."))


@pytest.mark.parametrize("form,mixer", [("evlm", 1), ("eve", 0)])
def test_export_tiny_random_config(tmp_path, form, mixer):
    from build_base import perturb
    from export import export, read_onnx_io
    torch.manual_seed(0)
    m = perturb(EVLM(tiny(expert_form=form, memory_mixer=mixer)), 0)  # distinct parameters, open gates (export check 4)
    out = tmp_path / "pkg"
    manifest, _ = export(m, str(out), VOCAB, None, name="tiny", quiet=True)
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    assert manifest["format"] == "evflow-model/1" and manifest["opset"] == 17
    assert manifest["experts"]["form"] == form and manifest["dims"]["shared_expert"] == (form == "evlm")
    assert manifest["tap_for_layer"] == list(TINY["tap_for_layer"])
    assert manifest["preprocessing"] == {"size": 64, "resize": "fill", "mean": [0.5] * 3, "std": [0.5] * 3,
                                         "layout": "NCHW", "channels": "RGB",
                                         "scale": "pixel / 255, then (x - mean) / std"}
    assert set(manifest["graphs"]) == {"vit", "resampler", "router", "experts", "xattn_kv", "decoder", "llava_decoder"}
    sha = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
    for g, spec in manifest["graphs"].items():
        f = out / spec["file"]
        assert sha(f) == spec["sha256"]
        opsets, ins, outs = read_onnx_io(str(f))
        assert opsets[""] == 17
        assert ins == [i["name"] for i in spec["inputs"]] and outs == [o["name"] for o in spec["outputs"]]
    for rel, meta in manifest["files"].items():
        assert sha(out / rel) == meta["sha256"]
    # every reference index points at tensors of the right size
    for g, files in manifest["reference"]["graphs"].items():
        for rel in files:
            idx = json.loads((out / rel).read_text())
            assert [t["name"] for t in idx["inputs"]] == [i["name"] for i in manifest["graphs"][g]["inputs"]]
            for t in idx["inputs"] + idx["outputs"]:
                assert (out / t["file"]).stat().st_size == 4 * (2 if t["dtype"] == "int64" else 1) * int(np.prod(t["dims"]))
    greedy = json.loads((out / "reference" / "greedy.json").read_text())
    assert {s["task"] for s in greedy["samples"]} == {"caption", "vqa"} and len(greedy["video"]["samples"]) == 2
    assert all(len(s["expected_ids"]) >= 1 for s in greedy["samples"])


def test_stage1_beside_stage0_starts_from_the_same_weights(tmp_path):
    """The recipe runs stage 1 beside stage 0 (init None, init_seed = stage 0's seed) and stage 2 takes the ViT
    from stage 0 (init_from): the same model as stage 1 initialised from stage0.pt."""
    import train as train_py
    make_dataset(tmp_path / "data", n_img=16, n_clip=4)
    model = {**TINY, "expert_form": "dense", "memory_mixer": 1}
    train(tmp_path, 0, 3, model=model, batch_clips=2)
    common = dict(train=["decoder"], batch_images=4, seed=1)
    train(tmp_path, 1, 3, init="stage0.pt", **common)
    os.rename(tmp_path / "run" / "stage1.pt", tmp_path / "run" / "stage1_after_0.pt")
    train(tmp_path, 1, 3, init=None, init_seed=0, model=model, **common)
    a = torch.load(tmp_path / "run" / "stage1_after_0.pt")["model"]
    b = torch.load(tmp_path / "run" / "stage1.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("vit."))
    assert not all(torch.equal(a[k], b[k]) for k in a if k.startswith("vit."))  # stage 1 alone has the untrained ViT
    cfg = {**train_py.DEFAULTS, "init": "stage1.pt", "init_from": {"vit": "stage0.pt"}}
    torch.manual_seed(5)
    merged = train_py.build_model(cfg, str(tmp_path / "run")).state_dict()
    after_merge = torch.rand(4)
    assert all(torch.equal(merged[k], a[k]) for k in a)
    torch.manual_seed(5)
    train_py.build_model({**cfg, "init": "stage1_after_0.pt", "init_from": {}}, str(tmp_path / "run"))
    assert torch.equal(torch.rand(4), after_merge)  # the same random state for what stage 2 initialises next


def test_freeze_keeps_named_parameters_out_of_the_optimizer():
    import train as train_py
    from conftest import tiny
    m = EVLM(tiny(memory_mixer=1))
    cfg = {**train_py.DEFAULTS, "freeze": ["memory.mixer"]}
    params = {id(p) for g in train_py.optimizer_groups(m, ["memory"], cfg) for p in g["params"]}
    mixer = {id(p) for p in m.memory.mixer.parameters()}
    assert mixer and not params & mixer
    assert params == {id(p) for p in m.memory.parameters()} - mixer


def test_the_package_weights_load_back_into_pytorch(tmp_path):
    """onnx_weights: the ONNX initializers of an exported package give back exactly the exported model's weights."""
    from build_base import perturb
    from export import export
    from onnx_weights import PackageWeightsError, check_references, load_package, package_state_dict
    torch.manual_seed(0)
    m = perturb(EVLM(tiny(expert_form="evlm", memory_mixer=1)), 0)
    export(m, str(tmp_path / "pkg"), VOCAB, None, name="tiny", quiet=True)
    back, manifest = load_package(str(tmp_path / "pkg"))
    assert back.cfg == m.cfg
    want, got = m.state_dict(), back.state_dict()
    assert list(want) == list(got) and all(torch.equal(want[k], got[k]) for k in want)
    diffs = check_references(back, str(tmp_path / "pkg"))
    assert set(diffs) == {"vit", "resampler", "router", "experts.e0", "experts.e3", "xattn_kv", "decoder.prefill",
                          "decoder.step"}
    assert max(diffs.values()) <= 1e-5, diffs
    # an unperturbed fresh model has equal parameters (zero biases), which the exporter stores once: export refuses it
    with pytest.raises(SystemExit, match="do not load back"):
        export(EVLM(tiny()), str(tmp_path / "fresh"), VOCAB, None, name="tiny", quiet=True)
    # and a package whose weights belong to another architecture does not load
    with pytest.raises(PackageWeightsError):
        package_state_dict(str(tmp_path / "pkg"), tiny(d_model=64))


def test_the_committed_package_loads_into_pytorch_and_matches_its_references():
    from onnx_weights import check_references, load_package
    pkg = os.path.join(REPO, "fixtures", "models", "evlm-tiny")
    model, manifest = load_package(pkg)
    assert model.cfg.to_dict() == manifest["config"]
    assert sum(p.numel() for p in model.parameters()) == 4_109_992
    diffs = check_references(model, pkg)
    assert len(diffs) == 8 and max(diffs.values()) <= 1e-5, diffs


def test_build_base_writes_a_bpe_package_with_fixed_length_generation(tmp_path):
    """model/build_base.py on a small configuration and a small BPE tokenizer: the package, its manifest fields for the
    runtime, the float32 error check, and the PyTorch model loaded back from it."""
    from bpe import BpeTokenizer, train_tokenizer
    from build_base import build
    from model import greedy_generate
    from onnx_weights import check_references, load_package
    docs = [open(os.path.join(REPO, "docs", f), encoding="utf-8").read() for f in sorted(os.listdir(os.path.join(REPO, "docs"))) if f.endswith(".md")]
    tok = train_tokenizer(docs, 700)
    tok.save(str(tmp_path / "tok.json"))
    fields = dict(vit_layers=2, taps=(1, 2), vit_dim=64, vit_heads=2, vit_mlp=128, d_visual=64, resampler_heads=2,
                  resampler_mlp=128, vis_ffn_hidden=128, expert_hidden=16, n_query=16, d_model=64, n_head=2, n_layer=3,
                  ffn_hidden=128, xattn_ffn_hidden=64, tap_for_layer=(0, 1, 1), vocab_size=700, image_size=64)
    out = tmp_path / "evlm-base"
    manifest = build(str(out), seed=3, tokenizer=str(tmp_path / "tok.json"), fields=fields, say=lambda m: None)
    assert not (tmp_path / "evlm-base.partial").exists()
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["name"] == "evlm-base" and "RANDOM weights" in manifest["description"]
    assert set(manifest["graphs"]) == {"vit", "resampler", "router", "experts", "xattn_kv", "decoder"}  # no baseline
    assert manifest["tokenizer"] == {"type": "huggingface", "file": "tokenizer.json", "clean_up_tokenization_spaces": False}
    assert manifest["dims"]["vocab_size"] == 700 and manifest["dims"]["patch_size"] == 16
    assert manifest["generation"]["min_new_tokens"] == manifest["generation"]["max_new_tokens"] == 32
    assert set(manifest["reference"]["fp32_error"]) == {"vit", "resampler", "router", "experts.e0", "experts.e7",
                                                         "xattn_kv", "decoder.prefill", "decoder.step"}
    assert max(manifest["reference"]["fp32_error"].values()) * 5 <= manifest["reference"]["tolerance"] == 1e-4
    assert BpeTokenizer.load(str(out / "tokenizer.json")).merges == tok.merges
    samples = json.loads((out / manifest["reference"]["tokenizer_samples"]).read_text())
    assert [s["ids"] for s in samples] == [tok.encode(s["text"]) for s in samples]
    for rel, meta in manifest["files"].items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == meta["sha256"], rel
    model, _ = load_package(str(out))
    assert max(check_references(model, str(out)).values()) <= 1e-5
    # min_new_tokens: <eos> is never chosen before it, so every prompt gets exactly max_new_tokens tokens
    with torch.no_grad():
        (k, v, m), _ = model.encode(torch.randn(2, 1, 3, 64, 64), torch.ones(2, 1))
        eos_bias = torch.zeros(700)
        eos_bias[2] = 100.0                                    # make <eos> the argmax everywhere
        model.decoder.ln_f.bias.data += eos_bias @ model.decoder.wte.weight / (model.decoder.wte.weight[2] ** 2).sum()
        free = greedy_generate(model.decoder, k, v, m, [[1], [1, 7, 4]], max_new_tokens=6)
        fixed = greedy_generate(model.decoder, k, v, m, [[1], [1, 7, 4]], max_new_tokens=6, min_new_tokens=6)
    assert [len(x) for x in free] == [1, 1] and free[0] == [2]
    assert [len(x) for x in fixed] == [6, 6] and all(2 not in x for x in fixed)


def test_the_pytorch_peer_runs_from_the_committed_package(tmp_path):
    """tools/bench/peers/torch_peer.py --package: the benchmark's PyTorch peer needs no training checkpoint."""
    px = (np.random.default_rng(0).random((5, 64, 64, 3)) * 255).astype(np.uint8)
    np.save(tmp_path / "px.npy", px)
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "bench", "peers", "torch_peer.py"), "--package",
                        os.path.join(REPO, "fixtures", "models", "evlm-tiny"), "--pixels", str(tmp_path / "px.npy"),
                        "--batch", "2", "--max-new-tokens", "4"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["images"] == 5 and 5 <= out["tokens"] <= 20 and out["min_new_tokens"] == 0
    assert out["reference_max_diff"] <= 1e-5
    np.save(tmp_path / "wrong.npy", px[:, :32, :32])
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "bench", "peers", "torch_peer.py"), "--package",
                        os.path.join(REPO, "fixtures", "models", "evlm-tiny"), "--pixels", str(tmp_path / "wrong.npy")],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode != 0 and "uint8 [N,64,64,3]" in r.stderr
