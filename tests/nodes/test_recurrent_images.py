"""TR_RecurrentRestore's images output (decode_images) through ComfyUI's executor: on, the restored frames
come out decoded (and match a VAEDecode of its latent); off, a node fed from that output stops with a
message naming the switch instead of receiving nothing."""
from __future__ import annotations

import pytest
import torch

from harness.inprocess import PromptError

FRAMES = 3


def _prompt(tiny, decode_images: bool) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny["checkpoint"]}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": FRAMES, "color": 0x808080}},
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "7": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": 2,
                                                         "denoise": 0.5}},
        "8": {"class_type": "TR_RecurrentRestore", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "sampler": ["6", 0], "sigmas": ["7", 0],
            "latent": ["5", 0], "images": ["4", 0], "noise_seed": 0, "cfg": 1.0, "strength": 0.5,
            "photometric_tau": 0.08, "blur": 1.0, "group": 1, "control_strength": 1.0, "vae": ["1", 2],
            "decode_images": decode_images}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 2]}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
    }


def test_images_output_on_matches_vae_decode(comfy_host, tiny):
    res = comfy_host.run(_prompt(tiny, True), outputs=["8", "10"])
    images = res["outputs"]["8"][2]
    assert images.shape == (FRAMES, 48, 64, 3) and torch.isfinite(images).all()
    torch.testing.assert_close(images, res["outputs"]["10"][0], rtol=1e-4, atol=1e-4)
    assert res["ui"]["9"]["images"]  # the preview received them


def test_images_output_off_blocks_its_user_with_a_message(comfy_host, tiny):
    """ComfyUI reports a blocked node as an execution_error message (shown on the node) and runs the rest."""
    res = comfy_host.run(_prompt(tiny, False), outputs=["8"])
    errors = [d for e, d in comfy_host.server.messages if e == "execution_error"]
    assert [e["node_id"] for e in errors] == ["9"], errors
    assert "decode_images" in errors[0]["exception_message"] and "VAEDecode" in errors[0]["exception_message"]
    assert "9" not in res["ui"]  # the preview got nothing
    assert res["outputs"]["8"][0]["samples"].shape[0] == FRAMES  # the latent output is unaffected


def test_images_output_needs_a_vae(comfy_host, tiny):
    prompt = _prompt(tiny, True)
    del prompt["8"]["inputs"]["vae"]
    with pytest.raises(PromptError, match="vae: decode_images needs"):
        comfy_host.run(prompt)
