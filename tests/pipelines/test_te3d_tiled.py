"""TE-3D decoding in spatial tiles (``te3d_vae.decode_tiled``) on the tiny checkpoint's TAESD decoder: one
tile is the untiled decode bit for bit, several tiles with the default context margin equal it within float
rounding (and without the margin they do not), every tile is decoded on all frames at once, the pixel blend
weights sum to one, bad settings raise ValueError naming the argument."""
from __future__ import annotations

import pytest
import torch

from temporal_restore.pipelines import te3d_vae, tiling


@pytest.fixture
def decoder(comfy_host, tiny):
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny["checkpoint"]}}}
    vae = comfy_host.run(prompt, outputs=["1"])["outputs"]["1"][2]
    return te3d_vae.TE3DDecoder(vae.first_stage_model.taesd_decoder).eval()


def _z(frames=4, h=20, w=20, seed=0):
    return torch.randn(frames, 4, h, w, generator=torch.Generator().manual_seed(seed))


def _trained(decoder):
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for p in decoder.temporal_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    assert not decoder.is_identity()
    return decoder


@pytest.mark.parametrize("trained", [False, True])
def test_one_tile_covering_the_frame_is_untiled(decoder, trained):
    te = _trained(decoder) if trained else decoder
    z = _z(h=12, w=10)
    with torch.no_grad():
        ref = te(z)
        for tile in (12, 64):
            assert torch.equal(te3d_vae.decode_tiled(te, z, tile, 4), ref)


def test_several_tiles_equal_untiled_with_the_margin(decoder):
    """Identity skip (untrained temporal layers): TAESD's 2D decoder has no norm over space, so tiles decoded
    with enough cells of context equal the untiled decode up to float rounding; without context the
    convolutions see zero padding at the cut and the tiles differ. The tiny decoder's random weights reach
    further than trained ones (max error 1.8e-3 at 8 cells, 8.6e-6 at 12; the demo VAE: 4.2e-7 at the
    default 8, tests/nodes/test_te3d_tiled_node.py), so this uses 12."""
    z = _z(h=20, w=24)
    assert len(tiling.tile_grid(20, 24, 8, 2)) == 12
    with torch.no_grad():
        ref = decoder(z)
        tiled = te3d_vae.decode_tiled(decoder, z, 8, 2, margin=12)
        bare = te3d_vae.decode_tiled(decoder, z, 8, 2, margin=0)
    err = (tiled - ref).abs().max().item()
    assert tiled.shape == ref.shape == (4, 3, 160, 192)
    assert err <= 1e-5, err
    assert (bare - ref).abs().max() > 1e-3


def test_tiles_run_on_all_frames_on_one_grid(decoder):
    z = _z(frames=5, h=20, w=20)
    calls = []

    def spy(crop):
        calls.append(tuple(crop.shape))
        return decoder(crop)

    with torch.no_grad():
        te3d_vae.decode_tiled(spy, z, 8, 2, margin=3)
    tiles = tiling.tile_grid(20, 20, 8, 2)
    want = [(5, 4, min(t.y + t.h + 3, 20) - max(t.y - 3, 0), min(t.x + t.w + 3, 20) - max(t.x - 3, 0)) for t in tiles]
    assert calls == want


def test_pixel_blend_weights_sum_to_one_and_place_tiles():
    tiles = tiling.tile_grid(20, 26, 8, 3)
    px = te3d_vae.pixel_tiles(tiles, 8)
    total = torch.zeros(160, 208, dtype=torch.float64)
    for t, w in zip(px, tiling.blend_weights(px, 24, dtype=torch.float64)):
        total[t.rows, t.cols] += w
    assert (total - 1).abs().max() <= 1e-12
    z = _z(frames=3, h=20, w=26)

    def pointwise(crop):  # each pixel a function of its own latent cell: tiles must land where they belong
        return torch.tanh(crop[:, :3]).repeat_interleave(8, -2).repeat_interleave(8, -1) + 2.0

    out = te3d_vae.decode_tiled(pointwise, z, 8, 3, margin=0)
    assert (out - pointwise(z)).abs().max() <= 1e-6


def test_bad_settings_name_the_argument(decoder):
    z = _z(frames=2, h=12, w=12)
    with pytest.raises(ValueError, match="^margin"):
        te3d_vae.decode_tiled(decoder, z, 8, 2, margin=-1)
    with pytest.raises(ValueError, match="^overlap"):
        te3d_vae.decode_tiled(decoder, z, 8, 8)
    with pytest.raises(ValueError, match="^model"):
        te3d_vae.decode_tiled(lambda c: c[..., :-1, :], z, 8, 2)
