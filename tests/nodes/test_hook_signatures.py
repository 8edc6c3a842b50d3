"""Issue 15: every hook the pack hands to ComfyUI takes what newer ComfyUI adds (``*args, **kwargs``) and
forwards it (current ComfyUI passes ``force_full_load`` / ``force_offload`` to PREPARE_SAMPLING wrappers)."""
from __future__ import annotations

import inspect

import pytest
import torch


@pytest.fixture(scope="module")
def objects(tiny_sd15_loaded):
    loaded = tiny_sd15_loaded
    return loaded["model"], loaded["pos"], loaded["neg"]


def _tolerant(fn) -> bool:
    kinds = {p.kind for p in inspect.signature(fn).parameters.values()}
    return inspect.Parameter.VAR_POSITIONAL in kinds and inspect.Parameter.VAR_KEYWORD in kinds


def test_every_installed_hook_takes_args_and_kwargs(objects):
    from temporal_restore.nodes import _boundary_kv, latent_warp, slr_attention, sw_cfa, tc_guidance, token_merge
    from temporal_restore.nodes._patching import MARK

    model = objects[0]
    m = sw_cfa.install_sw_cfa(model, "sw_cfa", 1, "input:1")
    m = slr_attention.install_slr(m)[0]
    m = tc_guidance.install_tc_guidance(m)[0]
    m = latent_warp.install_latent_warp(m, latent_warp.LatentWarpConfig(None, 0.5, 4, "stride", 0, 1.0))
    m = token_merge.install_token_merge(m, token_merge.TokenMergeConfig())
    m = _boundary_kv.install_boundary_kv(m)
    to = m.model_options["transformer_options"]
    hooks = list(to["patches_replace"]["attn1"].values()) + to["patches"]["attn1_patch"] \
        + to["patches"]["attn1_output_patch"] + m.model_options["sampler_post_cfg_function"]
    ours = [h for h in hooks if getattr(h, MARK, None)]
    assert {getattr(h, MARK) for h in ours} == {"sw_cfa", "slr_attention", "tc_guidance", "latent_warp",
                                                "token_merge", "ilt_kv"}
    assert [h for h in ours if not _tolerant(h)] == []


def test_sampler_wrappers_and_functions_take_what_comfy_adds():
    from temporal_restore.nodes import _windowed, distilled, early_stop, noise_share

    for fn in (early_stop.EarlyStopSampler.sample, noise_share.NoiseShareSampler.sample,
               noise_share.SharedNoise.generate_noise, _windowed.WindowedGuider.inner_sample,
               _windowed.WindowedGuider.predict_noise):
        assert _tolerant(fn), fn
    params = inspect.signature(distilled.make_sampler_function(1.0, 1.0, True)).parameters
    assert any(p.kind == p.VAR_KEYWORD for p in params.values())


def test_prepare_sampling_wrapper_forwards_new_keywords(objects):
    """The chunker's memory wrapper shrinks the batch to one window and passes every other argument on,
    including keywords ComfyUI 0.33 adds."""
    import comfy.patcher_extension as pe

    from temporal_restore.nodes._windowed import Part, WindowedGuider

    model, pos, neg = objects
    part = Part(slice(0, 3), [0, 1, 2], torch.ones(3, dtype=torch.float64), {"positive": pos, "negative": neg})
    guider = WindowedGuider(model, pos, neg, 2.0, [part])
    wrappers = pe.get_wrappers_with_key(pe.WrappersMP.PREPARE_SAMPLING, "temporal_restore.ilt", guider.model_options,
                                        is_model_options=True)
    assert len(wrappers) == 1
    seen = []

    def executor(*args, **kwargs):
        seen.append((args, kwargs))
        return "loaded"

    conds = {"positive": []}
    out = wrappers[0](executor, model, (10, 4, 8, 8), conds, {"mo": 1}, force_full_load=True, force_offload=False)
    assert out == "loaded"
    assert seen == [((model, [3, 4, 8, 8], conds, {"mo": 1}), {"force_full_load": True, "force_offload": False})]
    # installing again on the same options replaces, never stacks (ComfyUI's own key list)
    from temporal_restore.nodes._patching import install_wrapper

    install_wrapper(guider.model_options, pe.WrappersMP.PREPARE_SAMPLING, "ilt", lambda ex, *a, **k: ex(*a, **k))
    assert len(pe.get_wrappers_with_key(pe.WrappersMP.PREPARE_SAMPLING, "temporal_restore.ilt", guider.model_options,
                                        is_model_options=True)) == 1
