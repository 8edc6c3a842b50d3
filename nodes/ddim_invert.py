"""TR_DDIMInvert / TR_DDIMRestore: TDM's DDIM inversion (Eq. 4) and deterministic DDIM sampling
from the inverted latent, run through ComfyUI's CFGGuider + KSAMPLER machinery so ControlNet
conditioning and model patches (SW-CFA, ...) apply exactly as in a normal sampler.

Schedules: DDIM-style, timesteps evenly spaced from ``t_start`` down to the model's lowest timestep
(``pipelines.ddim_inversion.uniform_timestep_sigmas``; with ``denoise = 1`` this is ComfyUI's
"normal" scheduler). TR_DDIMInvert walks it upwards and stores what it did in the latent dict::

    latent["tr_inversion"] = {"sigmas": [...], "sigma_start": s, "t_start": t, "steps": n,
                              "denoise": d, "model_sampling": {...}, "fingerprint": "..."}

TR_DDIMRestore re-derives its own schedule (its own step count) from the stored ``t_start``, so
it always starts exactly at the sigma the latent was inverted to. It refuses, with a ValueError, a
latent without ``tr_inversion``, a latent whose samples changed after inversion (fingerprint), a
model with a different noise schedule, and an optional SIGMAS input that does not start at the
stored sigma. The inverted latent (kept in ComfyUI's LATENT scale) is a very noisy latent: only
meaningful as input to TR_DDIMRestore (or a sampler started at ``sigma_start`` with no added noise).
"""
from __future__ import annotations

import hashlib
import logging
import math

import torch
from comfy_api.latest import io

from ..pipelines import ddim_inversion as di
from ._checks import check_finite, check_steps

log = logging.getLogger("temporal_restore")

KEY = "tr_inversion"


