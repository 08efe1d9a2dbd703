"""Export a trained checkpoint as an evflow model package (DESIGN §2, docs/model.md).

    /usr/bin/python3 model/export.py --checkpoint out/evlm/stage3.pt --samples out/evlm-data/test \
        --out fixtures/models/evlm-tiny

Writes manifest.json, one ONNX graph per operator (opset 17), vocab.txt, and reference/ (inputs and PyTorch
outputs of every graph, and full greedy generations of a few samples) for the TypeScript parity test
(test/model-package/parity.test.ts, which runs the graphs in onnxruntime-node: Debian has no Python ONNX Runtime).

What this script checks before it writes the package (it exits non-zero otherwise):
  1. decomposition: the graph wrappers, composed as the TS side composes them (router -> per-token top-k ->
     experts grouped per expert -> combine; xattn_kv; decoder prefill then cached single steps), reproduce the
     PyTorch model (EVLM.encode + a full, uncached decoder pass) to <= 1e-5;
  2. dynamic shapes: each wrapper traced with torch.jit.trace (the tracer torch.onnx.export uses) on one set
     of sizes reproduces the eager wrapper on other sizes (other B, F, N, T; an empty cache S = 0) to <= 1e-5;
  3. the written ONNX files declare opset 17 and exactly the manifest's input and output names (read from the
     protobuf), and the package (graphs + vocab + reference) stays under --max-mb.
ONNX Runtime's numbers themselves are compared by the TypeScript test (<= 1e-4 per graph, identical greedy tokens).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one BLAS thread: the machine is shared

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import EVLM, NEG_INF, LlavaDecoder, greedy_generate, load_checkpoint  # noqa: E402
from data import BOS, EOS, PAD, SEP, UNK, Split, Vocab  # noqa: E402

OPSET = 17
FORMAT = "evflow-model/1"


# ----------------------------------------------------------------------------- graph wrappers

class VitGraph(nn.Module):
    def __init__(self, m: EVLM):
        super().__init__()
        self.vit = m.vit

    def forward(self, pixel_values):
        return self.vit(pixel_values)


class ResamplerGraph(nn.Module):
    def __init__(self, m: EVLM):
        super().__init__()
        self.resampler = m.resampler

    def forward(self, taps):
        return self.resampler(taps)


class RouterGraph(nn.Module):
    def __init__(self, m: EVLM):
        super().__init__()
        self.experts = m.experts

    def forward(self, tokens):
        return self.experts.route(tokens)


class ExpertsGraph(nn.Module):
    def __init__(self, m: EVLM):
        super().__init__()
        self.experts = m.experts

    def forward(self, tokens, expert_id):
        return self.experts.expert(tokens, expert_id)


class XattnKvGraph(nn.Module):
    def __init__(self, m: EVLM):
        super().__init__()
        self.memory = m.memory

    def forward(self, visual_tokens, frame_mask):
        return self.memory(visual_tokens, frame_mask)


class DecoderGraph(nn.Module):
    def __init__(self, m: EVLM):
        super().__init__()
        self.decoder = m.decoder

    def forward(self, input_ids, position_ids, attention_mask, past_k, past_v, xattn_k, xattn_v, xattn_mask):
        return self.decoder(input_ids, position_ids, attention_mask, past_k, past_v, xattn_k, xattn_v, xattn_mask)


def graph_specs(cfg):
    """Name -> (inputs, outputs) as (name, dtype, symbolic shape). The contract the TS operators are written against."""
    L, P, Q, Dv, D, E = cfg.n_taps, cfg.n_patches, cfg.n_query, cfg.vit_dim, cfg.d_visual, cfg.n_experts
    n, H, dh, V, s = cfg.n_layer, cfg.n_head, cfg.head_dim, cfg.vocab_size, cfg.image_size
    f32, i64 = "float32", "int64"
    return {
        "vit": ([("pixel_values", f32, ["B", 3, s, s])], [("taps", f32, ["B", L, P, Dv])]),
        "resampler": ([("taps", f32, ["B", L, P, Dv])], [("visual_tokens", f32, ["B", L, Q, D])]),
        "router": ([("tokens", f32, ["N", D])], [("router_logits", f32, ["N", E]), ("shared_out", f32, ["N", D])]),
        "experts": ([("tokens", f32, ["n", D]), ("expert_id", i64, [])], [("expert_out", f32, ["n", D])]),
        "xattn_kv": ([("visual_tokens", f32, ["B", "F", L, Q, D]), ("frame_mask", i64, ["B", "F"])],
                     [("xattn_k", f32, ["B", n, H, "M", dh]), ("xattn_v", f32, ["B", n, H, "M", dh]),
                      ("xattn_mask", f32, ["B", "M"])]),
        "decoder": ([("input_ids", i64, ["B", "T"]), ("position_ids", i64, ["B", "T"]),
                     ("attention_mask", i64, ["B", "S+T"]),
                     ("past_k", f32, [n, "B", H, "S", dh]), ("past_v", f32, [n, "B", H, "S", dh]),
                     ("xattn_k", f32, ["B", n, H, "M", dh]), ("xattn_v", f32, ["B", n, H, "M", dh]),
                     ("xattn_mask", f32, ["B", "M"])],
                    [("logits", f32, ["B", "T", V]), ("present_k", f32, [n, "B", H, "S+T", dh]),
                     ("present_v", f32, [n, "B", H, "S+T", dh])]),
        "llava_decoder": ([("visual_embeds", f32, ["B", "Mv", D]), ("input_ids", i64, ["B", "T"]),
                           ("position_ids", i64, ["B", "T"]), ("attention_mask", i64, ["B", "S+Mv+T"]),
                           ("past_k", f32, [n, "B", H, "S", dh]), ("past_v", f32, [n, "B", H, "S", dh])],
                          [("logits", f32, ["B", "T", V]), ("present_k", f32, [n, "B", H, "S+Mv+T", dh]),
                           ("present_v", f32, [n, "B", H, "S+Mv+T", dh])]),
    }


def dynamic_axes(spec):
    ins, outs = spec
    return {name: {i: str(d) for i, d in enumerate(shape) if isinstance(d, str)} for name, _, shape in ins + outs}


# ----------------------------------------------------------------------------- the TS-side composition, in torch

def route_and_combine(router: RouterGraph, experts: ExpertsGraph, tokens, top_k):
    """What routeToExperts does: per-token top-k of router_logits, softmax over those k logits, tokens grouped
    per expert and run through experts.onnx, then refined = tokens + shared_out + sum_j w_j expert_out_j."""
    logits, shared = router(tokens)
    top_val, top_idx = logits.topk(top_k, dim=-1)
    w = top_val.softmax(dim=-1)
    outs = torch.zeros(tokens.shape[0], top_k, tokens.shape[1])
    for e in range(logits.shape[1]):
        rows, slots = (top_idx == e).nonzero(as_tuple=True)
        if len(rows):
            outs[rows, slots] = experts(tokens[rows], torch.tensor(e))
    routed = outs[:, 0] * w[:, 0:1]
    for j in range(1, top_k):
        routed = routed + outs[:, j] * w[:, j:j + 1]
    return tokens + shared + routed


def greedy_with_graphs(g, pixel_values, frame_mask, prompts, top_k, max_new_tokens=32):
    """The whole TS loop on the graph wrappers: frames flattened into the batch -> vit -> resampler ->
    router/experts -> xattn_kv -> decoder prefill + cached steps."""
    B, Fr = frame_mask.shape
    valid = frame_mask.reshape(-1) > 0
    tok = g["resampler"](g["vit"](pixel_values.reshape(B * Fr, *pixel_values.shape[2:])[valid]))  # [Nf,L,Q,D]
    Nf, L, Q, D = tok.shape
    ref = route_and_combine(g["router"], g["experts"], tok.reshape(-1, D), top_k).view(Nf, L, Q, D)
    full = torch.zeros(B * Fr, L, Q, D)
    full[valid] = ref
    xk, xv, xm = g["xattn_kv"](full.view(B, Fr, L, Q, D), frame_mask)
    return greedy_generate(g["decoder"].decoder, xk, xv, xm, prompts, max_new_tokens)


# ----------------------------------------------------------------------------- checks

def max_diff(a, b):
    if isinstance(a, (tuple, list)):
        return max(max_diff(x, y) for x, y in zip(a, b))
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def check(cond, msg):
    if not cond:
        raise SystemExit(f"export check failed: {msg}")


def read_onnx_io(path):
    """Minimal protobuf reader: (opsets {domain: version}, input names, output names) of an ONNX model."""
    def varint(b, i):
        r = s = 0
        while True:
            c = b[i]
            i += 1
            r |= (c & 0x7F) << s
            s += 7
            if c < 0x80:
                return r, i

    def fields(b):
        i = 0
        while i < len(b):
            key, i = varint(b, i)
            f, wt = key >> 3, key & 7
            if wt == 0:
                v, i = varint(b, i)
            elif wt == 2:
                ln, i = varint(b, i)
                v = b[i:i + ln]
                i += ln
            elif wt == 1:
                v, i = b[i:i + 8], i + 8
            elif wt == 5:
                v, i = b[i:i + 4], i + 4
            else:
                raise ValueError(f"wire type {wt}")
            yield f, v

    data = open(path, "rb").read()
    opsets, ins, outs, inits = {}, [], [], set()
    for f, v in fields(data):
        if f == 8:
            d = dict(fields(v))
            opsets[bytes(d.get(1, b"")).decode()] = d.get(2)
        elif f == 7:
            for gf, gv in fields(v):
                if gf in (11, 12):
                    name = bytes(dict(fields(gv))[1]).decode()
                    (ins if gf == 11 else outs).append(name)
                elif gf == 5:
                    inits.add(bytes(dict(fields(gv)).get(8, b"")).decode())
    return opsets, [n for n in ins if n not in inits], outs


# ----------------------------------------------------------------------------- reference files

_written = {}  # sha256 of tensor bytes -> file name: identical tensors are stored once


def write_tensor(ref_dir, stem, name, t):
    t = t.detach().contiguous()
    arr = t.numpy().astype("<f4" if t.dtype.is_floating_point else "<i8")
    raw = arr.tobytes()
    key = (ref_dir, hashlib.sha256(raw).hexdigest())
    fname = _written.get(key)
    if fname is None:
        fname = f"{stem}.{name}.bin"
        open(os.path.join(ref_dir, fname), "wb").write(raw)
        _written[key] = fname
    return {"name": name, "dtype": "float32" if t.dtype.is_floating_point else "int64", "dims": list(t.shape),
            "file": f"reference/{fname}"}


def write_case(ref_dir, graph, case, names_in, inputs, names_out, outputs, note):
    stem = f"{graph}.{case}" if case else graph
    idx = {"graph": graph, "case": case or "default", "description": note,
           "inputs": [write_tensor(ref_dir, stem, n, t) for n, t in zip(names_in, inputs)],
           "outputs": [write_tensor(ref_dir, stem, n, t) for n, t in zip(names_out, outputs)]}
    path = os.path.join(ref_dir, f"{stem}.json")
    json.dump(idx, open(path, "w"), indent=1)
    return f"reference/{stem}.json"


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# ----------------------------------------------------------------------------- main

def build_llava(model: EVLM, seed=0):
    """Baseline of the same size: the trained text decoder's weights (embeddings, self-attention, MLPs) and a
    seeded, untrained visual projection. It has no accuracy target (efficiency benchmark only)."""
    torch.manual_seed(seed)
    llava = LlavaDecoder(model.cfg)
    nn.init.normal_(llava.proj.weight, 0.0, 0.02)
    nn.init.zeros_(llava.proj.bias)
    state = {k: v for k, v in model.decoder.state_dict().items() if ".xattn." not in k}
    llava.decoder.load_state_dict(state)
    return llava.eval()


def sample_inputs(cfg, samples_dir, vocab, n_images=3):
    """Pixels of a few test images and one clip (or seeded random pixels), their questions and truths."""
    g = torch.Generator().manual_seed(0)
    s = cfg.image_size
    if samples_dir:
        imgs = Split.load(samples_dir, "test", limit=n_images)
        px, _ = imgs.frames(np.arange(n_images))
        vid = Split.load(samples_dir, "video", limit=1)
        vpx, vmask = vid.frames(np.arange(1))
        qs = [imgs.rows[i]["qa"][i % len(imgs.rows[i]["qa"])] for i in range(n_images)]
        return {"images": px[:, 0], "captions": [r["caption"] for r in imgs.rows],
                "questions": [q["question"] for q in qs], "answers": [q["answer"] for q in qs],
                "ids": [r["id"] for r in imgs.rows],
                "video": vpx, "video_mask": vmask.long(), "video_caption": vid.rows[0]["caption"],
                "video_question": vid.rows[0]["qa"][0]["question"], "video_answer": vid.rows[0]["qa"][0]["answer"],
                "video_id": vid.rows[0]["id"]}
    return {"images": torch.rand(n_images, 3, s, s, generator=g) * 2 - 1, "captions": None,
            "questions": ["what color is the circle?", "how many squares are there?", "is there a red star?"][:n_images],
            "answers": None, "ids": None,
            "video": torch.rand(1, 4, 3, s, s, generator=g) * 2 - 1, "video_mask": torch.ones(1, 4, dtype=torch.long),
            "video_caption": None, "video_question": "which way does the red circle move?", "video_answer": None,
            "video_id": None}


def export(model: EVLM, out_dir, vocab_path, samples_dir=None, max_mb=25.0, name="evlm-tiny", training=None,
           quiet=False):
    torch.set_num_threads(1)
    cfg = model.cfg
    check(cfg.expert_form in ("evlm", "eve"), f"expert_form {cfg.expert_form!r}: export needs the evlm or eve form")
    model = model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    vocab = Vocab(vocab_path)
    check(len(vocab) == cfg.vocab_size, "vocabulary size differs from the model's")
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))

    specs = graph_specs(cfg)
    graphs = {"vit": VitGraph(model), "resampler": ResamplerGraph(model), "router": RouterGraph(model),
              "experts": ExpertsGraph(model), "xattn_kv": XattnKvGraph(model), "decoder": DecoderGraph(model),
              "llava_decoder": build_llava(model)}
    for m in graphs.values():
        m.eval()
    n, H, dh, L, Q, D = cfg.n_layer, cfg.n_head, cfg.head_dim, cfg.n_taps, cfg.n_query, cfg.d_visual
    gen = torch.Generator().manual_seed(1)
    smp = sample_inputs(cfg, samples_dir, vocab)

    # --- example inputs (reference cases), from real samples where available ------------------------
    with torch.no_grad():
        px = smp["images"][:2]
        taps = graphs["vit"](px)
        vtok = graphs["resampler"](taps)
        tokens = vtok.reshape(-1, D)                                          # N = 2*L*Q
        e_ids = [0, cfg.n_experts - 1]
        vid_tok = graphs["resampler"](graphs["vit"](smp["video"][0, :2]))     # 2 frames of the clip
        refined_img = route_and_combine(graphs["router"], graphs["experts"], tokens, cfg.top_k).view(2, L, Q, D)
        refined_vid = route_and_combine(graphs["router"], graphs["experts"], vid_tok.reshape(-1, D), cfg.top_k).view(1, 2, L, Q, D)
        # xattn_kv case: a 2-frame clip and an image padded to 2 frames
        vt = torch.cat([refined_vid, torch.cat([refined_img[:1, None], torch.zeros(1, 1, L, Q, D)], 1)], 0)  # [2,2,L,Q,D]
        fmask = torch.tensor([[1, 1], [1, 0]], dtype=torch.long)
        xk, xv, xm = graphs["xattn_kv"](vt, fmask)
        # decoder prefill case: left-padded prompts (a caption and a question), S = 0
        prompts = [[BOS], [BOS] + vocab.encode(smp["questions"][0]) + [SEP]]
        T = max(len(p) for p in prompts)
        ids = torch.full((2, T), PAD, dtype=torch.long)
        am = torch.zeros(2, T, dtype=torch.long)
        for b, p in enumerate(prompts):
            ids[b, T - len(p):] = torch.tensor(p)
            am[b, T - len(p):] = 1
        pos = (am.cumsum(1) - 1).clamp(min=0)
        empty = torch.zeros(n, 2, H, 0, dh)
        pre = graphs["decoder"](ids, pos, am, empty, empty, xk, xv, xm)
        nxt = pre[0][:, -1].argmax(-1, keepdim=True)
        am2 = torch.cat([am, torch.ones(2, 1, dtype=torch.long)], 1)
        pos2 = pos[:, -1:] + 1
        step = graphs["decoder"](nxt, pos2, am2, pre[1], pre[2], xk, xv, xm)
        # llava prefill (visual tokens + prompt) and one step
        vis = refined_img[:, -1]  # the last tap's Q tokens (Mv is dynamic; a smaller reference keeps the package small)
        lam = torch.cat([torch.ones(2, Q, dtype=torch.long), am], 1)
        lpre = graphs["llava_decoder"](vis, ids, pos, lam, empty, empty)
        lnxt = lpre[0][:, -1].argmax(-1, keepdim=True)
        lam2 = torch.cat([lam, torch.ones(2, 1, dtype=torch.long)], 1)
        lstep = graphs["llava_decoder"](torch.zeros(2, 0, D), lnxt, pos2, lam2, lpre[1], lpre[2])

    cases = {
        "vit": [(None, (px,), "two test images")],
        "resampler": [(None, (taps,), "the taps of vit's reference output")],
        "router": [(None, (tokens,), "the visual tokens of the two images, flattened: N = 2*L*Q")],
        "experts": [(f"e{e}", (tokens[:7], torch.tensor(e)), f"seven tokens through expert {e}") for e in e_ids],
        "xattn_kv": [(None, (vt, fmask), "row 0: two frames of a clip; row 1: an image padded to two frames")],
        "decoder": [("prefill", (ids, pos, am, empty, empty, xk, xv, xm),
                     "left-padded prompts (caption <bos>; <bos> question <sep>), empty cache S = 0"),
                    ("step", (nxt, pos2, am2, pre[1], pre[2], xk, xv, xm), "one cached step after the prefill (T = 1)")],
        "llava_decoder": [("prefill", (vis, ids, pos, lam, empty, empty), "visual tokens + left-padded prompts, S = 0"),
                          ("step", (torch.zeros(2, 0, D), lnxt, pos2, lam2, lpre[1], lpre[2]),
                           "one cached step (no visual tokens: Mv = 0)")],
    }

    # the inputs the graphs are traced/exported with: every dynamic size distinct and non-zero (S = 3)
    past3 = torch.randn(n, 2, H, 3, dh, generator=gen)
    am5 = torch.ones(2, 5, dtype=torch.long)
    export_example = {g: cases[g][0][1] for g in cases}
    export_example["decoder"] = (ids[:, -2:], torch.tensor([[3, 4], [3, 4]]), am5, past3, past3, xk, xv, xm)
    export_example["llava_decoder"] = (vis[:, :4], ids[:, -2:], torch.tensor([[3, 4], [3, 4]]),
                                       torch.ones(2, 3 + 4 + 2, dtype=torch.long), past3, past3)

    # --- check 1: decomposition == the PyTorch model -------------------------------------------------
    with torch.no_grad():
        ref_tok, _ = model.experts(vtok)
        check(max_diff(ref_tok, refined_img) <= 1e-5, f"router/experts composition differs from VisualExperts.forward")
        # xattn memory of the composed path == EVLM.encode
        pv = torch.stack([smp["video"][0, :2], torch.cat([px[:1], torch.zeros(1, *px.shape[1:])])])
        (ek, ev, em), _ = model.encode(pv, fmask)
        check(max_diff((ek, ev, em), (xk, xv, xm)) <= 1e-5, "xattn_kv of the composed path differs from EVLM.encode")
        # cached prefill + step == one uncached pass over prompt + next token
        full = graphs["decoder"](torch.cat([ids, nxt], 1), torch.cat([pos, pos2], 1), am2, empty, empty, xk, xv, xm)
        d = max_diff(full[0][:, -1], step[0][:, -1])
        check(d <= 1e-5, f"cached decoder step differs from the uncached pass ({d:.2e})")
        lfull = graphs["llava_decoder"](vis, torch.cat([ids, lnxt], 1), torch.cat([pos, pos2], 1), lam2, empty, empty)
        d = max_diff(lfull[0][:, -1], lstep[0][:, -1])
        check(d <= 1e-5, f"cached llava step differs from the uncached pass ({d:.2e})")
        say(f"check 1 (decomposition == model): ok")

    # --- check 2: traced graphs generalise over dynamic sizes ---------------------------------------
    other = {
        "vit": (torch.randn(3, 3, cfg.image_size, cfg.image_size, generator=gen),),
        "resampler": (torch.randn(3, L, cfg.n_patches, cfg.vit_dim, generator=gen),),
        "router": (torch.randn(5, D, generator=gen),),
        "experts": (torch.randn(4, D, generator=gen), torch.tensor(cfg.n_experts // 2)),
        "xattn_kv": (torch.randn(3, 2, L, Q, D, generator=gen), torch.tensor([[1, 1], [1, 0], [1, 1]])),
        "decoder": (torch.randint(5, cfg.vocab_size, (3, 4), generator=gen), torch.arange(4).repeat(3, 1),
                    torch.ones(3, 4, dtype=torch.long), torch.zeros(n, 3, H, 0, dh), torch.zeros(n, 3, H, 0, dh),
                    torch.randn(3, n, H, 5, dh, generator=gen), torch.randn(3, n, H, 5, dh, generator=gen),
                    torch.zeros(3, 5)),
        "llava_decoder": (torch.randn(3, 6, D, generator=gen), torch.randint(5, cfg.vocab_size, (3, 2), generator=gen),
                          torch.tensor([[4, 5]] * 3), torch.ones(3, 4 + 6 + 2, dtype=torch.long),
                          torch.randn(n, 3, H, 4, dh, generator=gen), torch.randn(n, 3, H, 4, dh, generator=gen)),
    }
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        for g, m in graphs.items():
            traced = torch.jit.trace(m, export_example[g], check_trace=False)
            for inputs in [other[g]] + [c[1] for c in cases[g]]:
                d = max_diff(traced(*inputs), m(*inputs))
                check(d <= 1e-5, f"{g}: traced graph differs from eager on other sizes ({d:.2e})")
    say("check 2 (traced == eager on other dynamic sizes, decoder with S = 0): ok")

    # --- export ------------------------------------------------------------------------------------------
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    ref_dir = os.path.join(out_dir, "reference")
    os.makedirs(ref_dir)
    manifest_graphs = {}
    reference = {}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        for g, m in graphs.items():
            ins, outs = specs[g]
            path = os.path.join(out_dir, f"{g}.onnx")
            torch.onnx.export(m, export_example[g], path, opset_version=OPSET, do_constant_folding=True,
                              input_names=[x[0] for x in ins], output_names=[x[0] for x in outs],
                              dynamic_axes=dynamic_axes(specs[g]))
            opsets, in_names, out_names = read_onnx_io(path)
            check(opsets.get("") == OPSET, f"{g}.onnx: opset {opsets}")
            check(in_names == [x[0] for x in ins], f"{g}.onnx inputs {in_names}")
            check(out_names == [x[0] for x in outs], f"{g}.onnx outputs {out_names}")
            manifest_graphs[g] = {
                "file": f"{g}.onnx",
                "inputs": [{"name": a, "dtype": t, "shape": s} for a, t, s in ins],
                "outputs": [{"name": a, "dtype": t, "shape": s} for a, t, s in outs],
                "sha256": sha256(path), "bytes": os.path.getsize(path)}
            reference[g] = []
            for case, inputs, note in cases[g]:
                outputs = m(*inputs)
                outputs = outputs if isinstance(outputs, tuple) else (outputs,)
                reference[g].append(write_case(ref_dir, g, case, [x[0] for x in ins], inputs,
                                               [x[0] for x in outs], outputs, note))
    say("check 3 (ONNX opset and input/output names): ok")

    # --- greedy references: the PyTorch model end to end ------------------------------------------------
    with torch.no_grad():
        imgs = smp["images"]
        fm1 = torch.ones(len(imgs), 1, dtype=torch.long)
        (gk, gv, gm), _ = model.encode(imgs[:, None], fm1)
        cap = greedy_generate(model.decoder, gk, gv, gm, [[BOS]] * len(imgs))
        qprompts = [[BOS] + vocab.encode(q) + [SEP] for q in smp["questions"]]
        ans = greedy_generate(model.decoder, gk, gv, gm, qprompts)
        (vk, vv, vm), _ = model.encode(smp["video"], smp["video_mask"])
        vcap = greedy_generate(model.decoder, vk, vv, vm, [[BOS]])
        vans = greedy_generate(model.decoder, vk, vv, vm, [[BOS] + vocab.encode(smp["video_question"]) + [SEP]])
        # the graph composition (what TS runs) must give the same tokens
        gg = greedy_with_graphs(graphs, imgs[:, None], fm1, [[BOS]] * len(imgs), cfg.top_k)
        check(gg == cap, "greedy captions through the graph wrappers differ from the model's")
        gq = greedy_with_graphs(graphs, imgs[:, None], fm1, qprompts, cfg.top_k)
        check(gq == ans, "greedy answers through the graph wrappers differ from the model's")
        gvid = greedy_with_graphs(graphs, smp["video"], smp["video_mask"], [[BOS]], cfg.top_k)
        check(gvid == vcap, "greedy video caption through the graph wrappers differs from the model's")
    images_ref = write_tensor(ref_dir, "greedy", "images", imgs)
    video_ref = write_tensor(ref_dir, "greedy", "video", smp["video"])
    vmask_ref = write_tensor(ref_dir, "greedy", "video_frame_mask", smp["video_mask"])
    greedy = {
        "description": "Full greedy generation by the PyTorch model (max_new_tokens 32, tokens up to and including "
                       "<eos>). images: normalised pixel_values [n,3,64,64]; video: [1,F,3,64,64] with frame_mask.",
        "max_new_tokens": 32,
        "images": images_ref,
        "samples": [
            {"image": i, "id": smp["ids"][i] if smp["ids"] else None, "task": "caption", "prompt_ids": [BOS],
             "expected_ids": cap[i], "expected_text": vocab.decode(cap[i]),
             "truth": smp["captions"][i] if smp["captions"] else None}
            for i in range(len(imgs))] + [
            {"image": i, "id": smp["ids"][i] if smp["ids"] else None, "task": "vqa", "question": smp["questions"][i],
             "prompt_ids": qprompts[i], "expected_ids": ans[i], "expected_text": vocab.decode(ans[i]),
             "truth": smp["answers"][i] if smp["answers"] else None}
            for i in range(len(imgs))],
        "video": {"pixel_values": video_ref, "frame_mask": vmask_ref, "id": smp["video_id"], "samples": [
            {"task": "caption", "prompt_ids": [BOS], "expected_ids": vcap[0], "expected_text": vocab.decode(vcap[0]),
             "truth": smp["video_caption"]},
            {"task": "vqa", "question": smp["video_question"],
             "prompt_ids": [BOS] + vocab.encode(smp["video_question"]) + [SEP], "expected_ids": vans[0],
             "expected_text": vocab.decode(vans[0]), "truth": smp["video_answer"]}]},
    }
    json.dump(greedy, open(os.path.join(ref_dir, "greedy.json"), "w"), indent=1)
    shutil.copy(vocab_path, os.path.join(out_dir, "vocab.txt"))

    # --- manifest ----------------------------------------------------------------------------------------
    files = {}
    for root, _, fs in os.walk(out_dir):
        for f in sorted(fs):
            p = os.path.join(root, f)
            rel = os.path.relpath(p, out_dir)
            if not rel.endswith(".onnx"):
                files[rel] = {"sha256": sha256(p), "bytes": os.path.getsize(p)}
    eve = cfg.expert_form == "eve"
    manifest = {
        "format": FORMAT,
        "name": name,
        "description": "evflow reference model: tiny EVLM/Eve-style VLM (hierarchical ViT taps, per-tap learned "
                       "queries, visual experts, gated cross-attention decoder) trained on the synthetic scenes.",
        "dims": {"image_size": cfg.image_size, "patch_size": cfg.patch_size, "vit_dim": cfg.vit_dim,
                 "d_visual": cfg.d_visual, "n_taps": cfg.n_taps, "n_patches": cfg.n_patches, "n_query": cfg.n_query,
                 "n_experts": cfg.n_experts, "top_k": cfg.top_k, "shared_expert": not eve, "d_model": cfg.d_model,
                 "n_layer": cfg.n_layer, "n_head": cfg.n_head, "head_dim": cfg.head_dim,
                 "vocab_size": cfg.vocab_size, "max_frames": cfg.max_frames, "max_text_len": cfg.max_text_len},
        "taps": list(cfg.taps),
        "tap_for_layer": list(cfg.tap_for_layer),
        "experts": {
            "form": cfg.expert_form, "n_experts": cfg.n_experts, "top_k": cfg.top_k, "shared_expert": not eve,
            "selection": "per token: the top_k largest router_logits (descending; equal logits: lower expert id first)",
            "weights": "w = softmax over the selected top_k logits (not over all E)",
            "combine": "refined = tokens + shared_out + sum_{j=0..top_k-1} w_j * expert_out_{e_j}, summed in j order",
            "shared_out": ("zeros (the eve form has no shared expert; expert 0 is the original visual FFN, expert 1 "
                           "the elastic vision FFN)") if eve else "the always-on shared expert applied to LN(tokens)",
            "capacity": "none: every token goes to its top_k experts whatever the rest of the batch",
        },
        "memory": {"frame_aware": "vit/resampler/router/experts run per frame (frames flattened into the batch); "
                                  "xattn_kv adds a learned embedding of the frame index and lays the memory out "
                                  "frame-major (m = f*Q + q); text attends to all valid frames",
                   "M": "F * n_query", "xattn_mask_value": NEG_INF,
                   "padding_frames": "frame_mask 0: their visual_tokens are ignored (masked); pass zeros"},
        "preprocessing": {"size": cfg.image_size, "resize": "fill", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                          "layout": "NCHW", "channels": "RGB", "scale": "pixel / 255, then (x - mean) / std"},
        "tokenizer": {"type": "word", "file": "vocab.txt", "split_punctuation": ["?"], "lowercase": False,
                      "unknown": "<unk>"},
        "special_tokens": {"pad": PAD, "bos": BOS, "eos": EOS, "unk": UNK, "sep": SEP},
        "prompts": {"caption": ["<bos>"], "vqa": ["<bos>", "{question}", "<sep>"],
                    "output": "generated tokens up to <eos>, joined with spaces; ' ?' -> '?'"},
        "generation": {"max_new_tokens": 32, "strategy": "greedy", "argmax_ties": "lowest id",
                       "padding": "left (attention_mask 0), position_ids = cumsum(attention_mask) - 1 clamped at 0; "
                                  "each step: position = last + 1, attention_mask gets a 1"},
        "graphs": manifest_graphs,
        "baseline": {"graph": "llava_decoder", "weights": "text decoder weights copied from the trained decoder; "
                     "visual projection seeded random, untrained (no accuracy target)",
                     "visual_embeds": "refined visual tokens flattened (frame, tap, query): Mv = F*L*Q at prefill, "
                                      "0 at later steps; attention_mask covers past + visual + text"},
        "reference": {"description": "Parity data for test/model-package/parity.test.ts: per graph, JSON indexes "
                                     "{graph, case, inputs: [{name, dtype, dims, file}], outputs: [...]} of raw "
                                     "little-endian tensors written by PyTorch; greedy.json: full greedy generations.",
                      "graphs": reference, "greedy": "reference/greedy.json", "tolerance": 1e-4},
        "files": files,
        "opset": OPSET,
        "config": cfg.to_dict(),
        "training": training or {},
    }
    json.dump(manifest, open(os.path.join(out_dir, "manifest.json"), "w"), indent=1)
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(out_dir) for f in fs)
    check(total <= max_mb * 1e6, f"package is {total / 1e6:.1f} MB > {max_mb} MB")
    say(f"wrote {out_dir}: {total / 1e6:.2f} MB")
    return manifest, {"caption": [vocab.decode(c) for c in cap], "answers": [vocab.decode(a) for a in ans],
                      "video": vocab.decode(vcap[0])}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--out", default="fixtures/models/evlm-tiny")
    ap.add_argument("--vocab", default="fixtures/scenes/vocab.txt")
    ap.add_argument("--samples", default=None, help="exported test data (test.images.npy, video.frames.npy) for the greedy references")
    ap.add_argument("--max-mb", type=float, default=25.0)
    ap.add_argument("--evaluation", default=None, help="evaluate.py's JSON result, copied into the manifest")
    args = ap.parse_args()
    model, ck = load_checkpoint(args.checkpoint)
    training = {"stage": ck.get("stage"), "metrics": ck.get("metrics")}
    if args.evaluation:
        training["evaluation"] = json.load(open(args.evaluation))
    _, gen = export(model, args.out, args.vocab, args.samples, args.max_mb, training=training)
    print(json.dumps(gen, indent=1))


if __name__ == "__main__":
    main()
