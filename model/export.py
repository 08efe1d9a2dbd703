"""Export a trained checkpoint as an evflow model package (DESIGN §2, docs/model.md).

    /usr/bin/python3 model/export.py --checkpoint out/evlm/stage3.pt --samples out/evlm-data/test \
        --out fixtures/models/evlm-tiny

Writes manifest.json, one ONNX graph per operator (opset 17; the llava_decoder baseline unless baseline=False), the
tokenizer file (vocab.txt, or a Hugging Face tokenizer.json for model/build_base.py's evlm-base), and reference/
(inputs and PyTorch outputs of every graph, and full greedy generations of a few samples) for the TypeScript parity
test (test/model-package/parity.test.ts, which runs the graphs in onnxruntime-node: Debian has no Python ONNX Runtime).

export() runs, in order: graph_modules (the wrappers), sample_inputs, reference_cases (each graph's reference inputs,
the previous graph's outputs), export_inputs, check_decomposition, check_dynamic_shapes, write_graphs,
check_weights_load_back, greedy_references, build_manifest. What it checks before the package is complete (it exits non-zero otherwise):
  1. decomposition: the graph wrappers, composed as the TS side composes them (router -> per-token top-k ->
     experts grouped per expert -> combine; xattn_kv; decoder prefill then cached single steps), reproduce the
     PyTorch model (EVLM.encode + a full, uncached decoder pass) to <= check_tol (1e-5), and give its greedy tokens;
  2. dynamic shapes: each wrapper traced with torch.jit.trace (the tracer torch.onnx.export uses) on one set
     of sizes reproduces the eager wrapper on other sizes (other B, F, N, T; an empty cache S = 0) to <= check_tol;
  3. the written ONNX files declare opset 17 and exactly the manifest's input and output names (read from the
     protobuf), and the package (graphs + tokenizer + reference) stays under --max-mb;
  4. the graphs' initializers map back onto exactly the model's weights (onnx_weights.py: how a PyTorch user, such as
     the benchmark's PyTorch peer, loads the package; it needs pairwise distinct parameters, see there).
ONNX Runtime's numbers themselves are compared by the TypeScript test (<= the manifest's reference.tolerance per
graph, identical greedy tokens).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import warnings
from types import SimpleNamespace

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one BLAS thread: the machine is shared

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import EVLM, NEG_INF, LlavaDecoder, greedy_generate, load_checkpoint  # noqa: E402
from data import BOS, EOS, PAD, SEP, UNK, Split, Vocab  # noqa: E402
from onnx_weights import MODEL_GRAPHS, PackageWeightsError, graphs_state_dict, read_onnx  # noqa: E402

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
    """(opsets {domain: version}, input names, output names) of an ONNX model (onnx_weights.read_onnx)."""
    m = read_onnx(path, tensors=False)
    return m.opsets, m.inputs, m.outputs


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


# ----------------------------------------------------------------------------- tokenizers

class WordVocab:
    """The reference model's word-level vocabulary (data.Vocab, vocab.txt) as the package needs it."""

    file = "vocab.txt"
    output = "generated tokens up to <eos>, joined with spaces; ' ?' -> '?'"

    def __init__(self, path):
        self.path = path
        self.vocab = Vocab(path)

    def __len__(self):
        return len(self.vocab)

    def encode(self, text):
        return self.vocab.encode(text)

    def decode(self, ids):
        return self.vocab.decode(ids)

    def manifest_entry(self):
        return {"type": "word", "file": self.file, "split_punctuation": ["?"], "lowercase": False, "unknown": "<unk>"}


def load_tokenizer(path):
    """vocab.txt (word level) or a Hugging Face tokenizer.json (byte-level BPE, model/bpe.py)."""
    if path.endswith(".json"):
        from bpe import BpeTokenizer
        return BpeTokenizer.load(path)
    return WordVocab(path)


# ----------------------------------------------------------------------------- the package's pieces

TINY_DESCRIPTION = ("evflow reference model: tiny EVLM/Eve-style VLM (hierarchical ViT taps, per-tap learned queries, "
                    "visual experts, gated cross-attention decoder) trained on the synthetic scenes.")


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


