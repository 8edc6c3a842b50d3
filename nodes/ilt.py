"""TR_ILTChunker and TR_RescheduledNoise: sample a clip of any length in overlapping windows (DiffVSR §3.4,
Eq. 4) with rescheduled noise.

The nodes only validate and hand over: the orchestration is ``_chunked.chunked_sample`` (modes, noise,
boundary K/V: see its docstring), the guider ``_windowed.WindowedGuider``, the per-window conditioning
``_conditioning``, the boundary keys/values ``_boundary_kv``; the maths ``pipelines/ilt.py``.
"""
from __future__ import annotations

import logging

from comfy_api.latest import io

from ..pipelines import ilt
from ._checks import check_finite, check_steps
from ._chunked import MODES, chunked_sample

log = logging.getLogger("temporal_restore")

__all__ = ["ILTChunker", "RescheduledNoise", "chunked_sample", "resolve_sampler", "NODES"]


def resolve_sampler(model, sampler, sigmas, sampler_name, scheduler, steps, denoise):
    import comfy.samplers

    if sampler is None:
        sampler = comfy.samplers.sampler_object(sampler_name)
    if sigmas is None:
        ks = comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler=sampler_name,
                                     scheduler=scheduler, denoise=denoise)
        sigmas = ks.sigmas
    return sampler, sigmas


def _sampler_names():
    try:
        import comfy.samplers

        return list(comfy.samplers.KSampler.SAMPLERS), list(comfy.samplers.KSampler.SCHEDULERS)
    except Exception:  # schema built outside ComfyUI
        return ["euler"], ["normal"]


MODE_TOOLTIP = ("post (default): DiffVSR as published (§3.4): each window sampled on its own, final latents fused "
                "with Eq. 4. fused (this pack's extension): all windows advance together, predictions blended "
                "with Eq. 4 at every step. sequential (extension): one window after another, the previous "
                "window's per-step predictions carried into the overlap (carry_state). Seam ratio on the demo "
                "model (scripts/ilt_seams.py: 16 frames, window 8, overlap 4, SW-CFA; 1 = seamless): post "
                "1.268, fused 1.268, sequential 1.267, so the paper's mode is the default.")


class ILTChunker(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        samplers, schedulers = _sampler_names()
        return io.Schema(
            node_id="TR_ILTChunker",
            display_name="Interweaved Latent Transition Chunker (Temporal Restore)",
            category="temporal_restore/sampling",
            description="Samples a clip of any length in overlapping windows, blended with ILT (DiffVSR Eq. 4) "
                        "and rescheduled noise (mode post is the paper's; fused and sequential are extensions).",
            inputs=[
                io.Model.Input("model", tooltip="The (patched) diffusion model."),
                io.Conditioning.Input("positive", tooltip="Positive conditioning; per-frame batches and "
                                      "ControlNet hints with one entry per frame are sliced per window."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning (sliced like positive)."),
                io.Latent.Input("latent", tooltip="Latent clip [frames, C, h, w] (e.g. VAEEncode of the frames)."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Seed of the noise (base noise frames for rescheduling)."),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale."),
                io.Combo.Input("sampler_name", options=samplers, default="euler" if "euler" in samplers else samplers[0],
                               tooltip="Sampler used when no SAMPLER input is connected."),
                io.Combo.Input("scheduler", options=schedulers, default="normal" if "normal" in schedulers else schedulers[0],
                               tooltip="Scheduler used when no SIGMAS input is connected."),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Steps when no SIGMAS input is connected."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Denoise strength when no SIGMAS input is connected."),
                io.Int.Input("window", default=8, min=1, max=4096, tooltip="Frames per window (DiffVSR uses 8)."),
                io.Int.Input("overlap", default=4, min=0, max=4095,
                             tooltip="Frames shared by consecutive windows; must be smaller than window."),
                io.Combo.Input("mode", options=list(MODES), default="post",
                               tooltip=MODE_TOOLTIP),
                io.Combo.Input("noise", options=["rescheduled", "independent"], default="rescheduled",
                               tooltip="rescheduled: the same noise frames reused and reordered across overlaps "
                                       "(FreeNoise / DiffVSR). independent: ComfyUI noise for the whole clip."),
                io.Boolean.Input("carry_state", default=True,
                                 tooltip="sequential mode only (ignored by post and fused): blend the previous "
                                         "window's per-step predictions into the overlap frames."),
                io.Int.Input("boundary_kv", default=0, min=0, max=16, optional=True,
                             tooltip="Frames of the previous window whose self-attention keys/values are appended "
                                     "to every frame of the next window (0 = off; sequential and post modes keep "
                                     "them for every step)."),
                io.Sampler.Input("sampler", optional=True, tooltip="Optional SAMPLER (overrides sampler_name)."),
                io.Sigmas.Input("sigmas", optional=True, tooltip="Optional SIGMAS (overrides scheduler/steps/denoise)."),
            ],
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent, seed, cfg, sampler_name, scheduler, steps, denoise,
                window, overlap, mode, noise, carry_state, boundary_kv=0, sampler=None,
                sigmas=None) -> io.NodeOutput:
        check_finite(latent, "latent")
        if sampler is None and sigmas is None:
            check_steps(steps, "steps")
        sampler, sigmas = resolve_sampler(model, sampler, sigmas, sampler_name, scheduler, steps, denoise)
        if sigmas.shape[-1] <= 1:
            return io.NodeOutput(latent)
        out = chunked_sample(model, positive, negative, latent, seed, cfg, sampler, sigmas, window=window,
                             overlap=overlap, mode=mode, noise_mode=noise, carry_state=carry_state,
                             boundary_kv=boundary_kv)
        return io.NodeOutput(out)


class RescheduledNoiseObject:
    """NOISE for SamplerCustomAdvanced: ``window`` base noise frames reused and reordered across
    overlapping windows (:func:`pipelines.ilt.reschedule_noise`), for samplers outside the chunker."""

    def __init__(self, seed: int, window: int, overlap: int):
        self.seed, self.window, self.overlap = int(seed), int(window), int(overlap)
        ilt.plan_windows(1, self.window, self.overlap)  # validate early

    def generate_noise(self, input_latent, *args, **kwargs):
        x = input_latent["samples"]
        if x.is_nested or x.dim() < 2 or x.shape[0] < 1:
            raise ValueError(f"latent: expected [frames, ...] with at least one frame, got {tuple(x.shape)}")
        return ilt.reschedule_noise(x.shape[0], self.window, self.overlap, x.shape[1:], seed=self.seed, dtype=x.dtype)


class RescheduledNoise(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TR_RescheduledNoise",
            display_name="Rescheduled Noise (Temporal Restore)",
            category="temporal_restore/sampling",
            description="Noise whose frames repeat, reordered, every window (DiffVSR noise rescheduling / FreeNoise), "
                        "for SamplerCustomAdvanced.",
            inputs=[
                io.Int.Input("noise_seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Seed of the base noise frames."),
                io.Int.Input("window", default=8, min=1, max=4096, tooltip="Frames per window (distinct noise frames)."),
                io.Int.Input("overlap", default=4, min=0, max=4095,
                             tooltip="Frames shared by consecutive windows; must be smaller than window."),
            ],
            outputs=[io.Noise.Output(display_name="noise")],
        )

    @classmethod
    def execute(cls, noise_seed, window, overlap) -> io.NodeOutput:
        return io.NodeOutput(RescheduledNoiseObject(noise_seed, window, overlap))


NODES = [ILTChunker, RescheduledNoise]
