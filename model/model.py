"""evflow reference model: an EVLM / Eve-style vision-language model, in data-flow order. EVLMConfig's defaults are
the tiny trained model shipped in fixtures/models/evlm-tiny; PRESETS name other sizes (evlm-base: docs/model.md).

    pixels ─▶ ViT (taps) ─▶ Resampler ─▶ VisualExperts ─▶ CrossMemory ─▶ Decoder (gated x-attn + LM)

Each module below is one graph of the exported package (see export.py and docs/model.md):

    ViT            vit.onnx         pixel_values [B,3,s,s]        -> taps [B,L,P,Dv]
    Resampler      resampler.onnx   taps [B,L,P,Dv]               -> visual_tokens [B,L,Q,D]
    VisualExperts  router.onnx      tokens [N,D]                  -> router_logits [N,E], shared_out [N,D]
                   experts.onnx     tokens [n,D], expert_id []    -> expert_out [n,D]
    CrossMemory    xattn_kv.onnx    visual_tokens [B,F,L,Q,D], frame_mask [B,F]
                                                                  -> xattn_k/v [B,n_layer,H,M,dh], xattn_mask [B,M]
    Decoder        decoder.onnx     input_ids, position_ids, attention_mask, past_k/v, xattn_k/v/mask
                                                                  -> logits [B,T,V], present_k/v
    LlavaDecoder   llava_decoder.onnx (baseline: visual tokens prepended to the self-attention sequence)

Every forward is a pure function of its inputs. Shapes: B batch, F frames, s image side (64 in evlm-tiny), L taps,
P patches, Q queries per tap, D visual width, E experts, H heads, dh head width, M = F*Q memory length per decoder
layer, T new tokens, S cached tokens, V vocabulary.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, asdict
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

NEG_INF = -1e9  # additive mask value for "do not attend" (finite, so a fully masked row never gives NaN)


@dataclass
class EVLMConfig:
    """The architecture. The defaults are the shipped reference model, fixtures/models/evlm-tiny (built by
    model/recipe.sh: its stage configs set only what differs per stage, e.g. the dense expert form before
    stage 3); other variants are the named PRESETS below."""
    # --- image and ViT ---
    image_size: int = 64            # input side in pixels (square; the TS side resizes with fit 'fill')
    patch_size: int = 8             # each visual token covers a patch of this side: P = (64/8)^2 = 64
    vit_stem: str = "deep"          # "deep": 5 convs (two at full / half resolution, then 3 strided) down to patch 8, learns
                                    # shapes much faster; "conv": 3 strided convs (early convolutions) down to patch 8;
                                    # "linear": a patch_size x patch_size patch embedding (ViT-B/16)
    vit_dim: int = 128              # Dv, ViT width
    vit_layers: int = 6             # ViT blocks
    vit_heads: int = 4              # ViT attention heads
    vit_mlp: int = 256              # ViT MLP hidden width
    taps: tuple = (2, 4, 6)         # ViT blocks whose outputs are tapped (1-based); L = len(taps)
    # --- resampler (Perceiver-style, one set of learned queries per tap) ---
    n_query: int = 16               # Q learned query tokens per tap
    d_visual: int = 128             # D, width of visual tokens
    resampler_heads: int = 4        # heads of the resampler cross-attention
    resampler_mlp: int = 256        # resampler MLP hidden width
    resampler_prior: float = 1.0    # sigma (in patches) of the learnable spatial attention bias: the Q queries start
                                    # looking at a sqrt(Q) x sqrt(Q) grid of image regions (0: no bias)
    resampler_grid: int = 3         # > 0: only the first g*g queries start on a g x g grid (the scenes' 3x3 cells),
                                    # the others see the whole image (bias 0); 0: the sqrt(Q) grid
    # --- visual experts (act on visual tokens) ---
    expert_form: str = "evlm"       # "dense": one visual FFN (stages 1-2); "evlm": shared expert + E routed experts, top_k;
                                    # "eve": original FFN + elastic vision FFN, top-1 of 2, no shared expert
    vis_ffn_hidden: int = 256       # hidden width of the dense visual FFN (= EVLM shared expert = each Eve expert)
    n_experts: int = 8              # E routed experts (eve: 2)
    top_k: int = 2                  # experts per token (eve: 1)
    expert_hidden: int = 32         # hidden width of one EVLM routed expert (fine-grained: a 1/E slice of the dense FFN)
    # --- video ---
    max_frames: int = 8             # frames per clip the temporal embedding covers
    memory_mixer: int = 1           # pre-LN self-attention blocks over a clip's memory tokens, per tap, before the
                                    # keys / values (inside xattn_kv): tokens of one frame see each other (groups of
                                    # equal objects) and those of the clip's other valid frames (motion); 0: none
    # --- decoder ---
    vocab_size: int = 65            # word-level vocabulary (fixtures/scenes/vocab.txt)
    d_model: int = 192              # decoder width
    n_layer: int = 4                # decoder layers, each preceded by a gated cross-attention block
    n_head: int = 6                 # decoder heads (self- and cross-attention); dh = d_model / n_head
    ffn_hidden: int = 512           # decoder MLP hidden width
    xattn_ffn_hidden: int = 192     # hidden width of the gated FFN in each cross-attention block
    tap_for_layer: tuple = (0, 1, 2, 2)  # decoder layer i cross-attends to the tokens of tap tap_for_layer[i]
    max_text_len: int = 64          # learned positions (prompt + generated tokens)

    def __post_init__(self):
        self.taps = tuple(self.taps)
        self.tap_for_layer = tuple(self.tap_for_layer)
        assert self.image_size % self.patch_size == 0
        assert len(self.tap_for_layer) == self.n_layer
        assert all(0 <= t < len(self.taps) for t in self.tap_for_layer)
        assert all(1 <= t <= self.vit_layers for t in self.taps)
        assert self.d_model % self.n_head == 0
        assert self.expert_form in ("dense", "evlm", "eve")
        if self.expert_form == "eve":
            assert self.n_experts == 2 and self.top_k == 1, "eve form is top-1 of 2"
        if self.vit_stem in ("conv", "deep"):
            assert self.patch_size == 8, "the conv stem downsamples by exactly 8"

    @property
    def n_patches(self) -> int:  # P
        return (self.image_size // self.patch_size) ** 2

    @property
    def n_taps(self) -> int:  # L
        return len(self.taps)

    @property
    def head_dim(self) -> int:  # dh
        return self.d_model // self.n_head

    def to_dict(self) -> dict:
        d = asdict(self)
        d["taps"] = list(self.taps)
        d["tap_for_layer"] = list(self.tap_for_layer)
        return d


def spread_taps(vit_layers: int, n_taps: int) -> tuple:
    """The reference model's tapped ViT blocks: n_taps blocks evenly spaced, the last one the last block
    (6 blocks, 3 taps: (2, 4, 6); 12 blocks, 4 taps: (3, 6, 9, 12))."""
    return tuple(vit_layers * (i + 1) // n_taps for i in range(n_taps))


def taps_by_depth(n_layer: int, n_taps: int) -> tuple:
    """The reference model's tap for each decoder layer: layer i reads tap min(L-1, ceil(i*L/n)), so shallow layers read
    shallow taps and the deepest tap feeds the last layers (4 layers, 3 taps: (0, 1, 2, 2); 12 layers, 4 taps:
    (0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3))."""
    return tuple(min(n_taps - 1, -(-i * n_taps // n_layer)) for i in range(n_layer))


# Named architectures: EVLMConfig field overrides over the defaults (= "evlm-tiny"). preset(name, **fields) builds one.
PRESETS = {
    # the shipped reference model, fixtures/models/evlm-tiny (model/recipe.sh)
    "evlm-tiny": {},
    # Eve's expert form on the reference model (model/configs/stage3_eve.json): expert 0 the original visual FFN, expert 1
    # the elastic vision FFN, top-1, no shared expert
    "evlm-tiny-eve": {"expert_form": "eve", "n_experts": 2, "top_k": 1},
    # the same architecture at a realistic size (issue #18; ~281 M parameters, random weights, built by model/build_base.py):
    # ViT-B/16 at 224 px with 4 taps, 64 queries per tap, 8 fine-grained experts (top-2) + the shared expert, a 12-layer
    # 768-wide decoder with gated cross-attention before every layer, a 32,000-entry byte-level BPE vocabulary. Widths
    # the reference model sets relative to its own (resampler and visual FFN 2 x, routed experts 1/8 of the visual FFN,
    # cross-attention FFN 1 x) keep those ratios; ViT and decoder MLPs are ViT-B's and GPT-2's 4 x.
    "evlm-base": {
        "image_size": 224, "patch_size": 16, "vit_stem": "linear", "vit_dim": 768, "vit_layers": 12, "vit_heads": 12,
        "vit_mlp": 3072, "taps": spread_taps(12, 4),
        "n_query": 64, "d_visual": 768, "resampler_heads": 12, "resampler_mlp": 1536, "resampler_grid": 0,
        "vis_ffn_hidden": 1536, "n_experts": 8, "top_k": 2, "expert_hidden": 192,
        "vocab_size": 32000, "d_model": 768, "n_layer": 12, "n_head": 12, "ffn_hidden": 3072, "xattn_ffn_hidden": 768,
        "tap_for_layer": taps_by_depth(12, 4), "max_text_len": 128,
    },
}


def preset(name: str, **fields) -> EVLMConfig:
    """The named architecture (PRESETS), with `fields` overriding some of its values."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r} (one of {', '.join(PRESETS)})")
    return EVLMConfig(**{**PRESETS[name], **fields})