def graph_modules(model: EVLM, baseline=True):
    """Graph name -> the module exported as that graph (eval mode); baseline: with the llava_decoder baseline."""
    graphs = {"vit": VitGraph(model), "resampler": ResamplerGraph(model), "router": RouterGraph(model),
              "experts": ExpertsGraph(model), "xattn_kv": XattnKvGraph(model), "decoder": DecoderGraph(model)}
    if baseline:
        graphs["llava_decoder"] = build_llava(model)
    for m in graphs.values():
        m.eval()
    return graphs


def sample_inputs(cfg, samples_dir, tok, n_images=3):
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


def left_pad(prompts, pad):
    """Token-id lists -> (input_ids [B,T], attention_mask [B,T], position_ids [B,T]), left padded as the TS side pads."""
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad, dtype=torch.long)
    am = torch.zeros(len(prompts), T, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, T - len(p):] = torch.tensor(p)
        am[b, T - len(p):] = 1
    return ids, am, (am.cumsum(1) - 1).clamp(min=0)


@torch.no_grad()
def reference_cases(cfg, graphs, smp, tok):
    """The reference inputs of every graph, from the samples (each graph's input is the previous graph's output):
    ({graph: [(case or None, inputs, description)]}, the intermediate tensors check_decomposition compares)."""
    L, Q, D, n, H, dh = cfg.n_taps, cfg.n_query, cfg.d_visual, cfg.n_layer, cfg.n_head, cfg.head_dim
    x = SimpleNamespace()
    x.px = smp["images"][:2]
    x.taps = graphs["vit"](x.px)
    x.vtok = graphs["resampler"](x.taps)
    tokens = x.vtok.reshape(-1, D)                                            # N = 2*L*Q
    vid_tok = graphs["resampler"](graphs["vit"](smp["video"][0, :2]))         # 2 frames of the clip
    x.refined_img = route_and_combine(graphs["router"], graphs["experts"], tokens, cfg.top_k).view(2, L, Q, D)
    refined_vid = route_and_combine(graphs["router"], graphs["experts"], vid_tok.reshape(-1, D), cfg.top_k).view(1, 2, L, Q, D)
    # xattn_kv case: a 2-frame clip and an image padded to 2 frames
    vt = torch.cat([refined_vid, torch.cat([x.refined_img[:1, None], torch.zeros(1, 1, L, Q, D)], 1)], 0)  # [2,2,L,Q,D]
    x.fmask = torch.tensor([[1, 1], [1, 0]], dtype=torch.long)
    x.xk, x.xv, x.xm = graphs["xattn_kv"](vt, x.fmask)
    # decoder prefill case: left-padded prompts (a caption and a question), S = 0
    x.ids, am, x.pos = left_pad([[BOS], [BOS] + tok.encode(smp["questions"][0]) + [SEP]], PAD)
    x.empty = torch.zeros(n, 2, H, 0, dh)
    pre = graphs["decoder"](x.ids, x.pos, am, x.empty, x.empty, x.xk, x.xv, x.xm)
    x.nxt = pre[0][:, -1].argmax(-1, keepdim=True)
    x.am2 = torch.cat([am, torch.ones(2, 1, dtype=torch.long)], 1)
    x.pos2 = x.pos[:, -1:] + 1
    x.step = graphs["decoder"](x.nxt, x.pos2, x.am2, pre[1], pre[2], x.xk, x.xv, x.xm)
    cases = {
        "vit": [(None, (x.px,), "two test images")],
        "resampler": [(None, (x.taps,), "the taps of vit's reference output")],
        "router": [(None, (tokens,), "the visual tokens of the two images, flattened: N = 2*L*Q")],
        "experts": [(f"e{e}", (tokens[:7], torch.tensor(e)), f"seven tokens through expert {e}") for e in (0, cfg.n_experts - 1)],
        "xattn_kv": [(None, (vt, x.fmask), "row 0: two frames of a clip; row 1: an image padded to two frames")],
        "decoder": [("prefill", (x.ids, x.pos, am, x.empty, x.empty, x.xk, x.xv, x.xm),
                     "left-padded prompts (caption <bos>; <bos> question <sep>), empty cache S = 0"),
                    ("step", (x.nxt, x.pos2, x.am2, pre[1], pre[2], x.xk, x.xv, x.xm), "one cached step after the prefill (T = 1)")],
    }
    if "llava_decoder" in graphs:  # llava prefill (visual tokens + prompt) and one step
        x.vis = x.refined_img[:, -1]  # the last tap's Q tokens (Mv is dynamic; a smaller reference keeps the package small)
        x.lam = torch.cat([torch.ones(2, Q, dtype=torch.long), am], 1)
        lpre = graphs["llava_decoder"](x.vis, x.ids, x.pos, x.lam, x.empty, x.empty)
        x.lnxt = lpre[0][:, -1].argmax(-1, keepdim=True)
        x.lam2 = torch.cat([x.lam, torch.ones(2, 1, dtype=torch.long)], 1)
        x.lstep = graphs["llava_decoder"](torch.zeros(2, 0, D), x.lnxt, x.pos2, x.lam2, lpre[1], lpre[2])
        cases["llava_decoder"] = [("prefill", (x.vis, x.ids, x.pos, x.lam, x.empty, x.empty), "visual tokens + left-padded prompts, S = 0"),
                                  ("step", (torch.zeros(2, 0, D), x.lnxt, x.pos2, x.lam2, lpre[1], lpre[2]),
                                   "one cached step (no visual tokens: Mv = 0)")]
    return cases, x


