"""Shapes per stage, zero-initialised gates, frame-aware memory, batch-independent routing, upcycling, KV cache."""
import pytest
import torch

from conftest import tiny
from model import EVLM, NEG_INF, LlavaDecoder, VisualExperts, greedy_generate


def pixels(B, F=None):
    return torch.randn(B, 3, 64, 64) if F is None else torch.randn(B, F, 3, 64, 64)


def test_shapes_stage1_text_only(seeded):
    m = EVLM(tiny(expert_form="dense"))
    cfg = m.cfg
    ids = torch.randint(5, 65, (2, 7))
    pos = torch.arange(7).repeat(2, 1)
    empty = torch.zeros(cfg.n_layer, 2, cfg.n_head, 0, cfg.head_dim)
    logits, k, v = m.decoder.run(m.decoder.embed(ids, pos), torch.zeros(2, 1, 7, 7), None, None)
    assert logits.shape == (2, 7, 65)
    assert k.shape == v.shape == (cfg.n_layer, 2, cfg.n_head, 7, cfg.head_dim)
    assert empty.numel() == 0


@pytest.mark.parametrize("form", ["dense", "evlm", "eve"])
def test_shapes_stages_2_and_3(seeded, form):
    m = EVLM(tiny(expert_form=form))
    cfg = m.cfg
    L, P, Q, D, n, H, dh = cfg.n_taps, cfg.n_patches, cfg.n_query, cfg.d_visual, cfg.n_layer, cfg.n_head, cfg.head_dim
    taps = m.vit(pixels(3))
    assert taps.shape == (3, L, P, cfg.vit_dim)
    tok = m.resampler(taps)
    assert tok.shape == (3, L, Q, D)
    refined, aux = m.experts(tok)
    assert refined.shape == tok.shape
    if form != "dense":
        logits, shared = m.experts.route(tok.reshape(-1, D))
        assert logits.shape == (3 * L * Q, cfg.n_experts) and shared.shape == (3 * L * Q, D)
        assert m.experts.expert(tok.reshape(-1, D)[:5], torch.tensor(1)).shape == (5, D)
        assert aux["lb_loss"].dim() == 0 and aux["expert_counts"].sum() == 3 * L * Q * cfg.top_k
        if form == "eve":
            assert torch.equal(shared, torch.zeros_like(shared))
    # video: 2 clips of up to 4 frames, the second with 2 valid frames
    fm = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    (xk, xv, xm), _ = m.encode(pixels(2, 4), fm)
    assert xk.shape == xv.shape == (2, n, H, 4 * Q, dh) and xm.shape == (2, 4 * Q)
    ids = torch.randint(5, 65, (2, 5))
    pos = torch.arange(5).repeat(2, 1)
    empty = torch.zeros(n, 2, H, 0, dh)
    logits, pk, pv = m.decoder(ids, pos, torch.ones(2, 5, dtype=torch.long), empty, empty, xk, xv, xm)
    assert logits.shape == (2, 5, 65) and pk.shape == (n, 2, H, 5, dh)


def test_gates_start_at_zero(seeded):
    m = EVLM(tiny(expert_form="dense"))
    for layer in m.decoder.layers:
        assert layer.xattn.attn_gate.item() == 0.0 and layer.xattn.ff_gate.item() == 0.0
    # so a fresh model's decoder ignores the image: same logits as the text-only language model
    (xk, xv, xm), _ = m.encode(pixels(2, 1), torch.ones(2, 1))
    ids = torch.randint(5, 65, (2, 6))
    pos = torch.arange(6).repeat(2, 1)
    x = m.decoder.embed(ids, pos)
    bias = torch.zeros(2, 1, 6, 6)
    with_img, _, _ = m.decoder.run(x, bias, None, None, xk, xv, xm)
    text_only, _, _ = m.decoder.run(x, bias)
    assert torch.equal(with_img, text_only)