# ----------------------------------------------------------------------------- building blocks

def attend(q, k, v, bias=None):
    """Scaled dot-product attention. q [B,H,T,dh], k/v [B,H,S,dh], bias additive, broadcast to [B,H,T,S]."""
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))
    if bias is not None:
        att = att + bias
    return att.softmax(dim=-1) @ v  # [B,H,T,dh]


def split_heads(x, n_head):  # [B,T,C] -> [B,H,T,C/H]
    B, T, C = x.shape
    return x.view(B, T, n_head, C // n_head).transpose(1, 2)


def merge_heads(x):  # [B,H,T,dh] -> [B,T,H*dh]
    B, H, T, dh = x.shape
    return x.transpose(1, 2).reshape(B, T, H * dh)


class MLP(nn.Module):
    def __init__(self, d_in, hidden, d_out=None):
        super().__init__()
        self.fc = nn.Linear(d_in, hidden)
        self.proj = nn.Linear(hidden, d_out or d_in)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))


class SelfAttention(nn.Module):
    """Multi-head self-attention (no cache); used by the ViT."""

    def __init__(self, dim, n_head):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, bias=None):  # x [B,T,C]
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        y = attend(split_heads(q, self.n_head), split_heads(k, self.n_head), split_heads(v, self.n_head), bias)
        return self.proj(merge_heads(y))