def export_inputs(cfg, cases, x, gen):
    """The inputs the graphs are traced / exported with: every dynamic size distinct and non-zero (S = 3)."""
    n, H, dh = cfg.n_layer, cfg.n_head, cfg.head_dim
    past3 = torch.randn(n, 2, H, 3, dh, generator=gen)
    am5 = torch.ones(2, 5, dtype=torch.long)
    inputs = {g: cases[g][0][1] for g in cases}
    inputs["decoder"] = (x.ids[:, -2:], torch.tensor([[3, 4], [3, 4]]), am5, past3, past3, x.xk, x.xv, x.xm)
    if "llava_decoder" in cases:
        inputs["llava_decoder"] = (x.vis[:, :4], x.ids[:, -2:], torch.tensor([[3, 4], [3, 4]]),
                                   torch.ones(2, 3 + 4 + 2, dtype=torch.long), past3, past3)
    return inputs


@torch.no_grad()
def check_decomposition(model, graphs, x, smp, tol):
    """Check 1: the graph wrappers composed as the TS side composes them reproduce the PyTorch model."""
    ref_tok, _ = model.experts(x.vtok)
    d = max_diff(ref_tok, x.refined_img)
    check(d <= tol, f"router/experts composition differs from VisualExperts.forward ({d:.2e})")
    # xattn memory of the composed path == EVLM.encode
    pv = torch.stack([smp["video"][0, :2], torch.cat([x.px[:1], torch.zeros(1, *x.px.shape[1:])])])
    (ek, ev, em), _ = model.encode(pv, x.fmask)
    d = max_diff((ek, ev, em), (x.xk, x.xv, x.xm))
    check(d <= tol, f"xattn_kv of the composed path differs from EVLM.encode ({d:.2e})")
    # cached prefill + step == one uncached pass over prompt + next token
    full = graphs["decoder"](torch.cat([x.ids, x.nxt], 1), torch.cat([x.pos, x.pos2], 1), x.am2, x.empty, x.empty,
                             x.xk, x.xv, x.xm)
    d = max_diff(full[0][:, -1], x.step[0][:, -1])
    check(d <= tol, f"cached decoder step differs from the uncached pass ({d:.2e})")
    if "llava_decoder" in graphs:
        lfull = graphs["llava_decoder"](x.vis, torch.cat([x.ids, x.lnxt], 1), torch.cat([x.pos, x.pos2], 1), x.lam2,
                                        x.empty, x.empty)
        d = max_diff(lfull[0][:, -1], x.lstep[0][:, -1])
        check(d <= tol, f"cached llava step differs from the uncached pass ({d:.2e})")