@pytest.mark.parametrize("mixer", [0, 1])
def test_frame_aware_memory(seeded, mixer):
    m = EVLM(tiny(expert_form="dense", memory_mixer=mixer)).eval()
    torch.nn.init.normal_(m.memory.frame_emb, 0, 1.0)
    for p in m.memory.parameters():  # a trained mixer: its residual branches are not zero any more
        if p.dim() == 2 and mixer:
            torch.nn.init.normal_(p, 0, 0.2)
    for layer in m.decoder.layers:
        layer.xattn.attn_gate.data.fill_(1.0)
    Q, D = m.cfg.n_query, m.cfg.d_visual
    px = pixels(1, 3)
    with torch.no_grad():
        tok = lambda p: m.encode_frames(p.reshape(-1, 3, 64, 64))[0].view(1, 3, m.cfg.n_taps, Q, D)
        a = tok(px)
        px2 = px.clone()
        px2[0, 2] = torch.randn(3, 64, 64)  # change frame 2 only
        b = tok(px2)
        # each frame's tokens come from that frame alone
        assert torch.equal(a[:, :2], b[:, :2]) and not torch.allclose(a[:, 2], b[:, 2])
        # memory is frame-major, the mask hides padding frames: 0 for valid tokens, NEG_INF for padding
        fm = torch.tensor([[1, 1, 0]])
        k, v, mask = m.memory(a, fm)
        assert torch.equal(mask, torch.tensor([[0.0] * (2 * Q) + [NEG_INF] * Q]))
        k2, v2, _ = m.memory(b, fm)
        assert torch.equal(k[..., :2 * Q, :], k2[..., :2 * Q, :])
        # text attends to all valid frames, and a padding frame's content changes nothing
        ids, pos = torch.tensor([[1, 20, 30]]), torch.tensor([[0, 1, 2]])
        am = torch.ones(1, 3, dtype=torch.long)
        e = torch.zeros(m.cfg.n_layer, 1, m.cfg.n_head, 0, m.cfg.head_dim)
        out1 = m.decoder(ids, pos, am, e, e, k, v, mask)[0]
        out2 = m.decoder(ids, pos, am, e, e, k2, v2, mask)[0]
        assert torch.allclose(out1, out2, atol=1e-6)
        k3, v3, m3 = m.memory(a, torch.tensor([[1, 1, 1]]))
        assert not torch.allclose(out1, m.decoder(ids, pos, am, e, e, k3, v3, m3)[0])
        # frame order is visible (temporal embedding): swapping two frames changes the memory
        ks, _, _ = m.memory(a[:, [1, 0, 2]], torch.ones(1, 3))
        assert not torch.allclose(ks[..., :Q, :], k[..., Q:2 * Q, :])
        if mixer:  # the mixer lets a frame's tokens see the other valid frames (motion) ...
            k4, _, _ = m.memory(b, torch.ones(1, 3))
            k5, _, _ = m.memory(a, torch.ones(1, 3))
            assert not torch.allclose(k4[..., :Q, :], k5[..., :Q, :])