class Block(nn.Module):
    """Pre-LN transformer block (ViT; the memory mixer's blocks pass an additive key mask)."""

    def __init__(self, dim, n_head, mlp_hidden):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, n_head)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_hidden)

    def forward(self, x, bias=None):
        x = x + self.attn(self.ln1(x), bias)
        return x + self.mlp(self.ln2(x))


# ----------------------------------------------------------------------------- 1. ViT with tapped layers

def sincos_2d(side, dim):
    """[1, side*side, dim] 2D sine-cosine position embedding (MAE): half the channels encode the row, half the column."""
    q = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(q, dtype=torch.float32) / q))
    ys, xs = torch.meshgrid(torch.arange(side, dtype=torch.float32), torch.arange(side, dtype=torch.float32), indexing="ij")
    parts = []
    for c in (ys.flatten(), xs.flatten()):
        a = c[:, None] * omega[None, :]
        parts += [a.sin(), a.cos()]
    return torch.cat(parts, dim=1)[None]


class ViT(nn.Module):
    """pixel_values [B,3,H,W] (normalised) -> taps [B,L,P,Dv]: the outputs of blocks cfg.taps (hierarchical features)."""

    def __init__(self, cfg: EVLMConfig):
        super().__init__()
        self.taps = cfg.taps
        d = cfg.vit_dim
        if cfg.vit_stem == "conv":  # 64 -> 32 -> 16 -> 8 (one token per 8x8 patch)
            self.stem = nn.Sequential(
                nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.GELU(),
                nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GELU(),
                nn.Conv2d(64, d, 2, stride=2),
            )
        elif cfg.vit_stem == "deep":  # 64 -> 64 -> 32 -> 32 -> 16 -> 8
            self.stem = nn.Sequential(
                nn.Conv2d(3, 32, 3, padding=1), nn.GELU(),
                nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GELU(),
                nn.Conv2d(64, 64, 3, padding=1), nn.GELU(),
                nn.Conv2d(64, 96, 3, stride=2, padding=1), nn.GELU(),
                nn.Conv2d(96, d, 2, stride=2),
            )
        else:
            self.stem = nn.Conv2d(3, d, cfg.patch_size, stride=cfg.patch_size)
        for c in self.stem.modules():  # variance-preserving init, so image content is not dwarfed by positions
            if isinstance(c, nn.Conv2d):
                nn.init.kaiming_normal_(c.weight, nonlinearity="relu")
                nn.init.zeros_(c.bias)
        self.ln_stem = nn.LayerNorm(d)
        self.pos = nn.Parameter(sincos_2d(cfg.image_size // cfg.patch_size, d))  # learned, starts as 2D sin-cos
        self.blocks = nn.ModuleList([Block(d, cfg.vit_heads, cfg.vit_mlp) for _ in range(cfg.vit_layers)])

    def forward(self, pixel_values):
        x = self.stem(pixel_values)                   # [B,Dv,s/p,s/p] (evlm-tiny: 8x8)
        x = self.ln_stem(x.flatten(2).transpose(1, 2)) + self.pos   # [B,P,Dv]
        taps = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i + 1 in self.taps:
                taps.append(x)
        return torch.stack(taps, dim=1)               # [B,L,P,Dv]


# ----------------------------------------------------------------------------- 2. resampler

class PerceiverLayer(nn.Module):
    """Learned queries cross-attend to the patches of one tap (Perceiver-style), then an MLP."""

    def __init__(self, d_kv, d, n_head, mlp_hidden, pos_bias=None):
        super().__init__()
        self.n_head = n_head
        # learnable attention bias [Q,P] added to every head's logits (a spatial prior, see spatial_prior)
        self.pos_bias = nn.Parameter(pos_bias) if pos_bias is not None else None
        self.ln_x = nn.LayerNorm(d_kv)
        self.ln_q = nn.LayerNorm(d)
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d_kv, 2 * d)
        self.proj = nn.Linear(d, d)
        self.ln_mlp = nn.LayerNorm(d)
        self.mlp = MLP(d, mlp_hidden)

    def forward(self, x, lat):  # x [B,P,Dv], lat [B,Q,D]
        h = self.ln_q(lat)
        q = split_heads(self.q(h), self.n_head)
        k, v = self.kv(self.ln_x(x)).chunk(2, dim=-1)
        k, v = split_heads(k, self.n_head), split_heads(v, self.n_head)  # [B,H,P,dh]
        lat = lat + self.proj(merge_heads(attend(q, k, v, self.pos_bias)))
        return lat + self.mlp(self.ln_mlp(lat))


def spatial_prior(n_query, side, sigma, grid=0):
    """[Q,P] attention bias: query q starts focused on cell q of a g x g grid over the side x side patches:
    -d^2 / (2 sigma^2), d the distance (in patches) from the patch to the cell's centre. g = sqrt(Q), or `grid`:
    then queries g*g..Q-1 start with no bias (they see the whole image)."""
    g = grid or int(round(math.sqrt(n_query)))
    assert g * g == n_query or (grid and g * g <= n_query), "the spatial prior needs a square number of queries"
    c = (torch.arange(g, dtype=torch.float32) + 0.5) * side / g                        # cell centres
    p = torch.arange(side, dtype=torch.float32) + 0.5                                   # patch centres
    cy, cx = torch.meshgrid(c, c, indexing="ij")
    py, px = torch.meshgrid(p, p, indexing="ij")
    d2 = (cy.reshape(-1, 1) - py.reshape(1, -1)) ** 2 + (cx.reshape(-1, 1) - px.reshape(1, -1)) ** 2
    bias = -d2 / (2 * sigma ** 2)
    return torch.cat([bias, bias.new_zeros(n_query - g * g, side * side)])


class Resampler(nn.Module):
    """taps [B,L,P,Dv] -> visual_tokens [B,L,Q,D]: Q learned queries per tap (separate weights per tap)."""

    def __init__(self, cfg: EVLMConfig):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(cfg.n_taps, cfg.n_query, cfg.d_visual) * 0.02)
        side = cfg.image_size // cfg.patch_size
        prior = lambda: (spatial_prior(cfg.n_query, side, cfg.resampler_prior, cfg.resampler_grid)
                         if cfg.resampler_prior > 0 else None)
        self.layers = nn.ModuleList([
            PerceiverLayer(cfg.vit_dim, cfg.d_visual, cfg.resampler_heads, cfg.resampler_mlp, prior())
            for _ in range(cfg.n_taps)])
        self.ln_out = nn.LayerNorm(cfg.d_visual)

    def forward(self, taps):
        B = taps.shape[0]
        out = []
        for l, layer in enumerate(self.layers):
            lat = self.queries[l].unsqueeze(0).expand(B, -1, -1)   # [B,Q,D]
            out.append(layer(taps[:, l], lat))
        return self.ln_out(torch.stack(out, dim=1))                 # [B,L,Q,D]


