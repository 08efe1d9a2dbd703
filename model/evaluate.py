"""Accuracy of a checkpoint on the test split, in PyTorch (greedy decoding, as the TS side decodes).

    /usr/bin/python3 model/evaluate.py --checkpoint out/evlm/stage3.pt --data out/evlm-data/test \
        --json out/evlm/eval.json

--data holds the numpy exports of the test split (seeds never used in training):
  test.images.npy/.jsonl   captions        npm run data -- --split test --seed 3000000 --rows 512 --name test
  vqa.images.npy/.jsonl    VQA             npm run data -- --split test --kind vqa --seed 3000001 --rows 512 --name vqa
  video.frames.npy/.jsonl  clips           npm run data -- --split test --kind video --seed 3000002 --rows 512 --name video
Reports caption exact match, VQA accuracy (the vqa set, and every question of the caption images), by
question type, video caption exact match and direction accuracy, the expert load distribution (share of
routed token slots per expert) and the learned cross-attention gates per decoder layer.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one BLAS thread: the machine is shared

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import greedy_generate, load_checkpoint  # noqa: E402
from data import BOS, SEP, Split, Vocab  # noqa: E402


def qtype(row, question):
    for q in row["qa"]:
        if q["question"] == question:
            return q["type"]
    return "other"


@torch.no_grad()
def run_split(model, vocab, split, questions_of, batch=128, captions=True):
    """Greedy captions and answers for every row. questions_of(row) -> [(type, question, answer)]."""
    res = {"caption": [], "qa": []}
    loads = torch.zeros(model.cfg.n_experts) if model.cfg.expert_form != "dense" else None
    for s in range(0, len(split), batch):
        idx = np.arange(s, min(s + batch, len(split)))
        px, fm = split.frames(idx)
        (xk, xv, xm), aux = model.encode(px, fm)
        if loads is not None:
            loads += aux["expert_counts"]
        if captions:
            for i, c in zip(idx, greedy_generate(model.decoder, xk, xv, xm, [[BOS]] * len(idx))):
                res["caption"].append((split.rows[i]["caption"], vocab.decode(c)))
        prompts, meta, rows = [], [], []
        for j, i in enumerate(idx):
            for t, q, a in questions_of(split.rows[i]):
                prompts.append([BOS] + vocab.encode(q) + [SEP])
                meta.append((t, q, a))
                rows.append(j)
        if prompts:
            sel = torch.tensor(rows)
            out = greedy_generate(model.decoder, xk[sel], xv[sel], xm[sel], prompts, max_new_tokens=4)
            for (t, q, a), o in zip(meta, out):
                res["qa"].append((t, q, a, vocab.decode(o)))
    return res, loads


def summarize_qa(qa):
    by = defaultdict(list)
    for t, q, a, p in qa:
        by[t].append(a == p)
    return {"accuracy": float(np.mean([a == p for _, _, a, p in qa])) if qa else None, "n": len(qa),
            "by_type": {t: {"accuracy": float(np.mean(v)), "n": len(v)} for t, v in sorted(by.items())}}


def evaluate(model, vocab, data_dir, limit=None):
    t0 = time.time()
    out = {}
    test = Split.load(data_dir, "test", limit=limit)
    r, loads = run_split(model, vocab, test, lambda row: [(q["type"], q["question"], q["answer"]) for q in row["qa"]])
    out["caption"] = {"exact_match": float(np.mean([a == b for a, b in r["caption"]])), "n": len(r["caption"]),
                      "errors": [{"truth": a, "output": b} for a, b in r["caption"] if a != b][:20]}
    out["vqa_all_questions_of_test_images"] = summarize_qa(r["qa"])
    if os.path.exists(os.path.join(data_dir, "vqa.jsonl")):
        vqa = Split.load(data_dir, "vqa", limit=limit)
        rv, lv = run_split(model, vocab, vqa, lambda row: [(qtype(row, row["question"]), row["question"], row["answer"])],
                           captions=False)
        out["vqa"] = summarize_qa(rv["qa"])
        out["vqa"]["errors"] = [{"question": q, "truth": a, "output": p} for _, q, a, p in rv["qa"] if a != p][:20]
        if loads is not None:
            loads = loads + lv
    if os.path.exists(os.path.join(data_dir, "video.jsonl")):
        vid = Split.load(data_dir, "video", limit=limit)
        rd, ld = run_split(model, vocab, vid, lambda row: [(q["type"], q["question"], q["answer"]) for q in row["qa"]],
                           batch=64)
        out["video"] = {"caption_exact_match": float(np.mean([a == b for a, b in rd["caption"]])), "n": len(rd["caption"]),
                        "direction": summarize_qa(rd["qa"]),
                        "errors": [{"truth": a, "output": b} for a, b in rd["caption"] if a != b][:20]}
        if loads is not None:
            loads = loads + ld
    if loads is not None:
        out["expert_load"] = {"share_of_routed_slots": [round(float(x), 4) for x in loads / loads.sum()],
                              "tokens_x_top_k": int(loads.sum())}
    out["gates"] = [{"layer": i, "tap": model.cfg.tap_for_layer[i],
                     "tanh_attn_gate": round(float(torch.tanh(l.xattn.attn_gate)), 4),
                     "tanh_ff_gate": round(float(torch.tanh(l.xattn.ff_gate)), 4)}
                    for i, l in enumerate(model.decoder.layers)]
    out["seconds"] = round(time.time() - t0, 1)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", default="out/evlm-data/test")
    ap.add_argument("--vocab", default="fixtures/scenes/vocab.txt")
    ap.add_argument("--json", default=None, help="write the full result here")
    ap.add_argument("--limit", type=int, default=None, help="first N rows of each set (quick checks)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, ck = load_checkpoint(args.checkpoint)
    model.eval()
    res = evaluate(model, Vocab(args.vocab), args.data, args.limit)
    res["checkpoint"] = {"path": args.checkpoint, "stage": ck.get("stage")}
    short = {
        "caption_exact_match": res["caption"]["exact_match"],
        "vqa_accuracy": res.get("vqa", {}).get("accuracy"),
        "vqa_accuracy_all_questions": res["vqa_all_questions_of_test_images"]["accuracy"],
        "video_caption_exact_match": res.get("video", {}).get("caption_exact_match"),
        "video_direction_accuracy": res.get("video", {}).get("direction", {}).get("accuracy"),
        "expert_load": res.get("expert_load", {}).get("share_of_routed_slots"),
        "gates": [(g["tanh_attn_gate"], g["tanh_ff_gate"]) for g in res["gates"]],
    }
    print(json.dumps(short, indent=1))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        json.dump(res, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
