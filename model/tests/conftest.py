import os
import sys

import pytest
import torch

MODEL_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(MODEL_DIR)
sys.path.insert(0, MODEL_DIR)
torch.set_num_threads(1)

from model import EVLMConfig  # noqa: E402

VOCAB = os.path.join(REPO, "fixtures", "scenes", "vocab.txt")

# A tiny configuration with every mechanism of the real one (taps, queries, experts, memory, gates), smaller and
# faster than the reference model's defaults: the 3-conv stem, queries on a sqrt(Q) grid, no memory mixer (the tests
# that need the deep stem or the mixer ask for them).
TINY = dict(vit_stem="conv", vit_dim=32, vit_layers=3, taps=(1, 3), vit_heads=2, vit_mlp=64, n_query=4, d_visual=32,
            resampler_heads=2, resampler_mlp=64, resampler_grid=0, vis_ffn_hidden=64, n_experts=4, top_k=2,
            expert_hidden=16, memory_mixer=0, d_model=48, n_layer=3, n_head=2, ffn_hidden=96, xattn_ffn_hidden=48,
            tap_for_layer=(0, 1, 1))


def tiny(**kw):
    cfg = {**TINY, **kw}
    if cfg.get("expert_form") == "eve":
        cfg.update(n_experts=2, top_k=1)
    return EVLMConfig(**cfg)


@pytest.fixture
def seeded():
    torch.manual_seed(0)