# ----------------------------------------------------------------------------- 3. visual experts

class VisualExperts(nn.Module):
    """Refines visual tokens: tokens [N,D] -> tokens + shared(LN x) + sum_k w_k expert_k(LN x).

    form "dense": tokens + ffn(LN x) (before upcycling).
    form "evlm":  router picks top_k of E fine-grained experts per token; w = softmax over the top_k logits;
                  one always-on shared ("world") expert.
    form "eve":   router picks top-1 of 2: expert 0 = the original visual FFN, expert 1 = the elastic vision
                  FFN; no shared expert (shared_out is zero).
    Routing is per token (no capacity, no dropping): a token's result never depends on the rest of the batch.
    """

    def __init__(self, cfg: EVLMConfig):
        super().__init__()
        self.form = cfg.expert_form
        self.top_k = cfg.top_k
        D = cfg.d_visual
        self.ln = nn.LayerNorm(D)
        if self.form == "dense":
            self.ffn = MLP(D, cfg.vis_ffn_hidden)
            return
        E = cfg.n_experts
        h = cfg.vis_ffn_hidden if self.form == "eve" else cfg.expert_hidden
        self.shared = MLP(D, cfg.vis_ffn_hidden) if self.form == "evlm" else None
        self.router = nn.Linear(D, E, bias=False)
        self.w1 = nn.Parameter(torch.randn(E, D, h) * 0.02)  # experts stacked: expert e = (w1[e], b1[e], w2[e], b2[e])
        self.b1 = nn.Parameter(torch.zeros(E, h))
        self.w2 = nn.Parameter(torch.randn(E, h, D) * 0.02)
        self.b2 = nn.Parameter(torch.zeros(E, D))

    # --- the two exported pieces -------------------------------------------------------------
    def route(self, tokens):
        """router.onnx: tokens [N,D] -> router_logits [N,E], shared_out [N,D]."""
        h = self.ln(tokens)
        shared = self.shared(h) if self.shared is not None else torch.zeros_like(tokens)
        return self.router(h), shared

    def expert(self, tokens, expert_id):
        """experts.onnx: tokens [n,D], expert_id (int64 scalar) -> expert_out [n,D] = expert_{id}(LN tokens)."""
        h = self.ln(tokens)
        h = F.gelu(h @ self.w1[expert_id] + self.b1[expert_id])
        return h @ self.w2[expert_id] + self.b2[expert_id]

    # --- the whole layer (training and the PyTorch reference) ----------------------------------
    def forward(self, tokens):
        """tokens [...,D] -> (refined [...,D], aux) where aux holds the load-balancing loss and the loads."""
        shape = tokens.shape
        x = tokens.reshape(-1, shape[-1])                           # [N,D]
        if self.form == "dense":
            return (x + self.ffn(self.ln(x))).view(shape), {}
        logits, shared = self.route(x)                              # [N,E], [N,D]
        top_val, top_idx = logits.topk(self.top_k, dim=-1)          # [N,k] (ties: lower index first)
        w = top_val.softmax(dim=-1)                                 # [N,k] softmax over the top-k logits
        h = self.ln(x)
        hid = F.gelu(h.unsqueeze(0) @ self.w1 + self.b1.unsqueeze(1))      # [E,N,h] every expert (dense compute)
        out_all = (hid @ self.w2 + self.b2.unsqueeze(1)).transpose(0, 1)   # [N,E,D]
        picked = out_all.gather(1, top_idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # [N,k,D]
        routed = picked[:, 0] * w[:, 0:1]
        for j in range(1, self.top_k):
            routed = routed + picked[:, j] * w[:, j:j + 1]
        refined = x + shared + routed
        # Switch-style load-balancing loss: E * sum_e (fraction of routed slots to e) * (mean router prob of e)
        E = logits.shape[-1]
        probs = logits.softmax(dim=-1)
        counts = F.one_hot(top_idx, E).sum(dim=(0, 1)).float()     # [E] slots per expert
        frac = counts / counts.sum()
        lb = E * (frac * probs.mean(0)).sum()
        return refined.view(shape), {"lb_loss": lb, "expert_counts": counts.detach()}

    @torch.no_grad()
    def upcycle_from(self, dense: "VisualExperts"):
        """Initialise experts from a trained dense visual FFN so the layer computes exactly the same function.

        evlm: shared expert = the dense FFN; routed expert e = the e-th 1/E slice of its hidden units (fc weights
              copied), with a zero output projection, so sum_k w_k expert_k = 0 at the start.
        eve:  both experts = copies of the dense FFN (whichever is picked, the output is unchanged); expert 0 is
              the original FFN (kept frozen in stage 3), expert 1 the elastic vision FFN.
        """
        assert dense.form == "dense"
        self.ln.load_state_dict(dense.ln.state_dict())
        fc_w, fc_b = dense.ffn.fc.weight.t(), dense.ffn.fc.bias      # [D,h], [h]
        pr_w, pr_b = dense.ffn.proj.weight.t(), dense.ffn.proj.bias  # [h,D], [D]
        if self.form == "evlm":
            self.shared.load_state_dict(dense.ffn.state_dict())
            E, _, h = self.w1.shape
            assert E * h <= fc_w.shape[1], "expert slices must fit in the dense FFN"
            for e in range(E):
                self.w1[e] = fc_w[:, e * h:(e + 1) * h]
                self.b1[e] = fc_b[e * h:(e + 1) * h]
            self.w2.zero_()
            self.b2.zero_()
            self.router.weight.normal_(0.0, 0.02)
        else:
            for e in range(2):
                self.w1[e] = fc_w
                self.b1[e] = fc_b
                self.w2[e] = pr_w
                self.b2[e] = pr_b
            self.router.weight.normal_(0.0, 0.02)


# ----------------------------------------------------------------------------- 4. cross-attention memory

class CrossMemory(nn.Module):
    """visual_tokens [B,F,L,Q,D], frame_mask [B,F] -> per-layer keys/values and an additive mask.

    Frame-aware: each frame's tokens were resampled from that frame alone; a learned temporal embedding marks
    the frame index; text attends to the tokens of every valid frame (padding frames are masked out).
    Decoder layer i reads the tokens of tap tap_for_layer[i].
    """

    def __init__(self, cfg: EVLMConfig):
        super().__init__()
        self.tap_for_layer = cfg.tap_for_layer
        self.n_head = cfg.n_head
        D, d = cfg.d_visual, cfg.d_model
        self.frame_emb = nn.Parameter(torch.zeros(cfg.max_frames, D))
        # optional mixer: per tap, blocks of masked self-attention over the clip's F*Q tokens (frame-major)
        self.mixer = nn.ModuleList([
            nn.ModuleList([MixerBlock(D, cfg.resampler_heads, cfg.resampler_mlp) for _ in range(cfg.memory_mixer)])
            for _ in range(cfg.n_taps)]) if cfg.memory_mixer else None
        self.ln = nn.ModuleList([nn.LayerNorm(D) for _ in range(cfg.n_layer)])
        self.kv = nn.ModuleList([nn.Linear(D, 2 * d) for _ in range(cfg.n_layer)])

    def forward(self, visual_tokens, frame_mask):
        """xattn_kv.onnx: the memory tokens of every tap, then each decoder layer's keys and values."""
        return self.keys_values(*self.tokens(visual_tokens, frame_mask))

    def tokens(self, visual_tokens, frame_mask):
        """-> (per tap the memory tokens [B,M,D], frame-major, after the mixer; xattn_mask [B,M] 0 or -1e9)."""
        B, Fr, L, Q, D = visual_tokens.shape
        x = visual_tokens + self.frame_emb[:Fr].view(1, Fr, 1, 1, D)
        valid = frame_mask.to(visual_tokens.dtype).unsqueeze(-1).expand(B, Fr, Q).reshape(B, Fr * Q)
        xattn_mask = (1.0 - valid) * NEG_INF
        per_tap = [x[:, :, tap].reshape(B, Fr * Q, D) for tap in range(L)]
        if self.mixer is not None:
            bias = xattn_mask[:, None, None, :]                         # keys of padding frames are never read
            for tap, blocks in enumerate(self.mixer):
                for block in blocks:
                    per_tap[tap] = block(per_tap[tap], bias)
        return per_tap, xattn_mask

    def keys_values(self, per_tap, xattn_mask):
        ks, vs = [], []
        for i, tap in enumerate(self.tap_for_layer):
            k, v = self.kv[i](self.ln[i](per_tap[tap])).chunk(2, dim=-1)  # [B,M,d]
            ks.append(split_heads(k, self.n_head))                      # [B,H,M,dh]
            vs.append(split_heads(v, self.n_head))
        return torch.stack(ks, dim=1), torch.stack(vs, dim=1), xattn_mask  # [B,n_layer,H,M,dh] x2, [B,M]


class MixerBlock(Block):
    """A Block over memory tokens (forward(x, key mask bias)) whose two residual branches start at zero: EVLM
    zero-initialises their output projections, so a new mixer leaves the memory unchanged."""


# ----------------------------------------------------------------------------- 5. decoder

class GatedCrossAttention(nn.Module):
    """Flamingo block: x += tanh(g_attn) * XAttn(LN x, memory); x += tanh(g_ff) * FFN(LN x); gates start at 0."""

    def __init__(self, cfg: EVLMConfig):
        super().__init__()
        d = cfg.d_model
        self.n_head = cfg.n_head
        self.ln_attn = nn.LayerNorm(d)
        self.q = nn.Linear(d, d)
        self.proj = nn.Linear(d, d)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ln_ff = nn.LayerNorm(d)
        self.ff = MLP(d, cfg.xattn_ffn_hidden)
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x, k, v, mask):  # x [B,T,d], k/v [B,H,M,dh], mask [B,M]
        q = split_heads(self.q(self.ln_attn(x)), self.n_head)
        y = attend(q, k, v, mask[:, None, None, :])
        x = x + torch.tanh(self.attn_gate) * self.proj(merge_heads(y))
        return x + torch.tanh(self.ff_gate) * self.ff(self.ln_ff(x))