def check_dynamic_shapes(cfg, graphs, cases, inputs, gen, tol):
    """Check 2: each wrapper traced on the export inputs reproduces the eager wrapper on other sizes."""
    L, Q, D, n, H, dh = cfg.n_taps, cfg.n_query, cfg.d_visual, cfg.n_layer, cfg.n_head, cfg.head_dim
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
    }
    if "llava_decoder" in graphs:
        other["llava_decoder"] = (torch.randn(3, 6, D, generator=gen), torch.randint(5, cfg.vocab_size, (3, 2), generator=gen),
                                  torch.tensor([[4, 5]] * 3), torch.ones(3, 4 + 6 + 2, dtype=torch.long),
                                  torch.randn(n, 3, H, 4, dh, generator=gen), torch.randn(n, 3, H, 4, dh, generator=gen))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        for g, m in graphs.items():
            traced = torch.jit.trace(m, inputs[g], check_trace=False)
            for args in [other[g]] + [c[1] for c in cases[g]]:
                d = max_diff(traced(*args), m(*args))
                check(d <= tol, f"{g}: traced graph differs from eager on other sizes ({d:.2e})")


def check_weights_load_back(model, out_dir):
    """Check 4: the ONNX initializers map back onto exactly the model's weights (onnx_weights: how a PyTorch user, the
    benchmark's PyTorch peer, loads a package)."""
    try:
        state = graphs_state_dict({g: os.path.join(out_dir, f"{g}.onnx") for g in MODEL_GRAPHS}, model)
    except PackageWeightsError as e:
        raise SystemExit(f"export check failed: the package's weights do not load back: {e}")
    want = model.state_dict()
    bad = [k for k in want if not torch.equal(want[k], state[k])]
    check(not bad, f"the package's initializers differ from the model's weights: {bad[:5]}")


def write_graphs(graphs, specs, inputs, cases, out_dir, ref_dir):
    """Check 3 while writing: each graph's ONNX file (opset, input and output names read back) and its reference
    cases. Returns (the manifest's graphs, its reference index)."""
    manifest_graphs, reference = {}, {}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        for g, m in graphs.items():
            ins, outs = specs[g]
            path = os.path.join(out_dir, f"{g}.onnx")
            torch.onnx.export(m, inputs[g], path, opset_version=OPSET, do_constant_folding=True,
                              input_names=[v[0] for v in ins], output_names=[v[0] for v in outs],
                              dynamic_axes=dynamic_axes(specs[g]))
            opsets, in_names, out_names = read_onnx_io(path)
            check(opsets.get("") == OPSET, f"{g}.onnx: opset {opsets}")
            check(in_names == [v[0] for v in ins], f"{g}.onnx inputs {in_names}")
            check(out_names == [v[0] for v in outs], f"{g}.onnx outputs {out_names}")
            manifest_graphs[g] = {
                "file": f"{g}.onnx",
                "inputs": [{"name": a, "dtype": t, "shape": s} for a, t, s in ins],
                "outputs": [{"name": a, "dtype": t, "shape": s} for a, t, s in outs],
                "sha256": sha256(path), "bytes": os.path.getsize(path)}
            reference[g] = []
            for case, args, note in cases[g]:
                outputs = m(*args)
                outputs = outputs if isinstance(outputs, tuple) else (outputs,)
                reference[g].append(write_case(ref_dir, g, case, [v[0] for v in ins], args,
                                               [v[0] for v in outs], outputs, note))
    return manifest_graphs, reference


