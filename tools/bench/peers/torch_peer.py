"""The PyTorch peer: the same weights in PyTorch eager, batched, as a researcher would run them
(model.encode + model.greedy_generate from model/, no_grad, one batch at a time).

/usr/bin/python3 tools/bench/peers/torch_peer.py --package fixtures/models/evlm-tiny --pixels P.npy --threads 1
prints {"images", "seconds", "tokens", "threads", "batch", "max_new_tokens", "min_new_tokens", "reference_max_diff"}.

--package DIR: the weights come from the package itself (model/onnx_weights.py reads the ONNX graphs' initializers),
so the peer runs from a fresh clone on the committed evlm-tiny and on a built evlm-base alike; before the clock
starts, the loaded model is run on the package's reference inputs and must reproduce the reference outputs (written
by PyTorch at export, and matched by onnxruntime-node in test/model-package/parity.test.ts) within the manifest's
tolerance: the peer and evflow compute the same function. --checkpoint PT: a training checkpoint instead.
Pixels are uint8 [N,H,W,3] at the model's input size, normalised with the manifest's mean and std. Generation is
greedy from the caption prompt <bos>; --max-new-tokens and --min-new-tokens default to the manifest's generation
settings (min_new_tokens: <eos> is not chosen before that many tokens, as evflow's runtime does).
Thread settings come from the environment the caller sets (OMP_NUM_THREADS, OMP_WAIT_POLICY) and
torch.set_num_threads(--threads).
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
if not os.path.exists(os.path.join(ROOT, "model", "model.py")):  # run from dist/tools/bench/peers
    ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "model"))
from model import greedy_generate, load_checkpoint  # noqa: E402
from data import BOS, EOS  # noqa: E402


def load(args):
    """(model in eval mode, manifest or None, max |PyTorch - reference| over the package's reference cases or None)."""
    if args.checkpoint:
        model, _ = load_checkpoint(args.checkpoint)
        return model.eval(), None, None
    from onnx_weights import check_references, load_package
    model, manifest = load_package(args.package)
    diffs = check_references(model, args.package)
    worst = max(diffs.values()) if diffs else None
    tol = manifest["reference"]["tolerance"]
    if worst is None or worst > tol:
        raise SystemExit(f"torch_peer: the weights loaded from {args.package} do not reproduce its reference outputs "
                         f"(max |diff| {worst} > {tol}): {diffs}")
    return model, manifest, worst


def main():
    ap = argparse.ArgumentParser()
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--package", help="model package folder (weights read from its ONNX graphs)")
    src.add_argument("--checkpoint", help="training checkpoint (model/train.py)")
    ap.add_argument("--pixels", required=True, help="uint8 [N,H,W,3] .npy at the model's image size")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: the manifest's (32 with --checkpoint)")
    ap.add_argument("--min-new-tokens", type=int, default=None, help="default: the manifest's (0 if it has none)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, manifest, ref_diff = load(args)
    generation = (manifest or {}).get("generation", {})
    max_new = args.max_new_tokens if args.max_new_tokens is not None else generation.get("max_new_tokens", 32)
    min_new = args.min_new_tokens if args.min_new_tokens is not None else generation.get("min_new_tokens", 0)
    pre = (manifest or {}).get("preprocessing", {"mean": [0.5] * 3, "std": [0.5] * 3})
    mean = torch.tensor(pre["mean"]).view(3, 1, 1)
    std = torch.tensor(pre["std"]).view(3, 1, 1)
    s = model.cfg.image_size
    pixels = np.load(args.pixels, mmap_mode="r")
    if pixels.ndim != 4 or pixels.shape[1:] != (s, s, 3) or pixels.dtype != np.uint8:
        raise SystemExit(f"torch_peer: --pixels must be uint8 [N,{s},{s},3], got {pixels.dtype} {list(pixels.shape)}")

    def batch(a, b):  # uint8 [n,H,W,3] -> normalised float [n,1,3,H,W] (one frame per image)
        x = torch.from_numpy(np.array(pixels[a:b])).permute(0, 3, 1, 2).float()
        return ((x / 255.0 - mean) / std)[:, None]

    tokens = 0
    with torch.no_grad():
        warm = batch(0, 2)
        model.encode(warm, torch.ones(len(warm), 1))
        start = time.perf_counter()
        for a in range(0, len(pixels), args.batch):
            px = batch(a, a + args.batch)
            (xk, xv, xm), _ = model.encode(px, torch.ones(len(px), 1))
            out = greedy_generate(model.decoder, xk, xv, xm, [[BOS]] * len(px), max_new_tokens=max_new, eos_id=EOS,
                                  min_new_tokens=min_new)
            tokens += sum(len(o) for o in out)
        seconds = time.perf_counter() - start
    print(json.dumps({"images": int(len(pixels)), "seconds": seconds, "tokens": tokens, "threads": args.threads,
                      "batch": args.batch, "max_new_tokens": max_new, "min_new_tokens": min_new,
                      "reference_max_diff": ref_diff}))


if __name__ == "__main__":
    main()