class CausalSelfAttention(nn.Module):
    """Self-attention over [past; new] keys; returns the new cache."""

    def __init__(self, cfg: EVLMConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x, bias, past_k=None, past_v=None):  # x [B,T,d], bias [B,1,T,S+T], past [B,H,S,dh]
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = split_heads(q, self.n_head), split_heads(k, self.n_head), split_heads(v, self.n_head)
        if past_k is not None:
            k = torch.cat([past_k, k], dim=2)  # [B,H,S+T,dh]
            v = torch.cat([past_v, v], dim=2)
        return self.proj(merge_heads(attend(q, k, v, bias))), k, v


class DecoderLayer(nn.Module):
    def __init__(self, cfg: EVLMConfig, cross: bool = True):
        super().__init__()
        self.xattn = GatedCrossAttention(cfg) if cross else None
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg.d_model, cfg.ffn_hidden)

    def forward(self, x, bias, past_k, past_v, xk, xv, xmask):
        if self.xattn is not None and xk is not None:
            x = self.xattn(x, xk, xv, xmask)
        a, k, v = self.attn(self.ln1(x), bias, past_k, past_v)
        x = x + a
        return x + self.mlp(self.ln2(x)), k, v


def self_attention_bias(attention_mask, T):
    """attention_mask [B,S+T] (1 attend, 0 padding) -> additive bias [B,1,T,S+T], causal within the new T tokens."""
    B, ST = attention_mask.shape
    j = torch.ones_like(attention_mask[0]).cumsum(0) - 1           # [S+T] key positions 0..S+T-1
    i = j[ST - T:]                                                   # [T] query positions S..S+T-1
    allowed = (j.unsqueeze(0) <= i.unsqueeze(1)).unsqueeze(0) & (attention_mask.unsqueeze(1) > 0)  # [B,T,S+T]
    zero = torch.zeros((), dtype=torch.float32)
    return torch.where(allowed, zero, zero + NEG_INF).unsqueeze(1)