def test_memory_mixer_starts_as_the_identity(seeded):
    m = EVLM(tiny(memory_mixer=2)).eval()
    plain = EVLM(tiny()).eval()
    plain.memory.load_state_dict({k: v for k, v in m.memory.state_dict().items() if ".mixer." not in f".{k}"})
    vt, fm = torch.randn(2, 3, m.cfg.n_taps, m.cfg.n_query, m.cfg.d_visual), torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    with torch.no_grad():
        for a, b in zip(m.memory(vt, fm), plain.memory(vt, fm)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("form", ["evlm", "eve"])
def test_routing_does_not_depend_on_the_batch(seeded, form):
    ex = VisualExperts(tiny(expert_form=form)).eval()
    torch.nn.init.normal_(ex.router.weight, 0, 1.0)
    torch.nn.init.normal_(ex.w2, 0, 0.1)
    x = torch.randn(6, 32)
    with torch.no_grad():
        alone, _ = ex(x)
        batch_a, _ = ex(torch.cat([torch.randn(50, 32), x, torch.randn(3, 32)]))
        batch_b, _ = ex(torch.cat([x[3:], 10 * torch.randn(200, 32), x[:3]]))
        la, _ = ex.route(x)
        lb, _ = ex.route(torch.cat([torch.randn(9, 32), x]))
    assert torch.allclose(alone, batch_a[50:56], atol=1e-6)
    assert torch.allclose(alone, torch.cat([batch_b[-3:], batch_b[:3]]), atol=1e-6)
    assert torch.equal(la.topk(ex.top_k).indices, lb[9:].topk(ex.top_k).indices)


def test_router_and_expert_pieces_compose_to_the_layer(seeded):
    ex = VisualExperts(tiny(expert_form="evlm")).eval()
    torch.nn.init.normal_(ex.w2, 0, 0.1)
    x = torch.randn(20, 32)
    with torch.no_grad():
        full, aux = ex(x)
        logits, shared = ex.route(x)
        val, idx = logits.topk(ex.top_k)
        w = val.softmax(-1)
        manual = x + shared
        routed = sum(w[:, j:j + 1] * torch.stack([ex.expert(x[t:t + 1], idx[t, j])[0] for t in range(20)]) for j in range(ex.top_k))
        manual = manual + routed
    assert torch.allclose(full, manual, atol=1e-6)
    assert abs(float(aux["lb_loss"])) > 0


@pytest.mark.parametrize("form", ["evlm", "eve"])
def test_upcycling_preserves_the_trained_function(seeded, form):
    dense = VisualExperts(tiny(expert_form="dense")).eval()
    torch.nn.init.normal_(dense.ffn.proj.weight, 0, 0.1)
    moe = VisualExperts(tiny(expert_form=form)).eval()
    moe.upcycle_from(dense)
    x = torch.randn(30, 32)
    with torch.no_grad():
        assert torch.allclose(dense(x)[0], moe(x)[0], atol=1e-6)


def test_kv_cache_equals_a_full_pass(seeded):
    m = EVLM(tiny(expert_form="dense")).eval()
    for layer in m.decoder.layers:
        layer.xattn.attn_gate.data.fill_(0.7)
        layer.xattn.ff_gate.data.fill_(0.7)
    (xk, xv, xm), _ = m.encode(pixels(2, 1), torch.ones(2, 1))
    prompts = [[1], [1, 30, 40, 5, 4]]
    with torch.no_grad():
        gen = greedy_generate(m.decoder, xk, xv, xm, prompts, max_new_tokens=6)
        # recompute each sequence without a cache, one argmax at a time
        for b, p in enumerate(prompts):
            seq = list(p)
            for t in gen[b]:
                n = len(seq)
                e = torch.zeros(m.cfg.n_layer, 1, m.cfg.n_head, 0, m.cfg.head_dim)
                lg = m.decoder(torch.tensor([seq]), torch.arange(n)[None], torch.ones(1, n, dtype=torch.long),
                               e, e, xk[b:b + 1], xv[b:b + 1], xm[b:b + 1])[0]
                assert int(lg[0, -1].argmax()) == t
                seq.append(t)


def test_llava_baseline_shapes(seeded):
    cfg = tiny()
    llava = LlavaDecoder(cfg).eval()
    n, H, dh = cfg.n_layer, cfg.n_head, cfg.head_dim
    vis = torch.randn(2, cfg.n_taps * cfg.n_query, cfg.d_visual)
    Mv = vis.shape[1]
    e = torch.zeros(n, 2, H, 0, dh)
    lg, k, v = llava(vis, torch.randint(5, 65, (2, 3)), torch.arange(3).repeat(2, 1),
                     torch.ones(2, Mv + 3, dtype=torch.long), e, e)
    assert lg.shape == (2, 3, 65) and k.shape == (n, 2, H, Mv + 3, dh)
    lg2, k2, _ = llava(torch.zeros(2, 0, cfg.d_visual), torch.randint(5, 65, (2, 1)), torch.full((2, 1), 3),
                       torch.ones(2, Mv + 4, dtype=torch.long), k, v)
    assert lg2.shape == (2, 1, 65) and k2.shape == (n, 2, H, Mv + 4, dh)


def test_resampler_grid_prior_and_deep_stem(seeded):
    from model import spatial_prior
    b = spatial_prior(16, 8, 1.0, grid=3)                  # 9 queries on the 3x3 cells, 7 on the whole image
    assert b.shape == (16, 64) and torch.all(b[9:] == 0)
    assert int(b[4].argmax()) in (27, 28, 35, 36)           # the centre cell's query peaks on the centre patches
    assert int(b[0].argmax()) == 9                          # top-left cell: centre at patch (1.33, 1.33) -> (1, 1)
    m = EVLM(tiny(vit_stem="deep", expert_form="dense"))
    assert m.vit(torch.randn(2, 3, 64, 64)).shape == (2, 2, 64, 32)


def test_cell_directions_labels_the_cell_each_frame_holds():
    from data import cell_directions
    row = {"num_frames": 2, "scene": {"width": 90, "height": 90, "objects": [
        {"direction": "right", "path": [[10, 10], [40, 10]]}, {"direction": "up", "path": [[80, 80], [80, 70]]}]}}
    out = cell_directions(row, 3)
    assert out.shape == (3, 9)
    assert out[0].tolist() == [4, 0, 0, 0, 0, 0, 0, 0, 1]   # frame 0: cells (0,0) right, (2,2) up
    assert out[1].tolist() == [0, 4, 0, 0, 0, 0, 0, 0, 1]   # frame 1: the first object moved to cell (0,1)
    assert out[2].tolist() == [-100] * 9                    # past the clip's end: ignored


def test_cell_order_labels_each_object_by_its_place_in_the_caption():
    from data import cell_order
    # objects in caption order (left to right at the first frame); the second one passes through the first's cell
    row = {"num_frames": 2, "scene": {"width": 90, "height": 90, "objects": [
        {"direction": "down", "path": [[10, 10], [10, 40]]}, {"direction": "left", "path": [[40, 70], [10, 70]]}]}}
    out = cell_order(row, 3)
    assert out[0].tolist() == [1, 0, 0, 0, 0, 0, 0, 2, 0]
    assert out[1].tolist() == [0, 0, 0, 1, 0, 0, 2, 0, 0]
    assert out[2].tolist() == [-100] * 9


def test_cell_groups_marks_alone_first_and_later_members():
    from data import cell_groups
    obj = lambda r, c, size="small", color="red", shape="star": dict(row=r, col=c, size=size, color=color, shape=shape,
                                                                      x=30 * c + 15, y=30 * r + 15)
    # "two small red stars and a large red star in the center": cells (0,2) and (2,0) form a group of two, its first
    # member in reading order (the scene's order) is (0,2); the large star is alone
    scene = {"width": 90, "height": 90, "objects": [obj(0, 2), obj(1, 1, size="large"), obj(2, 0)]}
    assert cell_groups({"scene": scene}).tolist() == [[0, 0, 2, 0, 1, 0, 3, 0, 0]]
    three = {"width": 90, "height": 90, "objects": [obj(0, 0, color="blue"), obj(0, 1, color="blue"), obj(2, 2, color="blue")]}
    assert cell_groups({"scene": three}).tolist() == [[4, 5, 0, 0, 0, 0, 0, 0, 5]]
    one = {"width": 90, "height": 90, "objects": [obj(1, 1)]}
    assert cell_groups({"scene": one}).tolist() == [[0, 0, 0, 0, 1, 0, 0, 0, 0]]
    assert cell_groups({"scene": one}, grid=2).tolist() == [[0, 0, 0, 1]]  # other grids: the cell of the centre


def test_cell_objects_label_shape_and_color_in_images_and_clips():
    from data import COLORS, SHAPES, cell_objects
    image = {"scene": {"width": 90, "height": 90, "objects": [
        {"shape": "star", "color": "blue", "size": "small", "row": 0, "col": 1, "x": 45, "y": 15}]}}
    star_blue = 1 + SHAPES.index("star") * len(COLORS) + COLORS.index("blue")
    assert cell_objects(image, 1).tolist() == [[0, star_blue, 0, 0, 0, 0, 0, 0, 0]]
    clip = {"num_frames": 2, "scene": {"width": 90, "height": 90, "objects": [
        {"shape": "circle", "color": "red", "direction": "right", "path": [[10, 10], [40, 10]]}]}}
    assert cell_objects(clip, 3).tolist() == [[1, 0, 0, 0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0, 0, 0], [-100] * 9]


def test_the_defaults_are_the_shipped_model_and_presets_vary_them():
    import json
    import os
    from conftest import REPO
    from model import PRESETS, EVLMConfig, preset, spread_taps, taps_by_depth
    shipped = json.load(open(os.path.join(REPO, "fixtures", "models", "evlm-tiny", "manifest.json")))["config"]
    assert EVLMConfig().to_dict() == shipped
    assert preset("evlm-tiny").to_dict() == shipped
    assert preset("evlm-tiny-eve").to_dict() == {**shipped, "expert_form": "eve", "n_experts": 2, "top_k": 1}
    # the base model taps and maps its taps by the reference model's rules
    assert spread_taps(6, 3) == (2, 4, 6) and taps_by_depth(4, 3) == (0, 1, 2, 2)
    base = preset("evlm-base")
    assert base.taps == (3, 6, 9, 12) and base.tap_for_layer == (0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3)
    assert (base.image_size, base.patch_size, base.vit_dim, base.vit_layers, base.n_query, base.d_model, base.n_layer,
            base.n_head, base.n_experts, base.top_k, base.vocab_size) == (224, 16, 768, 12, 64, 768, 12, 12, 8, 2, 32000)
    assert preset("evlm-base", n_layer=2, tap_for_layer=(0, 3)).n_layer == 2
    with pytest.raises(ValueError, match="unknown preset"):
        preset("evlm-huge")
    assert set(PRESETS) == {"evlm-tiny", "evlm-tiny-eve", "evlm-base"}


def test_residual_projections_get_the_scaled_init_by_module():
    """The explicit rule (model.RESIDUAL_PROJECTIONS) picks exactly the projections the committed model was initialised
    with: every block's attention and MLP outputs, the resampler's MLP output and the gated cross-attention's output."""
    import math
    from model import EVLMConfig, residual_projections
    m = EVLM(EVLMConfig())
    ids = {id(p) for mod in m.modules() for p in residual_projections(mod)}
    names = sorted(n for n, p in m.named_parameters() if id(p) in ids)
    expected = sorted(
        [f"vit.blocks.{i}.{k}.proj.weight" for i in range(6) for k in ("attn", "mlp")]
        + [f"resampler.layers.{t}.mlp.proj.weight" for t in range(3)]
        + [f"memory.mixer.{t}.0.{k}.proj.weight" for t in range(3) for k in ("attn", "mlp")]
        + [f"decoder.layers.{i}.{k}.proj.weight" for i in range(4) for k in ("xattn", "attn", "mlp")])
    assert names == expected
    std = 0.02 / math.sqrt(2 * m.cfg.n_layer)
    for n, p in m.named_parameters():
        if n in expected and ".mixer." not in n:  # the mixer's projections are zeroed after (it starts as the identity)
            assert abs(float(p.std()) - std) < 0.25 * std, n
        elif n.endswith("xattn.ff.proj.weight") or (n.startswith("resampler.layers.") and n.endswith(".proj.weight") and ".mlp." not in n):
            assert abs(float(p.std()) - 0.02) < 0.25 * 0.02, n
