"""The PyTorch peer: the same weights in PyTorch eager, batched, as a researcher would run them
(model.encode + model.greedy_generate from model/, no_grad, batch 64).

/usr/bin/python3 tools/bench/peers/torch_peer.py --checkpoint out/evlm/stage3.pt --pixels P.npy --threads 1
prints {"images", "seconds", "tokens", "threads"}. Thread settings come from the environment the caller sets
(OMP_NUM_THREADS, OMP_WAIT_POLICY) and torch.set_num_threads(--threads).
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
if not os.path.exists(os.path.join(ROOT, "model", "model.py")):  # run from the sources
    ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "model"))
from model import greedy_generate, load_checkpoint  # noqa: E402
from data import BOS, normalize  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--pixels", required=True, help="uint8 [N,64,64,3] .npy")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_checkpoint(args.checkpoint)
    model.eval()
    pixels = np.load(args.pixels)
    tokens = 0
    with torch.no_grad():
        warm = normalize(torch.from_numpy(np.ascontiguousarray(pixels[:2])))[:, None]
        model.encode(warm, torch.ones(2, 1))
        start = time.perf_counter()
        for s in range(0, len(pixels), args.batch):
            px = normalize(torch.from_numpy(np.ascontiguousarray(pixels[s:s + args.batch])))[:, None]
            (xk, xv, xm), _ = model.encode(px, torch.ones(len(px), 1))
            out = greedy_generate(model.decoder, xk, xv, xm, [[BOS]] * len(px), max_new_tokens=args.max_new_tokens)
            tokens += sum(len(o) for o in out)
        seconds = time.perf_counter() - start
    print(json.dumps({"images": int(len(pixels)), "seconds": seconds, "tokens": tokens, "threads": args.threads}))


if __name__ == "__main__":
    main()