class Decoder(nn.Module):
    """Word-level causal LM with a gated cross-attention block before each layer and a KV cache."""

    def __init__(self, cfg: EVLMConfig, cross: bool = True):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.max_text_len, cfg.d_model)
        self.layers = nn.ModuleList([DecoderLayer(cfg, cross) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.d_model)
        # lm head tied to wte

    def run(self, x, bias, past_k=None, past_v=None, xattn_k=None, xattn_v=None, xattn_mask=None):
        """x [B,T,d] embedded input; bias [B,1,T,S+T]; past_k/v [n_layer,B,H,S,dh] or None;
        xattn_k/v [B,n_layer,H,M,dh] or None (text only) -> logits [B,T,V], present_k/v [n_layer,B,H,S+T,dh]."""
        pk, pv = [], []
        for i, layer in enumerate(self.layers):
            x, k, v = layer(x, bias,
                            None if past_k is None else past_k[i], None if past_v is None else past_v[i],
                            None if xattn_k is None else xattn_k[:, i], None if xattn_v is None else xattn_v[:, i],
                            xattn_mask)
            pk.append(k)
            pv.append(v)
        logits = self.ln_f(x) @ self.wte.weight.t()                 # [B,T,V]
        return logits, torch.stack(pk), torch.stack(pv)

    def embed(self, input_ids, position_ids):
        return self.wte(input_ids) + self.wpe(position_ids)

    def forward(self, input_ids, position_ids, attention_mask, past_k, past_v, xattn_k, xattn_v, xattn_mask):
        """decoder.onnx: one graph for prefill (S may be 0) and single steps."""
        bias = self_attention_bias(attention_mask, input_ids.shape[1])
        return self.run(self.embed(input_ids, position_ids), bias, past_k, past_v, xattn_k, xattn_v, xattn_mask)


# ----------------------------------------------------------------------------- the whole model

# The output projections that get GPT-2's scaled init, per module type: the attention and MLP outputs of the ViT
# and memory-mixer blocks and of the decoder layers, the resampler's MLP output and the gated cross-attention's
# attention output. (The resampler's attention output and the cross-attention FFN's output keep the plain init.)
RESIDUAL_PROJECTIONS = {
    Block: ("attn.proj", "mlp.proj"),              # ViT blocks; MixerBlock (zeroed afterwards: it starts as the identity)
    PerceiverLayer: ("mlp.proj",),
    GatedCrossAttention: ("proj",),
    DecoderLayer: ("attn.proj", "mlp.proj"),
}


def residual_projections(module: nn.Module):
    """The weights of `module`'s own residual output projections (RESIDUAL_PROJECTIONS; none for other modules)."""
    for kind, paths in RESIDUAL_PROJECTIONS.items():
        if isinstance(module, kind):
            return [module.get_submodule(path).weight for path in paths]
    return []


class EVLM(nn.Module):
    def __init__(self, cfg: EVLMConfig):
        super().__init__()
        self.cfg = cfg
        self.vit = ViT(cfg)
        self.resampler = Resampler(cfg)
        self.experts = VisualExperts(cfg)
        self.memory = CrossMemory(cfg)
        self.decoder = Decoder(cfg)
        self.apply(self._init)
        # GPT-2's scaled init of the output projections that write into a residual stream (RESIDUAL_PROJECTIONS), in
        # parameter order (the order the random draws are taken in)
        scaled = {id(p) for m in self.modules() for p in residual_projections(m)}
        for p in self.parameters():
            if id(p) in scaled:
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))
        for m in self.modules():  # memory mixer blocks start as the identity
            if isinstance(m, MixerBlock):
                nn.init.zeros_(m.attn.proj.weight)
                nn.init.zeros_(m.mlp.proj.weight)

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def encode_frames(self, pixel_values, taps=None):
        """pixel_values [N,3,s,s] (images or flattened frames) -> (refined tokens [N,L,Q,D], aux).
        taps: the ViT's output for these frames when already known (training with a frozen ViT caches it)."""
        if taps is None:
            taps = self.vit(pixel_values)                           # [N,L,P,Dv]
        refined, aux = self.experts(self.resampler(taps))           # [N,L,Q,D]
        return refined, {**aux, "taps": taps}

    def encode(self, pixel_values, frame_mask, taps=None):
        """pixel_values [B,F,3,s,s], frame_mask [B,F] -> cross memory (xattn_k, xattn_v, xattn_mask), aux.

        Only valid frames go through the vision tower (as the TS side flattens valid frames into the batch);
        taps, if given, are the ViT's taps of those valid frames in that order [N valid,L,P,Dv]."""
        B, Fr = frame_mask.shape
        valid = frame_mask.reshape(-1) > 0
        tok, aux = self.encode_frames(pixel_values.reshape(B * Fr, *pixel_values.shape[2:])[valid], taps)
        full = tok.new_zeros(B * Fr, *tok.shape[1:])
        full[valid] = tok
        full = full.view(B, Fr, *tok.shape[1:])                    # [B,F,L,Q,D] refined visual tokens
        per_tap, xattn_mask = self.memory.tokens(full, frame_mask)
        # aux["taps"]: [N valid frames,L,P,Dv]; aux["memory_tokens"]: per tap [B,F*Q,D]
        return self.memory.keys_values(per_tap, xattn_mask), {**aux, "visual_tokens": full, "memory_tokens": per_tap}

    def param_groups(self):
        """Named parts used by the stage configs to freeze / unfreeze."""
        dec_text = [p for n, p in self.decoder.named_parameters() if ".xattn." not in n]
        dec_x = [p for n, p in self.decoder.named_parameters() if ".xattn." in n and not n.endswith("_gate")]
        gates = [p for n, p in self.decoder.named_parameters() if n.endswith("_gate")]
        return {
            "vit": list(self.vit.parameters()),
            "resampler": list(self.resampler.parameters()),
            "experts": list(self.experts.parameters()),
            "memory": list(self.memory.parameters()),
            "xattn": dec_x,
            "gates": gates,
            "decoder": dec_text,
        }