@torch.no_grad()
def greedy_references(model, graphs, smp, tok, cfg, ref_dir, max_new_tokens):
    """Full greedy generations by the PyTorch model (the reference loop, model.greedy_generate), checked against the
    same loop on the graph wrappers; writes their inputs. Returns (greedy.json's content, the generated ids)."""
    imgs = smp["images"]
    fm1 = torch.ones(len(imgs), 1, dtype=torch.long)
    (gk, gv, gm), _ = model.encode(imgs[:, None], fm1)
    cap = greedy_generate(model.decoder, gk, gv, gm, [[BOS]] * len(imgs), max_new_tokens)
    qprompts = [[BOS] + tok.encode(q) + [SEP] for q in smp["questions"]]
    ans = greedy_generate(model.decoder, gk, gv, gm, qprompts, max_new_tokens)
    (vk, vv, vm), _ = model.encode(smp["video"], smp["video_mask"])
    vcap = greedy_generate(model.decoder, vk, vv, vm, [[BOS]], max_new_tokens)
    vprompt = [BOS] + tok.encode(smp["video_question"]) + [SEP]
    vans = greedy_generate(model.decoder, vk, vv, vm, [vprompt], max_new_tokens)
    # the graph composition (what TS runs) must give the same tokens
    gg = greedy_with_graphs(graphs, imgs[:, None], fm1, [[BOS]] * len(imgs), cfg.top_k, max_new_tokens)
    check(gg == cap, "greedy captions through the graph wrappers differ from the model's")
    gq = greedy_with_graphs(graphs, imgs[:, None], fm1, qprompts, cfg.top_k, max_new_tokens)
    check(gq == ans, "greedy answers through the graph wrappers differ from the model's")
    gvid = greedy_with_graphs(graphs, smp["video"], smp["video_mask"], [[BOS]], cfg.top_k, max_new_tokens)
    check(gvid == vcap, "greedy video caption through the graph wrappers differs from the model's")
    s = cfg.image_size
    sample = lambda i, task, prompt, ids, truth, **kw: {
        "image": i, "id": smp["ids"][i] if smp["ids"] else None, "task": task, **kw, "prompt_ids": prompt,
        "expected_ids": ids, "expected_text": tok.decode(ids), "truth": truth[i] if truth else None}
    greedy = {
        "description": f"Full greedy generation by the PyTorch model (max_new_tokens {max_new_tokens}, tokens up to and "
                       f"including <eos>). images: normalised pixel_values [n,3,{s},{s}]; video: [1,F,3,{s},{s}] with "
                       "frame_mask.",
        "max_new_tokens": max_new_tokens,
        "images": write_tensor(ref_dir, "greedy", "images", imgs),
        "samples": [sample(i, "caption", [BOS], cap[i], smp["captions"]) for i in range(len(imgs))] + [
            sample(i, "vqa", qprompts[i], ans[i], smp["answers"], question=smp["questions"][i]) for i in range(len(imgs))],
        "video": {"pixel_values": write_tensor(ref_dir, "greedy", "video", smp["video"]),
                  "frame_mask": write_tensor(ref_dir, "greedy", "video_frame_mask", smp["video_mask"]),
                  "id": smp["video_id"], "samples": [
            {"task": "caption", "prompt_ids": [BOS], "expected_ids": vcap[0], "expected_text": tok.decode(vcap[0]),
             "truth": smp["video_caption"]},
            {"task": "vqa", "question": smp["video_question"], "prompt_ids": vprompt, "expected_ids": vans[0],
             "expected_text": tok.decode(vans[0]), "truth": smp["video_answer"]}]},
    }
    return greedy, {"caption": cap, "answers": ans, "video": vcap[0]}


def build_manifest(cfg, name, description, tok, generation, manifest_graphs, reference, tolerance, files, training):
    """manifest.json (format evflow-model/1, docs/model.md): everything the TypeScript side knows about the model."""
    eve = cfg.expert_form == "eve"
    manifest = {
        "format": FORMAT,
        "name": name,
        "description": description,
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
        "tokenizer": tok.manifest_entry(),
        "special_tokens": {"pad": PAD, "bos": BOS, "eos": EOS, "unk": UNK, "sep": SEP},
        "prompts": {"caption": ["<bos>"], "vqa": ["<bos>", "{question}", "<sep>"], "output": tok.output},
        "generation": generation,
        "graphs": manifest_graphs,
    }
    if "llava_decoder" in manifest_graphs:
        manifest["baseline"] = {"graph": "llava_decoder", "weights": "text decoder weights copied from the trained decoder; "
                                "visual projection seeded random, untrained (no accuracy target)",
                                "visual_embeds": "refined visual tokens flattened (frame, tap, query): Mv = F*L*Q at prefill, "
                                                 "0 at later steps; attention_mask covers past + visual + text"}
    manifest.update({
        "reference": {"description": "Parity data for test/model-package/parity.test.ts: per graph, JSON indexes "
                                     "{graph, case, inputs: [{name, dtype, dims, file}], outputs: [...]} of raw "
                                     "little-endian tensors written by PyTorch; greedy.json: full greedy generations.",
                      "graphs": reference, "greedy": "reference/greedy.json", "tolerance": tolerance},
        "files": files,
        "opset": OPSET,
        "config": cfg.to_dict(),
        "training": training or {},
    })
    return manifest


