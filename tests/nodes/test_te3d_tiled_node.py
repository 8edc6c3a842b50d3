"""TR_TE3DVAEDecode with spatial tiles (tile_size / tile_overlap): through the real node on the demo VAE with
its shipped temporal weights and with the identity skip; one tile covering the frame equals untiled bit for
bit; bad tile settings raise ValueError naming the input."""
from __future__ import annotations

import os

import pytest
import torch

from temporal_restore.pipelines import metrics, te3d_train

from harness.paths import REPO

SHIPPED = os.path.join(REPO, "models", "demo", "demo_te3d_vae.safetensors")


@pytest.fixture(scope="module")
def demo_vae(comfy_host):
    return comfy_host.run({"1": {"class_type": "TR_DemoModelLoader", "inputs": {"directory": ""}}},
                          outputs=["1"])["outputs"]["1"][2]


@pytest.fixture(scope="module")
def held_out(demo_vae):
    clip = te3d_train.held_out_clips(frames=4, size=256)[0]
    with torch.inference_mode():
        z = te3d_train.jitter(demo_vae.encode(clip.frames), 0.15, torch.Generator().manual_seed(1))
    return clip, z


def test_tiles_close_to_untiled_with_shipped_weights(demo_vae, held_out):
    """3x3 tiles of 128 px (32 px overlap) on a 256 px clip, crops of 24-28 of its 32 latent cells. The
    temporal layers' GroupNorms see the crop, not the frame, so tiled is close to, not equal to, untiled:
    measured mean |diff| 5.4e-3 (tolerance 1e-2; max 0.56 at a few pixels) and warping error 0.0346 vs
    0.0348 untiled (tolerance: within 10%)."""
    from temporal_restore.nodes import te3d_vae as node

    clip, z = held_out
    with torch.inference_mode():
        ref = node.te3d_decode(demo_vae, z, "te3d", chunk=4, overlap=1, weights=SHIPPED)
        tiled = node.te3d_decode(demo_vae, z, "te3d", chunk=4, overlap=1, weights=SHIPPED, tile_size=128,
                                 tile_overlap=32)
    assert tiled.shape == ref.shape == (4, 256, 256, 3)
    err = (tiled - ref).abs().mean().item()
    assert 0 < err <= 1e-2, err
    we = {k: metrics.warping_error(v, clip.flow, clip.occlusion) for k, v in (("te3d", ref), ("tiled", tiled))}
    assert abs(we["tiled"] - we["te3d"]) <= 0.1 * we["te3d"], we


def test_identity_skip_tiles_equal_untiled(demo_vae, held_out):
    """Without temporal weights TE-3D is the 2D decoder (no norm over space): tiles with the default 64 px of
    context equal the untiled decode within float rounding, and te3d tiles equal 2d tiles bit for bit."""
    from temporal_restore.nodes import te3d_vae as node

    _, z = held_out
    with torch.inference_mode():
        ref = node.te3d_decode(demo_vae, z, "te3d", chunk=4, overlap=1)
        tiled = node.te3d_decode(demo_vae, z, "te3d", chunk=4, overlap=1, tile_size=128, tile_overlap=32)
        flat = node.te3d_decode(demo_vae, z, "2d", chunk=4, overlap=1, tile_size=128, tile_overlap=32)
    assert torch.equal(tiled, flat)
    assert (tiled - ref).abs().max() <= 1e-5


def test_node_one_tile_is_untiled_and_bad_settings(comfy_host, demo_vae):
    node = comfy_host.node("TR_TE3DVAEDecode")
    z = {"samples": torch.randn(3, 4, 8, 10, generator=torch.Generator().manual_seed(0))}
    ref = node.execute(z, demo_vae, "te3d", 3, 1, 1, "auto").args[0]
    one = node.execute(z, demo_vae, "te3d", 3, 1, 1, "auto", 80, 16).args[0]  # 80 px >= the 80x64 frame
    assert torch.equal(one, ref)
    for size, ov, name in ((100, 16, "tile_size"), (64, 12, "tile_overlap"), (64, 64, "tile_overlap"),
                           (-8, 0, "tile_size")):
        with pytest.raises(ValueError, match=f"^{name}"):
            node.execute(z, demo_vae, "te3d", 3, 1, 1, "auto", size, ov)
    names = {i.id: i for i in node.define_schema().inputs}
    assert names["tile_size"].default == 0 and names["tile_size"].tooltip and names["tile_overlap"].tooltip
