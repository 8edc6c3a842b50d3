"""Spatial tiling (MultiDiffusion Eq. 5): grid, blend weights, the tiled apply."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from temporal_restore.pipelines import tiling


@settings(max_examples=150, deadline=None)
@given(height=st.integers(1, 70), width=st.integers(1, 70), tile=st.integers(2, 40), data=st.data(),
       kind=st.sampled_from(tiling.RAMPS))
def test_grid_covers_and_weights_sum_to_one(height, width, tile, data, kind):
    overlap = data.draw(st.integers(0, tile - 1))
    tiles = tiling.tile_grid(height, width, tile, overlap)
    cover = torch.zeros(height, width, dtype=torch.long)
    for t in tiles:
        assert 0 <= t.y and t.y + t.h <= height and 0 <= t.x and t.x + t.w <= width
        assert (t.h, t.w) == (min(tile, height), min(tile, width))  # every tile has the same size
        cover[t.rows, t.cols] += 1
    assert bool((cover >= 1).all())
    assert tiles[-1].y + tiles[-1].h == height and tiles[-1].x + tiles[-1].w == width  # snapped to the border
    weights = tiling.blend_weights(tiles, overlap, kind, dtype=torch.float64)
    acc = torch.zeros(height, width, dtype=torch.float64)
    for t, w in zip(tiles, weights):
        assert w.shape == (t.h, t.w) and bool((w > 0).all())
        acc[t.rows, t.cols] += w
    assert torch.allclose(acc, torch.ones_like(acc), atol=1e-12)


def test_starts_stride_and_snap():
    assert tiling.tile_starts(100, 40, 8) == [0, 32, 60]
    assert tiling.tile_starts(64, 64, 16) == [0]
    assert tiling.tile_starts(30, 64, 16) == [0]


def test_weights_are_smooth_ramps_in_the_overlap():
    tiles = tiling.tile_grid(1, 24, (1, 16), 8)  # two tiles: x 0..15 and 8..23, overlap 8
    w0, w1 = tiling.blend_weights(tiles, 8, "cosine", dtype=torch.float64)
    assert torch.equal(w0[0, :8], torch.ones(8, dtype=torch.float64))
    ramp = tiling.ramp(8, "cosine", dtype=torch.float64)
    assert torch.allclose(w1[0, :8], ramp / (ramp + ramp.flip(0)))
    assert bool((w1[0, 1:8] > w1[0, :7]).all())  # rises monotonically across the seam


def test_one_tile_is_the_identity_path():
    x = torch.randn(3, 4, 10, 12, dtype=torch.float64)
    calls = []

    def fn(crop, t):
        calls.append(t)
        return [crop.sin(), crop * 2]

    out = tiling.tiled_apply(fn, x, 16, 4)
    assert len(calls) == 1 and (calls[0].h, calls[0].w) == (10, 12)
    assert torch.equal(out[0], x.sin()) and torch.equal(out[1], x * 2)  # bit-exact


@pytest.mark.parametrize("kind", tiling.RAMPS)
def test_pointwise_function_is_unchanged_by_tiling(kind):
    """A per-pixel function gives the untiled result whatever the grid: crops, placement and the
    normalisation are right (a wrong offset or a weight sum != 1 shows up here)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 37, 53, generator=g)
    seen = []

    def fn(crop, t):
        seen.append(crop.shape[0])
        return torch.tanh(crop) * 3 + 1

    out = tiling.tiled_apply(fn, x, (16, 20), 6, kind)
    assert len(seen) > 4 and set(seen) == {4}  # several tiles, each on all frames at once
    assert torch.allclose(out, torch.tanh(x) * 3 + 1, atol=1e-5)
    assert out.dtype == x.dtype and out.device == x.device


def test_tile_sees_its_own_region_on_every_frame():
    x = torch.arange(2 * 1 * 20 * 20, dtype=torch.float32).reshape(2, 1, 20, 20)

    def fn(crop, t):
        assert torch.equal(crop, x[:, :, t.y:t.y + t.h, t.x:t.x + t.w])
        return crop

    assert torch.allclose(tiling.tiled_apply(fn, x, 8, 2), x, rtol=1e-6)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="^overlap:"):
        tiling.tile_grid(32, 32, 8, 8)
    with pytest.raises(ValueError, match="^overlap:"):
        tiling.tile_grid(32, 32, (40, 8), 8)
    with pytest.raises(ValueError, match="^tile:"):
        tiling.tile_grid(32, 32, 0, 0)
    with pytest.raises(ValueError, match="^ramp:"):
        tiling.ramp(4, "gauss")
    with pytest.raises(ValueError, match="^fn:"):
        tiling.tiled_apply(lambda c, t: c[..., :1, :], torch.zeros(1, 1, 20, 20), 8, 2)


