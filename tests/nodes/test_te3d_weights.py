"""TR_TE3DVAEDecode with the temporal weights shipped for the demo VAE (models/demo/demo_te3d_vae.safetensors):
they change the decode and lower the warping error of a held-out synthetic clip (known flow) against 2D
decoding; ``auto`` picks them for the demo VAE only; without weights the node warns (log and UI text) and its
te3d decode is bit-identical to its 2d decode."""
from __future__ import annotations

import logging
import os

import pytest
import torch

from temporal_restore.pipelines import metrics, te3d_train

from harness.paths import REPO

SHIPPED = os.path.join(REPO, "models", "demo", "demo_te3d_vae.safetensors")


@pytest.fixture(scope="module")
def demo_vae(comfy_host):
    out = comfy_host.run({"1": {"class_type": "TR_DemoModelLoader", "inputs": {"directory": ""}}}, outputs=["1"])
    return out["outputs"]["1"][2]


def test_shipped_file_is_small_and_for_the_demo_vae(demo_vae):
    from safetensors import safe_open
    from temporal_restore.nodes import te3d_vae as node

    assert os.path.getsize(SHIPPED) < 700_000
    with safe_open(SHIPPED, framework="pt") as f:
        meta = f.metadata()
    dec2d = node._decoder_parts(demo_vae)[0]
    assert meta["decoder_sha256"] == te3d_train.decoder_fingerprint(dec2d)
    assert node.resolve_weights(demo_vae, "auto") == (SHIPPED, "")
    assert node.resolve_weights(demo_vae, "demo_te3d_vae.safetensors")[0] == SHIPPED
    assert node.resolve_weights(demo_vae, "")[0] == ""


def test_shipped_weights_lower_warping_error_on_held_out_clip(demo_vae):
    from temporal_restore.nodes import te3d_vae as node

    clip = te3d_train.held_out_clips(frames=8, size=64)[0]  # astronaut: an image never used in training
    assert clip.info.get("image", "astronaut") not in te3d_train.TRAIN_IMAGES
    with torch.inference_mode():
        z = demo_vae.encode(clip.frames)
        z = te3d_train.jitter(z, 0.15, torch.Generator().manual_seed(1))  # a restorer's per-frame inconsistency
        flat = node.te3d_decode(demo_vae, z, "2d", chunk=8, overlap=2)
        temporal = node.te3d_decode(demo_vae, z, "te3d", chunk=8, overlap=2, weights=SHIPPED)
    assert (temporal - flat).abs().max() > 1e-2
    we_2d = metrics.warping_error(flat, clip.flow, clip.occlusion)
    we_3d = metrics.warping_error(temporal, clip.flow, clip.occlusion)
    assert we_3d < 0.9 * we_2d, (we_2d, we_3d)
    assert metrics.flicker(temporal) < metrics.flicker(flat)


def test_without_weights_warns_and_equals_2d_bit_for_bit(comfy_host, tiny, caplog):
    ck = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny["checkpoint"]}}}
    vae = comfy_host.run(ck, outputs=["1"])["outputs"]["1"][2]
    node = comfy_host.node("TR_TE3DVAEDecode")
    z = {"samples": torch.randn(5, 4, 4, 4, generator=torch.Generator().manual_seed(0))}
    with caplog.at_level(logging.WARNING, logger="temporal_restore"):
        res = node.execute(z, vae, "te3d", 3, 1, 1, "auto")  # the tiny VAE is not the demo VAE
    text = res.ui["text"][0]
    assert text.startswith("WARNING") and "2D" in text and "train_te3d.py" in text
    assert any("without temporal weights" in r.getMessage() for r in caplog.records)
    ref = node.execute(z, vae, "2d", 3, 1, 1, "")
    assert "WARNING" not in ref.ui["text"][0]
    assert torch.equal(res.args[0], ref.args[0])
    empty = node.execute(z, vae, "te3d", 3, 1, 1, "")
    assert empty.ui["text"][0].startswith("WARNING") and "empty" in empty.ui["text"][0]
