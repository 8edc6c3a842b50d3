"""The tiny SD1.5-shaped model, ControlNet and a 3-frame latent shared by the TR_TiledSampling tests
(tests/nodes/test_tiled_*.py; import the ``tiled_env`` fixture from here)."""
from __future__ import annotations

import pytest
import torch

FRAMES, H, W = 3, 24, 32  # latent cells: 192x256 pixel frames
TILE, OV = 16, 4  # latent cells: 128 px tiles, 32 px overlap -> 2 x 3 tiles


@pytest.fixture(scope="module")
def tiled_env(tiny, tiny_sd15_loaded):
    import comfy.controlnet

    loaded = tiny_sd15_loaded
    g = torch.Generator().manual_seed(0)
    return {"model": loaded["model"], "cn": comfy.controlnet.load_controlnet(tiny["controlnet_path"]),
            "pos": loaded["pos"], "neg": loaded["neg"],
            # a left-to-right ramp: the tile's crop of it differs from the whole hint squeezed into the tile
            "hint": 0.2 * torch.rand(FRAMES, H * 8, W * 8, 3, generator=g)
            + 0.8 * torch.linspace(0, 1, W * 8).reshape(1, 1, W * 8, 1),
            "latent": torch.randn(FRAMES, 4, H, W, generator=g), "noise": torch.randn(FRAMES, 4, H, W, generator=g)}


def _mods():
    from temporal_restore.nodes import _tiled, sw_cfa, task_prompt, tiled_sampling

    return _tiled, tiled_sampling, sw_cfa, task_prompt


def _sample(model, pos, neg, latent, noise, steps=1):
    import comfy.sample

    return comfy.sample.sample(model, noise.clone(), steps, 2.0, "euler", "normal", pos, neg, latent.clone(),
                               denoise=1.0, seed=0, disable_pbar=True)


def _tiled(model, tile=TILE, overlap=OV):
    return _mods()[1].TiledSampling.execute(model, tile * 8, overlap * 8, "cosine").result[0]


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def _cn(env, hint=None):
    tp = _mods()[3]
    return tp.apply_controlnet(env["pos"], env["neg"], env["cn"], env["hint"] if hint is None else hint, 1.0, 0.0, 1.0)


def probed_tiled(model):
    """``(tiled model, seen)``: the model tiled 2 x 3 with a probe on the first self-attention that adds
    ``(frame_index tuple, Tile)`` of every UNet call to the set ``seen``."""
    from temporal_restore.nodes._patching import install_attn1_patch, tr_options

    seen = set()

    def probe(n, context, value, extra_options, *args, **kwargs):
        if extra_options["block"] == ("input", 1):
            seen.add((tuple(tr_options(extra_options)["frame_index"]), _mods()[0].tile_of(extra_options)))
        return n, context, value

    m = _tiled(model)
    install_attn1_patch(m, "test_probe", probe)
    return m, seen