def test_border_mask_marks_inner_seams_only():
    tiles = tiling.tile_grid(16, 32, 16, 4)  # one row of tiles: vertical seams only
    m = tiling.border_mask(tiles, 2)
    assert not bool(m[:, :10].any()) and bool(m[:, 14:18].all())
    assert not bool(m[:, -2:].any())


def _random_flow(T, h, w, seed):
    from temporal_restore.pipelines.flow import FlowField

    gen = torch.Generator().manual_seed(seed)
    fwd, bwd = torch.randn(T - 1, 2, h, w, generator=gen) * 2, torch.randn(T - 1, 2, h, w, generator=gen) * 2
    z, o = torch.zeros(T - 1, 1, h, w), torch.rand(T - 1, 1, h, w, generator=gen)
    return FlowField(forward=fwd, backward=bwd, occlusion_fwd=z, occlusion_bwd=z, confidence_fwd=o,
                     confidence_bwd=o, height=h, width=w)


def test_crop_flow_keeps_vectors_in_tile_coordinates():
    flow = _random_flow(3, 12, 16, 1)
    tile = tiling.tile_grid(12, 16, 8, 2)[-1]
    assert (tile.y, tile.x) == (4, 8)
    c = tiling.crop_flow(flow, tile)
    assert (c.height, c.width, c.num_frames) == (8, 8, 3)
    assert torch.equal(c.forward, flow.forward[..., 4:12, 8:16])
    assert torch.equal(c.confidence_bwd, flow.confidence_bwd[..., 4:12, 8:16])
    # a flow measured at twice the latent size is first brought to the latent grid (vectors halved)
    big = _random_flow(3, 24, 32, 2)
    assert torch.allclose(tiling.crop_flow(big, tile).forward, big.resized(12, 16).forward[..., 4:12, 8:16])
    assert tiling.flow_in_tile(flow, None, 6, 8).forward.shape == (2, 2, 6, 8)


def test_tile_padding():
    t = tiling.Tile(8, 8, 8, 8, 16, 16)
    assert tiling.tile_padding(t, 3, 0) == (3, 0)
    assert tiling.tile_padding(tiling.Tile(0, 0, 8, 8, 16, 16), 3, 3) == (0, 0)
    assert tiling.tile_padding(None, 3, 2) == (3, 2)


def test_slr_on_a_tile_equals_slr_on_the_cropped_clip():
    """SLR's trajectory search on a tile sees the tile's part of the full-frame x0 and flow (tile-local
    coordinates), the same as SLR run on the cropped clip; resizing the whole frame into the tile (no
    region) gives another result."""
    from temporal_restore.pipelines import slr_attention as slr

    T, H, W, C, heads = 3, 12, 16, 8, 2
    tile = tiling.tile_grid(H, W, 8, 2)[-1]
    gen = torch.Generator().manual_seed(5)
    x0 = torch.randn(T, 4, H, W, generator=gen)
    q, k, v = (torch.randn(T, 64, C, generator=gen) for _ in range(3))
    flow = _random_flow(T, H, W, 3)
    args = dict(heads=heads, frame_index=[0, 1, 2], chunk=0, hw=(8, 8), progress=0.95, largest=True)

    def run(input_flow, x0_rec, region):
        layer = slr.SLRAttention(trajectory_start=0.5, x0_flow=False, input_flow=input_flow)
        layer.new_run("r")
        layer.record_x0(x0_rec, (0, 1, 2))
        return layer(q, k, v, region=region, **args)

    on_tile = run(flow, x0, tile)
    cropped = run(tiling.crop_flow(flow, tile), tile.crop(x0), None)
    squeezed = run(flow, x0, None)
    torch.testing.assert_close(on_tile, cropped)
    assert not torch.allclose(squeezed, on_tile, atol=1e-3)
    with pytest.raises(ValueError, match="^region:"):
        run(flow, x0[..., :10, :], tile)
