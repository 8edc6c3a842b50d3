"""TR_TiledSampling on real ComfyUI with the tiny SD1.5-shaped model and ControlNet."""
from __future__ import annotations

import pytest
import torch

from tiled_env import FRAMES, H, OV, TILE, W, _cn, _mods, _rel, _sample, _tiled, probed_tiled, tiled_env  # noqa: F401


@pytest.fixture
def env(tiled_env):
    return tiled_env


def test_one_tile_equals_untiled_ksampler(env):
    pos, neg = _cn(env)
    base = _sample(env["model"], pos, neg, env["latent"], env["noise"], steps=2)
    one = _sample(_tiled(env["model"], tile=max(H, W) + 8, overlap=8), pos, neg, env["latent"], env["noise"], steps=2)
    assert _rel(one, base) <= 1e-6


def test_model_runs_per_tile_on_all_frames(env):
    """Every UNet call holds one tile on all frames of both CFG chunks, and names its tile."""
    from temporal_restore.nodes._patching import install_attn1_patch

    seen = []

    def probe(n, context, value, extra_options, *args, **kwargs):
        if extra_options["block"] == ("input", 1):
            seen.append((tuple(extra_options["original_shape"]), _mods()[0].tile_of(extra_options)))
        return n, context, value

    m = _tiled(env["model"])
    install_attn1_patch(m, "test_probe", probe)
    out = _sample(m, env["pos"], env["neg"], env["latent"], env["noise"])
    assert torch.isfinite(out).all()
    tiles = [t for _, t in seen]
    assert len(seen) == 6 and len(set(tiles)) == 6  # 2 rows x 3 columns, one call each (cond+uncond batched)
    for shape, t in seen:
        assert shape == (2 * FRAMES, 4, TILE, TILE) and (t.h, t.w) == (TILE, TILE)
    assert {(t.y, t.x) for t in tiles} == {(y, x) for y in (0, 8) for x in (0, 12, 16)}


def test_tile_interior_equals_the_crop_sampled_alone_with_its_hint_crop(env):
    """Where only tile (0, 0) has weight (rows 0..8, columns 0..12), the tiled run equals sampling the
    cropped latent alone with the cropped ControlNet hint: crops, placement and the ControlNet hint cut
    are right. The whole hint squeezed into the tile (no crop) gives another result."""
    pos, neg = _cn(env)
    tiled = _sample(_tiled(env["model"]), pos, neg, env["latent"], env["noise"])
    crop = (slice(None), slice(None), slice(0, TILE), slice(0, TILE))
    pos_c, neg_c = _cn(env, env["hint"][:, :TILE * 8, :TILE * 8])
    alone = _sample(env["model"], pos_c, neg_c, env["latent"][crop], env["noise"][crop])
    squeezed = _sample(env["model"], pos, neg, env["latent"][crop], env["noise"][crop])
    assert _rel(tiled[..., :8, :12], alone[..., :8, :12]) <= 1e-7
    assert _rel(squeezed[..., :8, :12], alone[..., :8, :12]) > 1e-6  # the tiny ControlNet reacts weakly
    untiled = _sample(env["model"], pos, neg, env["latent"], env["noise"])
    assert _rel(tiled, untiled) > 1e-3  # tiling does change a receptive-field-wide model


def test_install_twice_replaces_and_original_untouched(env):
    import copy

    model = env["model"]
    before = copy.deepcopy(model.model_options)
    once = _tiled(model)
    twice = _tiled(_tiled(model, 8, 2))
    wrappers = twice.model_options["transformer_options"]["wrappers"]["calc_cond_batch"]
    assert list(wrappers) == ["temporal_restore.tiled_sampling"] and len(wrappers["temporal_restore.tiled_sampling"]) == 1
    a = _sample(once, env["pos"], env["neg"], env["latent"], env["noise"])
    b = _sample(twice, env["pos"], env["neg"], env["latent"], env["noise"])
    assert torch.equal(a, b)
    assert model.model_options == before


def test_area_conditioning_is_refused_by_name_and_untiled_sampling_still_takes_it(env):
    """ConditioningSetArea's box is in whole-frame latent cells, which a tile cannot honour: refused with a message
    naming the input and the alternative; the same conditioning samples untiled (the refusal is the tiling's)."""
    area = [[t, {**d, "area": (8, 8, 0, 0), "strength": 1.0, "set_area_to_bounds": False}] for t, d in env["pos"]]
    with pytest.raises(ValueError, match=r"^conditioning: area conditioning .*ConditioningSetMask"):
        _sample(_tiled(env["model"]), area, env["neg"], env["latent"], env["noise"])
    out = _sample(env["model"], area, env["neg"], env["latent"], env["noise"])
    assert out.shape == env["latent"].shape and torch.isfinite(out).all()


@pytest.mark.parametrize("tile_size,overlap,name", [(100, 8, "tile_size"), (32, 8, "tile_size"),
                                                    (128, 12, "overlap"), (128, 128, "overlap")])
