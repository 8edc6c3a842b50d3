"""ZVRD spatial-temporal noise sharing (Eq. 11): TR_NoiseShare (NOISE) and TR_NoiseShareSampler (SAMPLER).

* ``TR_NoiseShare`` -> NOISE for SamplerCustomAdvanced: the initial noise is one field shared by all
  frames, blended along the flow (``pipelines/noise_share.py``). A latent ``batch_index`` (frames picked
  from a longer batch) selects the matching frames of the flow.
* ``TR_NoiseShareSampler`` wraps a SAMPLER: the per-step noise of ancestral / SDE samplers (their
  k-diffusion ``noise_sampler`` argument) becomes shared + flow-blended noise too, with the settings of
  the TR_NoiseShare connected to it. Deterministic samplers (euler, dpmpp_2m, ...) take no step noise
  and are left unchanged. Composes with TR_EarlyStop in either order. The chunker's absolute
  ``frame_index`` (in the model options) selects the flow of the window.
"""
from __future__ import annotations

import logging

from comfy_api.latest import io

from ..pipelines import noise_share as nsh
from ._types import FLOW
from ._checks import check_latent
from ._patching import model_frame_index
from ._zvrd import SamplerWrapper, with_sampler_options

log = logging.getLogger("temporal_restore")


class SharedNoise:
    """A NOISE object (``seed`` + ``generate_noise(input_latent)``) backed by :class:`NoiseShare`."""

    def __init__(self, share: nsh.NoiseShare):
        self.share = share
        self.seed = share.seed

    def generate_noise(self, input_latent, *args, **kwargs):
        lat = check_latent(input_latent, "latent")
        idx = input_latent.get("batch_index")
        if idx is not None and (self.share.flow is None or len(idx) != lat.shape[0]):
            idx = None
        return self.share.initial(tuple(lat.shape), dtype=lat.dtype, device="cpu", frame_index=idx)


class NoiseShareSampler(SamplerWrapper):
    def __init__(self, inner, share: nsh.NoiseShare):
        super().__init__(inner)
        self.share = share

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, *args, **kwargs):
        idx = model_frame_index(extra_args.get("model_options"), noise.shape[0])
        ns = self.share.step_sampler(noise, frame_index=idx if self.share.flow is not None else None)
        inner = with_sampler_options(self.inner, noise_sampler=ns)
        return inner.sample(model_wrap, sigmas, extra_args, callback, noise, *args, **kwargs)


class NoiseShare(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TR_NoiseShare",
            display_name="Noise Share (Temporal Restore)",
            category="temporal_restore/sampling",
            description="ZVRD spatial-temporal noise sharing: the same noise for every frame, blended along the "
                        "optical flow in moving areas (Eq. 11). Use as the noise of SamplerCustomAdvanced, and "
                        "with TR_NoiseShareSampler for the step noise of ancestral/SDE samplers.",
            inputs=[
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Seed of the shared noise (a seeded generator; the global RNG is not used)."),
                io.Float.Input("blend", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="lambda of Eq. 11: weight of a frame's own noise against the flow-warped "
                                       "noise of the previous frame in non-occluded areas (1 = no blending)."),
                io.Boolean.Input("variance_preserving", default=True,
                                 tooltip="On: rescale the blend to unit variance (recommended). Off: Eq. 11 exactly "
                                         "as in the paper, which lowers the noise variance in moving areas."),
                io.Boolean.Input("blend_initial", default=True,
                                 tooltip="Also blend the initial noise along the flow (off: the initial noise is "
                                         "simply identical for all frames)."),
                FLOW.Input("flow", optional=True,
                           tooltip="Flow of the input frames (TR_FlowEstimate). Without it the noise is shared "
                                   "but not blended."),
            ],
            outputs=[io.Noise.Output()],
        )

    @classmethod
    def execute(cls, seed, blend, variance_preserving, blend_initial, flow=None) -> io.NodeOutput:
        return io.NodeOutput(SharedNoise(nsh.NoiseShare(seed, flow, blend, variance_preserving, blend_initial)))


class NoiseShareSamplerNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TR_NoiseShareSampler",
            display_name="Noise Share Sampler (Temporal Restore)",
            category="temporal_restore/sampling",
            description="Wraps a sampler so the fresh noise of each ancestral/SDE step is shared across frames "
                        "and blended along the flow (ZVRD Eq. 11), with the settings of a TR_NoiseShare.",
            inputs=[
                io.Sampler.Input("sampler", tooltip="The sampler to wrap (e.g. KSamplerSelect euler_ancestral, "
                                                    "dpmpp_2m_sde). Deterministic samplers are unchanged."),
                io.Noise.Input("noise", tooltip="A TR_NoiseShare output: seed, blend and flow of the step noise."),
            ],
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def execute(cls, sampler, noise) -> io.NodeOutput:
        if not isinstance(noise, SharedNoise):
            raise ValueError(f"noise: expected the output of TR_NoiseShare, got {type(noise).__name__}")
        return io.NodeOutput(NoiseShareSampler(sampler, noise.share))


NODES = [NoiseShare, NoiseShareSamplerNode]