# ----------------------------------------------------------------------------- baseline: LLaVA-style

class LlavaDecoder(nn.Module):
    """Same-size decoder without cross-attention: visual tokens are projected and prepended to the text.

    forward(visual_embeds [B,Mv,D], input_ids [B,T], position_ids [B,T], attention_mask [B,S+Mv+T], past_k/v
    [n_layer,B,H,S,dh]) -> logits [B,T,V] (text positions only), present_k/v [n_layer,B,H,S+Mv+T,dh].
    At prefill Mv = F*L*Q visual tokens (frame, tap, query order); at later steps Mv = 0.
    """

    def __init__(self, cfg: EVLMConfig):
        super().__init__()
        self.cfg = cfg
        self.proj_ln = nn.LayerNorm(cfg.d_visual)
        self.proj = nn.Linear(cfg.d_visual, cfg.d_model)
        self.decoder = Decoder(cfg, cross=False)

    def forward(self, visual_embeds, input_ids, position_ids, attention_mask, past_k, past_v):
        vis = self.proj(self.proj_ln(visual_embeds))                # [B,Mv,d]
        txt = self.decoder.embed(input_ids, position_ids)           # [B,T,d]
        x = torch.cat([vis, txt], dim=1)                            # [B,Mv+T,d]
        bias = self_attention_bias(attention_mask, x.shape[1])
        logits, pk, pv = self.decoder.run(x, bias, past_k, past_v)
        return logits[:, vis.shape[1]:], pk, pv


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(path, model: EVLM, **extra):
    torch.save({"config": model.cfg.to_dict(), "model": model.state_dict(), **extra}, path)