def fingerprint(samples: torch.Tensor) -> str:
    """Content hash of a latent tensor (shape, dtype and bytes)."""
    t = samples.detach().to("cpu").contiguous()
    h = hashlib.sha1(f"{tuple(t.shape)}|{t.dtype}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _model_sampling(model):
    import comfy.model_sampling as cms

    ms = model.get_model_object("model_sampling")
    if not isinstance(ms, cms.EPS) or not hasattr(ms, "sigma") or not hasattr(ms, "timestep"):
        raise ValueError("model: DDIM inversion here needs an eps/v-prediction model with a discrete noise schedule "
                         f"(SD1.5/SD2/SDXL-like); got {type(ms).__name__}")
    return ms


def _signature(ms) -> dict:
    return {"type": type(ms).__name__, "sigma_min": float(ms.sigma_min), "sigma_max": float(ms.sigma_max)}


def _timestep_range(ms) -> tuple[float, float]:
    t_end = float(ms.timestep(ms.sigma_min))
    t_max = float(ms.timestep(ms.sigma_max))
    return t_end, t_max


def schedule(ms, t_start: float, steps: int) -> torch.Tensor:
    t_end, _ = _timestep_range(ms)
    return di.uniform_timestep_sigmas(ms.sigma, t_start, t_end, steps)


def _sampler_function(kind: str, **opts):
    """A k-diffusion style sampler function for ``comfy.samplers.KSAMPLER``."""
    import comfy.model_management

    @torch.no_grad()
    def fn(model, x, sigmas, extra_args=None, callback=None, disable=None, **kwargs):
        extra_args = {} if extra_args is None else extra_args

        def denoise(x_, s_):
            comfy.model_management.throw_exception_if_processing_interrupted()
            return model(x_, s_, **extra_args)

        cb = None
        if callback is not None:
            def cb(i, denoised, x_, n):
                callback({"i": i, "denoised": denoised, "x": x_, "sigma": sigmas[min(i, len(sigmas) - 1)]})
        if kind == "invert":
            return di.ddim_invert(denoise, x, sigmas, eval_at=opts.get("eval_at", "next"),
                                  refine=opts.get("refine", 0), callback=cb)
        return di.ddim_sample(denoise, x, sigmas, callback=cb)

    return fn


def run_guided(model, positive, negative, cfg: float, latent: dict, sigmas: torch.Tensor, kind: str, **opts):
    """Run the DDIM walk ``kind`` ("invert" | "sample") over ``sigmas`` with CFG, ControlNets and the
    model's patches, with ComfyUI's progress bar / preview and interruption. Returns LATENT samples."""
    import comfy.sample
    import comfy.samplers
    import comfy.utils
    import latent_preview

    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    sampler = comfy.samplers.KSAMPLER(_sampler_function(kind, **opts))
    callback = latent_preview.prepare_callback(model, sigmas.shape[-1] - 1)
    noise = torch.zeros_like(samples)
    out = guider.sample(noise, samples, sampler, sigmas, denoise_mask=None, callback=callback,
                        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=0)
    import comfy.model_management

    return out.to(comfy.model_management.intermediate_device())


def invert(model, positive, negative, latent: dict, steps: int, cfg: float, denoise: float, refine: int = 0) -> dict:
    if not isinstance(latent, dict) or "samples" not in latent:
        raise ValueError("latent: expected a LATENT dict with 'samples'")
    check_steps(steps, "steps")
    if not 0.0 < float(denoise) <= 1.0:
        raise ValueError(f"denoise: expected 0 < denoise <= 1, got {denoise}")
    ms = _model_sampling(model)
    t_end, t_max = _timestep_range(ms)
    t_start = t_end + float(denoise) * (t_max - t_end)
    sigmas = schedule(ms, t_start, int(steps))
    samples = run_guided(model, positive, negative, cfg, latent, sigmas, "invert", refine=int(refine))
    out = {k: v for k, v in latent.items() if k not in ("noise_mask", KEY)}
    out["samples"] = samples
    out[KEY] = {
        "sigmas": [float(s) for s in sigmas],
        "sigma_start": float(sigmas[0]),
        "t_start": float(t_start),
        "steps": int(steps),
        "denoise": float(denoise),
        "cfg": float(cfg),
        "model_sampling": _signature(ms),
        "fingerprint": fingerprint(samples),
    }
    if "noise_mask" in latent:
        log.warning("TR_DDIMInvert: the latent's noise_mask is ignored (the whole latent is inverted)")
    return out


def restore_sigmas(model, latent: dict, steps: int, sigmas: torch.Tensor | None = None) -> torch.Tensor:
    """The schedule TR_DDIMRestore runs, checked against what TR_DDIMInvert stored."""
    if not isinstance(latent, dict) or "samples" not in latent:
        raise ValueError("latent: expected a LATENT dict with 'samples'")
    info = latent.get(KEY)
    if not isinstance(info, dict):
        raise ValueError("latent: expected a latent produced by TR_DDIMInvert (it has no 'tr_inversion' record); "
                         "connect TR_DDIMInvert's output, not a plain or noised latent")
    if fingerprint(latent["samples"]) != info.get("fingerprint"):
        raise ValueError("latent: the samples changed after TR_DDIMInvert (resized, cropped, batched or edited); "
                         "restore the inverted latent directly")
    ms = _model_sampling(model)
    sig = _signature(ms)
    stored = info.get("model_sampling", {})
    if stored.get("type") != sig["type"] or any(
            not math.isclose(stored.get(k, float("nan")), sig[k], rel_tol=1e-4) for k in ("sigma_min", "sigma_max")):
        raise ValueError(f"model: its noise schedule {sig} differs from the one the latent was inverted with {stored}")
    s0 = float(info["sigma_start"])
    if sigmas is not None:
        sigmas = di.check_sigmas(torch.as_tensor(sigmas, dtype=torch.float32).flatten(), "sigmas")
        if not math.isclose(float(sigmas[0]), s0, rel_tol=1e-4, abs_tol=1e-6):
            raise ValueError(f"sigmas: the schedule starts at sigma {float(sigmas[0]):.5g} but the latent was inverted "
                             f"to sigma {s0:.5g}; leave sigmas unconnected to re-derive the schedule")
        return sigmas
    check_steps(steps, "steps")
    out = schedule(ms, float(info["t_start"]), int(steps))
    if not math.isclose(float(out[0]), s0, rel_tol=1e-4, abs_tol=1e-6):
        raise ValueError(f"model: re-derived start sigma {float(out[0]):.5g} does not match the stored {s0:.5g}")
    return out


def restore(model, positive, negative, latent: dict, steps: int, cfg: float, sigmas=None) -> dict:
    sig = restore_sigmas(model, latent, steps, sigmas)
    samples = run_guided(model, positive, negative, cfg, latent, sig, "sample")
    out = {k: v for k, v in latent.items() if k != KEY}
    out["samples"] = samples
    return out


class DDIMInvert(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TR_DDIMInvert",
            display_name="DDIM Invert (Temporal Restore)",
            category="temporal_restore/sampling",
            description="Deterministic DDIM inversion (TDM Eq. 4): turns the clean video latents into the noise "
                        "latents they come from, for TR_DDIMRestore. Records the schedule in the latent.",
            inputs=[
                io.Model.Input("model", tooltip="The model (with its patches, e.g. SW-CFA) used for the inversion."),
                io.Conditioning.Input("positive", tooltip="Conditioning of the inversion: the source prompt that describes "
                                      "the clip as it is (the empty prompt, with ControlNet). With the restore's own "
                                      "task prompt here, the restore would nearly undo the inversion."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning (only used when cfg > 1)."),
                io.Latent.Input("latent", tooltip="The encoded input frames (VAEEncode of the degraded video)."),
                io.Int.Input("steps", default=10, min=1, max=1000,
                             tooltip="Inversion steps (DDIM-uniform timesteps)."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=30.0, step=0.1,
                               tooltip="Guidance during inversion; 1 (no guidance) inverts most faithfully."),
                io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="How far up the noise schedule to invert (1 = pure noise level)."),
                io.Int.Input("refine", default=0, min=0, max=10,
                             tooltip="Fixed-point refinements per step (0 = plain DDIM inversion, Eq. 4). Each one "
                                     "costs a model call and makes the inversion closer to the exact inverse of "
                                     "DDIM sampling on the same schedule."),
            ],
            outputs=[io.Latent.Output(display_name="inverted")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent, steps, cfg, denoise, refine=0) -> io.NodeOutput:
        check_finite(latent, "latent")
        return io.NodeOutput(invert(model, positive, negative, latent, steps, cfg, denoise, refine))


class DDIMRestore(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TR_DDIMRestore",
            display_name="DDIM Restore (Temporal Restore)",
            category="temporal_restore/sampling",
            description="Deterministic DDIM sampling from a TR_DDIMInvert latent; the start sigma is taken from the "
                        "inversion record so the schedule always matches.",
            inputs=[
                io.Model.Input("model", tooltip="The model (with its patches, e.g. SW-CFA) used for restoration."),
                io.Conditioning.Input("positive", tooltip="Positive conditioning (e.g. the task prompt with ControlNet)."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning."),
                io.Latent.Input("latent", tooltip="The output of TR_DDIMInvert (refused otherwise)."),
                io.Int.Input("steps", default=32, min=1, max=1000,
                             tooltip="Sampling steps, from the inverted sigma down to 0 (DDIM-uniform timesteps)."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance scale."),
                io.Sigmas.Input("sigmas", optional=True,
                                tooltip="Optional explicit schedule; must start at the sigma the latent was inverted "
                                        "to (overrides steps)."),
            ],
            outputs=[io.Latent.Output(display_name="restored")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent, steps, cfg, sigmas=None) -> io.NodeOutput:
        return io.NodeOutput(restore(model, positive, negative, latent, steps, cfg, sigmas))


NODES = [DDIMInvert, DDIMRestore]
