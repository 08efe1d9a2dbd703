"""Build evlm-base: the reference architecture at a realistic size (model.PRESETS["evlm-base"], ~281 M parameters) with
seeded RANDOM weights and a 32,000-entry byte-level BPE tokenizer trained on local text, exported as an evflow model
package. For speed and memory work (issue #18): the model is not trained, so the text it generates is meaningless.

    /usr/bin/python3 model/build_base.py --out ~/.cache/evflow/models/evlm-base     # what `npm run model:base` runs

Steps (each timed into the manifest's "training.build"):
  1. tokenizer: model/bpe.py trains a byte-level BPE on bpe.local_corpus() (or --tokenizer reuses a tokenizer.json);
  2. weights: torch.manual_seed(seed), EVLM(preset), then perturb(): every parameter gets a little noise (the ONNX
     exporter stores equal tensors once, so equal parameters, such as a fresh model's zero biases, could not be mapped
     back to the model by onnx_weights.py), the cross-attention gates are opened and the memory mixer leaves the
     identity, so that every part of the model contributes to its outputs;
  3. export.export(): the graphs vit, resampler, router, experts, xattn_kv, decoder (no llava baseline), reference
     inputs and PyTorch outputs, greedy references, checks 1-4; generation.min_new_tokens = max_new_tokens in the
     manifest, so that a benchmark generates a fixed number of tokens (see docs/model.md);
  4. fp32 error: every reference case recomputed in float64; the largest |float32 - float64| per case goes into the
     manifest ("reference.fp32_error") next to the ONNX Runtime tolerance, which must exceed it by --margin;
  5. the tokenizer's reference samples (reference/tokenizer_samples.json: texts and the Python encoder's ids).
The package is written to OUT.partial and renamed to OUT when complete: OUT exists only as a whole package.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bpe import BpeTokenizer, encode_samples, local_corpus, train_tokenizer  # noqa: E402
from export import GENERATION, export, graph_modules, sha256  # noqa: E402
from model import EVLM, preset  # noqa: E402
from onnx_weights import _read_ref  # noqa: E402

TOKENIZER_SAMPLES = [
    "a photo of a dog running on the beach",
    "what is the man holding in his left hand?",
    "Describe the image in detail. Include colours, shapes, and text, e.g. signs or labels.",
    "Numbers 3.14159, 1e-10 and 12345678901234567890; code: def f(x): return x ** 2",
    "Ünïcödé façade naïve café — “quotes” … 日本語 中文 한국어 😀🚀",
    "  leading and trailing spaces, tabs\tand\nnewlines  ",
]


@torch.no_grad()
def perturb(model: EVLM, seed: int, noise: float = 1e-3):
    """Makes a freshly initialised model's parameters pairwise distinct and every mechanism active: N(0, noise) added
    to every parameter, the gated cross-attention's gates set to U(0.5, 1.0) (tanh 0.46-0.76; at 0 the decoder would
    ignore the image), and the memory mixer's output projections (zero at init: the identity) drawn like the other
    residual projections, N(0, 0.02 / sqrt(2 n_layer))."""
    g = torch.Generator().manual_seed(seed)
    for _, p in model.named_parameters():
        p.add_(torch.randn(p.shape, generator=g) * noise)
    for layer in model.decoder.layers:
        layer.xattn.attn_gate.copy_(0.5 + 0.5 * torch.rand(1, generator=g))
        layer.xattn.ff_gate.copy_(0.5 + 0.5 * torch.rand(1, generator=g))
    if model.memory.mixer is not None:
        std = 0.02 / (2 * model.cfg.n_layer) ** 0.5
        for blocks in model.memory.mixer:
            for block in blocks:
                for w in (block.attn.proj.weight, block.mlp.proj.weight):
                    w.copy_(torch.randn(w.shape, generator=g) * std)
    return model


def read_positions(name, a, b, attention_mask, T):
    """The decoder outputs a and b at the positions that are ever read: attention_mask 1 (left padding is 0). A padding
    query attends to no key: every logit is -1e9 and in float32 -1e9 + x rounds to -1e9, so its attention is uniform,
    in float64 it is not; both are never read (padding keys are masked, padding logits ignored)."""
    if name == "logits":                                               # [B,T,V]
        keep = attention_mask[:, -T:] > 0
        return a[keep], b[keep]
    keep = attention_mask > 0                                          # present_k/v [n,B,H,S+T,dh]
    return a.permute(1, 3, 0, 2, 4)[keep], b.permute(1, 3, 0, 2, 4)[keep]


@torch.no_grad()
def fp32_error(model: EVLM, pkg_dir: str) -> dict:
    """{case: max |float32 reference output - the same graph in float64|} over the package's reference cases (decoder:
    the positions that are read, read_positions)."""
    manifest = json.load(open(os.path.join(pkg_dir, "manifest.json")))
    graphs64 = graph_modules(copy.deepcopy(model).double(), baseline=False)
    out = {}
    for graph, files in manifest["reference"]["graphs"].items():
        for rel in files:
            case = json.load(open(os.path.join(pkg_dir, rel)))
            ins = [_read_ref(pkg_dir, r) for r in case["inputs"]]
            ins = [t.double() if t.is_floating_point() else t for t in ins]
            got = graphs64[graph](*ins)
            got = got if isinstance(got, tuple) else (got,)
            err = 0.0
            for g64, ref in zip(got, case["outputs"]):
                want = _read_ref(pkg_dir, ref)
                if graph == "decoder":  # only the positions that are read: not those of left padding
                    g64, want = read_positions(ref["name"], g64, want, ins[2], ins[0].shape[1])
                if want.numel():
                    err = max(err, float((g64 - want.double()).abs().max()))
            out[graph if case["case"] == "default" else f"{graph}.{case['case']}"] = err
    return out


def build(out, seed=0, preset_name="evlm-base", tokenizer=None, tolerance=1e-4, margin=5.0, check_tol=1e-4, say=print,
          fields=None):
    """Builds the package into `out` (see the module docstring); fields: EVLMConfig values over the preset's (tests
    build a small one). Returns the manifest."""
    times = {}
    t = time.time()
    work = out.rstrip("/") + ".partial"
    if os.path.exists(work):
        shutil.rmtree(work)
    os.makedirs(os.path.dirname(os.path.abspath(work)), exist_ok=True)
    cfg = preset(preset_name, **(fields or {}))

    if tokenizer:
        tok = BpeTokenizer.load(tokenizer)
        corpus = {"tokenizer": os.path.abspath(tokenizer)}
    else:
        texts, corpus = local_corpus()
        say(f"build: tokenizer corpus {corpus['texts']} texts, {corpus['bytes'] / 1e6:.1f} MB")
        tok = train_tokenizer(texts, cfg.vocab_size, log=say)
        tok.save(work + ".tokenizer.json")  # export copies it into the package; removed below
    times["tokenizer_s"] = round(time.time() - t, 1)

    t = time.time()
    torch.manual_seed(seed)
    model = perturb(EVLM(cfg), seed).eval()
    n_params = sum(p.numel() for p in model.parameters())
    times["weights_s"] = round(time.time() - t, 1)
    say(f"build: {preset_name}, {n_params / 1e6:.1f} M parameters, seed {seed}")

    t = time.time()
    generation = {**GENERATION, "min_new_tokens": GENERATION["max_new_tokens"],
                  "min_new_tokens_rule": "while fewer than min_new_tokens tokens have been generated for a sample, its "
                                         "<eos> logit counts as -inf (it is never chosen): with min_new_tokens = "
                                         "max_new_tokens every caption has exactly max_new_tokens tokens"}
    description = (f"evlm-base: the evflow reference architecture (hierarchical ViT taps, per-tap learned queries, visual "
                   f"experts, gated cross-attention decoder) at a realistic size, {n_params / 1e6:.0f} M parameters, with "
                   f"RANDOM weights (seed {seed}, model/build_base.py): for speed and memory measurements only; the "
                   "text it generates is meaningless.")
    training = {"weights": "random, not trained (seeded init + build_base.perturb)", "seed": seed, "preset": preset_name,
                "parameters": n_params, "tokenizer_corpus": corpus}
    manifest, _ = export(model, work, tok, None, max_mb=None, name="evlm-base", training=training, quiet=False,
                         description=description, baseline=False, generation=generation, tolerance=tolerance,
                         check_tol=check_tol)
    times["export_s"] = round(time.time() - t, 1)

    t = time.time()
    errors = fp32_error(model, work)
    worst = max(errors.values())
    say(f"build: largest |float32 - float64| over the reference cases {worst:.2e} "
        f"({', '.join(f'{k} {v:.1e}' for k, v in errors.items())})")
    if worst * margin > tolerance:
        raise SystemExit(f"build failed: the float32 error {worst:.2e} times the margin {margin} exceeds the parity "
                         f"tolerance {tolerance:.0e}")
    times["fp32_check_s"] = round(time.time() - t, 1)

    rel = "reference/tokenizer_samples.json"
    json.dump(encode_samples(tok, TOKENIZER_SAMPLES), open(os.path.join(work, rel), "w", encoding="utf-8"),
              ensure_ascii=False, indent=1)
    manifest["files"][rel] = {"sha256": sha256(os.path.join(work, rel)), "bytes": os.path.getsize(os.path.join(work, rel))}
    manifest["reference"]["tokenizer_samples"] = rel
    manifest["reference"]["fp32_error"] = {k: float(f"{v:.3g}") for k, v in errors.items()}
    manifest["training"]["build"] = times
    json.dump(manifest, open(os.path.join(work, "manifest.json"), "w"), indent=1)
    if os.path.exists(work + ".tokenizer.json"):
        os.remove(work + ".tokenizer.json")
    if os.path.exists(out):
        shutil.rmtree(out)
    os.rename(work, out)
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(out) for f in fs)
    say(f"build: wrote {out}: {total / 1e9:.2f} GB ({json.dumps(times)})")
    return manifest


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="package folder (replaced; written as OUT.partial first)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", default="evlm-base")
    ap.add_argument("--tokenizer", default=None, help="reuse this tokenizer.json instead of training one")
    ap.add_argument("--tolerance", type=float, default=1e-4, help="ONNX Runtime vs PyTorch parity tolerance (manifest)")
    ap.add_argument("--margin", type=float, default=5.0, help="the tolerance must exceed the float32 error this many times")
    args = ap.parse_args()
    torch.set_num_threads(1)
    build(os.path.expanduser(args.out), args.seed, args.preset, args.tokenizer, args.tolerance, args.margin,
          say=lambda m: print(m, flush=True))


if __name__ == "__main__":
    main()
