"""Helpers shared by the ZVRD nodes (SLR attention, TC guidance, noise sharing, early stopping).

* ``step_progress(options)``: sampling progress ``i / N`` of the current model evaluation, from
  ``sigmas`` (current sigma per batch item) vs ``sample_sigmas`` (the whole schedule) in attention
  ``extra_options`` / ``transformer_options`` (see ``pipelines/early_stop.py`` for the convention).
  ``None`` when the model is called outside a ComfyUI sampler.
* ``run_key(options)``: identifies one sampling run (the schedule tensor ComfyUI puts in
  ``transformer_options`` once per run), so per-run state is reset between runs.
* ``rgb_factors(model)``: the model's latent -> RGB preview factors (ComfyUI latent format).
* ``SamplerWrapper`` / ``with_sampler_options``: compose SAMPLER wrappers and hand extra keyword
  options (e.g. ``noise_sampler``) to the innermost k-diffusion sampler function.

Frame indices and installing live in ``_patching`` (``frame_index``, ``install_post_cfg``).
"""
from __future__ import annotations

import logging

from ..pipelines.early_stop import schedule_progress
from ._patching import accepts

log = logging.getLogger("temporal_restore")


def step_progress(options) -> float | None:
    if not options:
        return None
    ss = options.get("sample_sigmas")
    sig = options.get("sigmas")
    if ss is None or sig is None or getattr(ss, "numel", lambda: 0)() < 2:
        return None
    s = sig.reshape(-1)[0] if hasattr(sig, "reshape") else sig
    return schedule_progress(float(s), ss)


def run_key(options):
    ss = (options or {}).get("sample_sigmas")
    if ss is None:
        return None
    return (id(ss), int(ss.numel()), float(ss[0]))


def rgb_factors(model):
    """``(factors [C][3], bias [3] | None)`` of the model's latent format, or ``(None, None)`` (the
    pipelines then use SD1.5's)."""
    try:
        lf = model.get_model_object("latent_format")
    except Exception:  # noqa: BLE001 - any model without a latent format
        lf = getattr(getattr(model, "model", None), "latent_format", None)
    fac = getattr(lf, "latent_rgb_factors", None)
    bias = getattr(lf, "latent_rgb_factors_bias", None)
    if fac is None or getattr(lf, "latent_rgb_factors_reshape", None) is not None:
        return None, None
    return fac, bias


def with_sampler_options(sampler, **options):
    """A copy of ``sampler`` whose innermost k-diffusion sampler function gets ``options`` as extra
    keyword arguments (only those it accepts). Wrappers (``SamplerWrapper``) are rebuilt around the
    new inner sampler; a sampler of another kind is returned unchanged (logged)."""
    import comfy.samplers

    if isinstance(sampler, SamplerWrapper):
        return sampler.with_inner(with_sampler_options(sampler.inner, **options))
    if isinstance(sampler, comfy.samplers.KSAMPLER):
        fn = sampler.sampler_function
        ok = {k: v for k, v in options.items() if accepts(fn, k)}
        if len(ok) != len(options):
            log.info("temporal_restore: sampler %s ignores %s", getattr(fn, "__name__", fn),
                     sorted(set(options) - set(ok)))
        if not ok:
            return sampler
        return comfy.samplers.KSAMPLER(fn, {**sampler.extra_options, **ok}, sampler.inpaint_options)
    log.warning("temporal_restore: cannot pass %s to sampler of type %s", sorted(options), type(sampler).__name__)
    return sampler


def _sampler_base():
    import comfy.samplers

    return comfy.samplers.Sampler


class SamplerWrapper:
    """Base of the pack's SAMPLER wrappers: holds ``inner`` and rebuilds itself around a new one.
    Subclasses implement ``sample(...)`` with ComfyUI's ``Sampler.sample`` signature."""

    def __init__(self, inner):
        self.inner = inner

    def with_inner(self, inner):
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.inner = inner
        return clone

    def max_denoise(self, model_wrap, sigmas, *args, **kwargs):
        return _sampler_base().max_denoise(self, model_wrap, sigmas, *args, **kwargs)
