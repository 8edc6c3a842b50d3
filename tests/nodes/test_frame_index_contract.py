"""One frame-index contract for every patch (nodes/_patching.resolve_frame_index): a chunker's
``frame_index`` that does not have one entry per frame is refused the same way by TR_SLRAttention,
TR_TCGuidance and TR_NoiseShareSampler (before, the last two went on silently with frames 0..T-1)."""
from __future__ import annotations

import pytest
import torch

FRAMES = 3


@pytest.fixture(scope="module")
def setup(tiny_sd15_loaded):
    loaded = tiny_sd15_loaded
    g = torch.Generator().manual_seed(0)
    return {"model": loaded["model"], "pos": loaded["pos"], "neg": loaded["neg"],
            "latent": torch.randn(FRAMES, 4, 8, 8, generator=g), "noise": torch.randn(FRAMES, 4, 8, 8, generator=g)}


def _features():
    """name -> (patch the model, the SAMPLER to use) for the three features."""
    import comfy.samplers

    from temporal_restore.nodes import noise_share, slr_attention, tc_guidance

    euler = comfy.samplers.sampler_object("euler")
    share = noise_share.NoiseShare.execute(seed=1, blend=0.5, variance_preserving=True, blend_initial=True).result[0]
    return {
        "TR_SLRAttention": (lambda m: slr_attention.install_slr(m, None, 0.0, x0_flow=False)[0], euler),
        "TR_TCGuidance": (lambda m: tc_guidance.install_tc_guidance(m, 0.1, 0.0)[0], euler),
        "TR_NoiseShareSampler": (lambda m: m, noise_share.NoiseShareSampler(
            comfy.samplers.sampler_object("euler_ancestral"), share.share)),
    }


def _run(setup, model, sampler):
    import comfy.samplers

    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", 2).cpu()
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(setup["pos"], setup["neg"])
    guider.set_cfg(2.0)
    return guider.sample(setup["noise"].clone(), setup["latent"].clone(), sampler, sigmas, disable_pbar=True, seed=0)


@pytest.mark.parametrize("name", ["TR_SLRAttention", "TR_TCGuidance", "TR_NoiseShareSampler"])
def test_bad_frame_index_refused_alike(setup, name):
    from temporal_restore.nodes._patching import clone_with_options

    patch, sampler = _features()[name]
    bad = patch(clone_with_options(setup["model"], "frame_index", [5, 6]))  # 2 indices for 3 frames
    with pytest.raises(ValueError, match=rf"^frame_index: expected {FRAMES} absolute frame indices .* got 2$"):
        _run(setup, bad, sampler)
    good = patch(clone_with_options(setup["model"], "frame_index", [5, 6, 7]))  # the same run with a right index
    assert torch.isfinite(_run(setup, good, sampler)).all()