GENERATION = {"max_new_tokens": 32, "strategy": "greedy", "argmax_ties": "lowest id",
              "padding": "left (attention_mask 0), position_ids = cumsum(attention_mask) - 1 clamped at 0; "
                         "each step: position = last + 1, attention_mask gets a 1"}


def export(model: EVLM, out_dir, tokenizer, samples_dir=None, max_mb=25.0, name="evlm-tiny", training=None,
           quiet=False, description=TINY_DESCRIPTION, baseline=True, generation=None, tolerance=1e-4, check_tol=1e-5):
    """Writes the package of `model` to out_dir (replacing it) after checks 1-3 (module docstring); returns (manifest,
    the greedy reference texts). tokenizer: a path (vocab.txt, tokenizer.json) or a loaded one (load_tokenizer);
    baseline: with the llava_decoder graph; generation: the manifest's generation settings (default GENERATION);
    tolerance: the ORT parity tolerance recorded for parity.test.ts; check_tol: checks 1 and 2's. max_mb None: no size
    limit."""
    torch.set_num_threads(1)
    cfg = model.cfg
    check(cfg.expert_form in ("evlm", "eve"), f"expert_form {cfg.expert_form!r}: export needs the evlm or eve form")
    model = model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    check(len(tok) == cfg.vocab_size, "vocabulary size differs from the model's")
    generation = generation or GENERATION
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))

    specs = graph_specs(cfg)
    graphs = graph_modules(model, baseline)
    gen = torch.Generator().manual_seed(1)
    smp = sample_inputs(cfg, samples_dir, tok)
    cases, x = reference_cases(cfg, graphs, smp, tok)
    inputs = export_inputs(cfg, cases, x, gen)
    check_decomposition(model, graphs, x, smp, check_tol)
    say("check 1 (decomposition == model): ok")
    check_dynamic_shapes(cfg, graphs, cases, inputs, gen, check_tol)
    say("check 2 (traced == eager on other dynamic sizes, decoder with S = 0): ok")

    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    ref_dir = os.path.join(out_dir, "reference")
    os.makedirs(ref_dir)
    manifest_graphs, reference = write_graphs(graphs, specs, inputs, cases, out_dir, ref_dir)
    say("check 3 (ONNX opset and input/output names): ok")
    check_weights_load_back(model, out_dir)
    say("check 4 (the graphs' initializers give back the model's weights): ok")
    greedy, generated = greedy_references(model, graphs, smp, tok, cfg, ref_dir, generation["max_new_tokens"])
    json.dump(greedy, open(os.path.join(ref_dir, "greedy.json"), "w"), indent=1)
    shutil.copy(tok.path, os.path.join(out_dir, tok.file))

    files = {}
    for root, _, fs in os.walk(out_dir):
        for f in sorted(fs):
            p = os.path.join(root, f)
            rel = os.path.relpath(p, out_dir)
            if not rel.endswith(".onnx"):
                files[rel] = {"sha256": sha256(p), "bytes": os.path.getsize(p)}
    manifest = build_manifest(cfg, name, description, tok, generation, manifest_graphs, reference, tolerance, files, training)
    json.dump(manifest, open(os.path.join(out_dir, "manifest.json"), "w"), indent=1)
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(out_dir) for f in fs)
    check(max_mb is None or total <= max_mb * 1e6, f"package is {total / 1e6:.1f} MB > {max_mb} MB")
    say(f"wrote {out_dir}: {total / 1e6:.2f} MB")
    return manifest, {k: [tok.decode(i) for i in v] if k != "video" else tok.decode(v) for k, v in generated.items()}


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