def load_checkpoint(path, **overrides):
    ck = torch.load(path, map_location="cpu")
    cfg = EVLMConfig(**{**ck["config"], **overrides})
    model = EVLM(cfg)
    model.load_state_dict(ck["model"])
    return model, ck


# ----------------------------------------------------------------------------- greedy decoding (the reference loop)

@torch.no_grad()
def greedy_generate(decoder: Decoder, xattn_k, xattn_v, xattn_mask, prompts, max_new_tokens=32, eos_id=2, pad_id=0,
                    min_new_tokens=0):
    """Greedy decoding with a KV cache, exactly as the TS side runs decoder.onnx.

    prompts: list of token-id lists (left padded here). Prefill runs the whole prompt with an empty cache
    (S = 0); each step feeds the last token with position = previous position + 1 and attention_mask extended
    by a 1. Returns per prompt the generated ids up to and including <eos> (or max_new_tokens ids).
    Argmax ties go to the lowest id. min_new_tokens: while fewer tokens than this have been generated, <eos> is
    never chosen (its logit counts as -inf), so with min_new_tokens = max_new_tokens every prompt gets exactly
    max_new_tokens tokens (the manifest's generation.min_new_tokens, for benchmarks of a random-weight model)."""
    B, T = len(prompts), max(len(p) for p in prompts)
    dev = decoder.wte.weight.device
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, T - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[b, T - len(p):] = 1
    ids, mask = ids.to(dev), mask.to(dev)
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    cfg = decoder.cfg

    def pick(logits, generated):  # [B,V] -> [B]
        if generated < min_new_tokens:
            logits = logits.clone()
            logits[:, eos_id] = float("-inf")
        return logits.argmax(-1)

    past = torch.zeros(cfg.n_layer, B, cfg.n_head, 0, cfg.head_dim, device=dev)
    logits, pk, pv = decoder(ids, pos, mask, past, past, xattn_k, xattn_v, xattn_mask)
    nxt = pick(logits[:, -1], 0)
    step_pos = pos[:, -1:] + 1
    out = [[] for _ in range(B)]
    done = [False] * B
    for step in range(max_new_tokens):
        for b in range(B):
            if not done[b]:
                out[b].append(int(nxt[b]))
                done[b] = int(nxt[b]) == eos_id
        if all(done) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.long, device=dev)], dim=1)
        logits, pk, pv = decoder(nxt[:, None], step_pos, mask, pk, pv, xattn_k, xattn_v, xattn_mask)
        nxt = pick(logits[:, -1], step + 1)
        step_pos = step_pos + 1
    return out