def test_bad_sizes_name_the_input(env, tile_size, overlap, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        _mods()[1].TiledSampling.execute(env["model"], tile_size, overlap, "cosine")


def test_swcfa_invariants_per_tile(env):
    """SW-CFA on tiles: radius 0 == tiled stock; identical frames == tiled stock; radius 2 changes it."""
    sw = _mods()[2]
    base = _sample(_tiled(env["model"]), env["pos"], env["neg"], env["latent"], env["noise"])
    r0 = _sample(_tiled(sw.install_sw_cfa(env["model"], "sw_cfa", 0)), env["pos"], env["neg"], env["latent"],
                 env["noise"])
    r2 = _sample(_tiled(sw.install_sw_cfa(env["model"], "sw_cfa", 2)), env["pos"], env["neg"], env["latent"],
                 env["noise"])
    assert _rel(r0, base) <= 1e-6
    assert _rel(r2, base) > 1e-3
    lat, noise = env["latent"][:1].repeat(FRAMES, 1, 1, 1), env["noise"][:1].repeat(FRAMES, 1, 1, 1)
    same = _sample(_tiled(env["model"]), env["pos"], env["neg"], lat, noise)
    same_sw = _sample(_tiled(sw.install_sw_cfa(env["model"], "sw_cfa", 2)), env["pos"], env["neg"], lat, noise)
    assert _rel(same_sw, same) <= 1e-5


def _same_frames(env):
    return env["latent"][:1].repeat(FRAMES, 1, 1, 1), env["noise"][:1].repeat(FRAMES, 1, 1, 1)


def test_token_merge_invariants_per_tile(env):
    """Token merging on tiles: ratio 0 == tiled stock; identical frames at ratio 1 == tiled stock
    (merged attention over the keyframe equals per-frame attention); on a real clip it changes the result."""
    from temporal_restore.nodes import token_merge as tm

    def merged(model, ratio):
        return _tiled(tm.install_token_merge(model, tm.TokenMergeConfig(None, ratio, chunk_size=FRAMES)))

    base = _sample(_tiled(env["model"]), env["pos"], env["neg"], env["latent"], env["noise"])
    assert torch.equal(_sample(merged(env["model"], 0.0), env["pos"], env["neg"], env["latent"], env["noise"]), base)
    on = _sample(merged(env["model"], 0.75), env["pos"], env["neg"], env["latent"], env["noise"])
    assert _rel(on, base) > 1e-3
    lat, noise = _same_frames(env)
    same = _sample(_tiled(env["model"]), env["pos"], env["neg"], lat, noise)
    # ratio 1: only the keyframe's tokens are left (at 0.75 duplicated tokens would reweight the softmax)
    assert _rel(_sample(merged(env["model"], 1.0), env["pos"], env["neg"], lat, noise), same) <= 1e-5


def test_flow_window_is_cut_to_the_tile(env):
    """Token merge / latent warp read a FLOW through flow_window: on a tile it is the tile's part of the
    full-frame flow (tile-local coordinates), not the whole flow squeezed into the tile."""
    import threading

    from temporal_restore.nodes._flow_window import flow_window
    from temporal_restore.pipelines import tiling

    g = torch.Generator().manual_seed(1)
    from temporal_restore.pipelines.flow import FlowField
    fwd = torch.randn(FRAMES - 1, 2, H * 2, W * 2, generator=g)
    z = torch.zeros(FRAMES - 1, 1, H * 2, W * 2)
    holder = type("H", (), {})()
    holder.flow = FlowField(forward=fwd, backward=-fwd, occlusion_fwd=z, occlusion_bwd=z, confidence_fwd=z + 1,
                            confidence_bwd=z + 1, height=H * 2, width=W * 2)
    holder._windows, holder._lock = {}, threading.Lock()
    tile = tiling.tile_grid(H, W, TILE, OV)[-1]
    win, lo = flow_window(holder, [0, 1, 2], 8, 8, torch.device("cpu"), tile)
    assert lo == 0 and (win.height, win.width) == (8, 8)
    # the full flow on the latent grid, cut to the tile (16x16 cells), then to the 8x8 token grid
    cut = holder.flow.resized(H, W).forward[..., tile.rows, tile.cols]
    assert torch.allclose(win.forward, tiling.crop_flow(holder.flow, tile).resized(8, 8).forward)
    assert torch.allclose(tiling.crop_flow(holder.flow, tile).forward, cut)
    whole, _ = flow_window(holder, [0, 1, 2], 8, 8, torch.device("cpu"))
    assert not torch.allclose(whole.forward, win.forward, atol=1e-3)


def test_slr_per_tile(env):
    """SLR on tiles: identical frames before trajectories == tiled stock; with trajectories, each of the
    6 tiles gets its own trajectories (x0 and flow cut to the tile), and the run stays finite."""
    from temporal_restore.nodes import slr_attention

    lat, noise = _same_frames(env)
    same = _sample(_tiled(env["model"]), env["pos"], env["neg"], lat, noise)
    m, state = slr_attention.install_slr(env["model"], trajectory_start=1.0)
    out = _sample(_tiled(m), env["pos"], env["neg"], lat, noise)
    assert state.trajectory_calls == 0 and _rel(out, same) <= 1e-5
    m, state = slr_attention.install_slr(env["model"], trajectory_start=0.0)
    regions = set()
    record = state.trajectories

    def spy(k, frame_index, chunk, hw, frame_key, region=None):
        regions.add(region)
        return record(k, frame_index, chunk, hw, frame_key, region)

    state.trajectories = spy
    out = _sample(_tiled(m), env["pos"], env["neg"], env["latent"], env["noise"], steps=2)
    assert torch.isfinite(out).all() and state.trajectory_calls > 0
    assert len(regions) == 6 and None not in regions


def test_latent_warp_on_tiles_sees_full_frames(env):
    """Latent warp is a post-CFG step: with tiling it still gets the whole frame (motion across tile
    borders is not lost); fraction 0 == tiled stock."""
    from temporal_restore.nodes import latent_warp as lw
    from temporal_restore.nodes._patching import install_post_cfg

    shapes = []

    def probe(args, *rest, **kwargs):
        shapes.append(tuple(args["denoised"].shape))
        return args["denoised"]

    def warped(fraction):
        cfg = lw.LatentWarpConfig(None, fraction, FRAMES, "stride", 0, 1.0)
        return _tiled(install_post_cfg(lw.install_latent_warp(env["model"], cfg), "test_probe", probe))

    base = _sample(_tiled(env["model"]), env["pos"], env["neg"], env["latent"], env["noise"], steps=2)
    off = _sample(warped(0.0), env["pos"], env["neg"], env["latent"], env["noise"], steps=2)
    on = _sample(warped(1.0), env["pos"], env["neg"], env["latent"], env["noise"], steps=2)
    assert torch.equal(off, base) and _rel(on, base) > 1e-3
    assert shapes and set(shapes) == {(FRAMES, 4, H, W)}


def test_composes_with_the_chunker_and_ddim(env):
    """The tiled model inside TR_ILTChunker (windows of 2 frames) and TR_DDIMInvert / Restore: one tile
    == the untiled run; several tiles run, each window's tile calls carry the window's frame_index."""
    import comfy.samplers

    from temporal_restore.nodes import _chunked, ddim_invert

    def chunked(model):
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", 2).cpu()
        return _chunked.chunked_sample(model, env["pos"], env["neg"], {"samples": env["latent"].clone()}, 0, 2.0,
                                       comfy.samplers.sampler_object("euler"), sigmas, window=2, overlap=1,
                                       progress=False)["samples"]

    one = _tiled(env["model"], tile=max(H, W) + 8, overlap=8)
    assert _rel(chunked(one), chunked(env["model"])) <= 1e-6
    latent = {"samples": env["latent"] * 2.0}
    inv = ddim_invert.invert(env["model"], env["pos"], env["neg"], latent, steps=2, cfg=1.0, denoise=0.5)
    inv_one = ddim_invert.invert(one, env["pos"], env["neg"], latent, steps=2, cfg=1.0, denoise=0.5)
    assert _rel(inv_one["samples"], inv["samples"]) <= 1e-6
    assert _rel(ddim_invert.restore(one, env["pos"], env["neg"], inv, steps=2, cfg=1.0)["samples"],
                ddim_invert.restore(env["model"], env["pos"], env["neg"], inv, steps=2, cfg=1.0)["samples"]) <= 1e-6

    m, seen = probed_tiled(env["model"])
    assert torch.isfinite(chunked(m)).all()
    windows = {f for f, _ in seen}
    assert windows == {(0, 1), (1, 2)} and len(seen) == 2 * 6  # every window x every tile


def test_token_merge_flow_matching_per_tile(env):
    """Flow-guided token merging on tiles: with identical frames and a zero FLOW, ratio 1 == tiled stock;
    each tile gets its own flow-guided plan (the plan cache is keyed by tile)."""
    from flow_helpers import translation_flow

    from temporal_restore.nodes import token_merge as tm

    lat, noise = _same_frames(env)
    same = _sample(_tiled(env["model"]), env["pos"], env["neg"], lat, noise)
    cfg = tm.TokenMergeConfig(translation_flow(FRAMES, H * 8, W * 8, 0.0), 1.0, chunk_size=FRAMES,
                              down_blocks="flow", up_blocks="flow")
    out = _sample(_tiled(tm.install_token_merge(env["model"], cfg)), env["pos"], env["neg"], lat, noise)
    assert _rel(out, same) <= 1e-5
    assert len({key[-1] for key in cfg._plans}) == 6 and None not in {key[-1] for key in cfg._plans}
