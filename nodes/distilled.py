"""Few-step sampling for distilled models: TR_DistilledSigmas (SIGMAS) and TR_DistilledSampler (SAMPLER).

Both plug into the stock SamplerCustom / SamplerCustomAdvanced (and the pack's chunker / recurrent
restore). The schedules and the update rule are documented in ``pipelines/distilled.py``.

Noise for the re-noising steps, first match wins:

1. ``noise_sampler`` passed by whoever calls the sampler function (k-diffusion convention);
2. a factory in ``transformer_options["temporal_restore"]["noise_sampler"]``:
   ``factory(x, seed, frame_index) -> noise_sampler(sigma, sigma_next)`` (how a NoiseShare-style
   model patch hands its correlated noise to this sampler);
3. ``per_frame`` (default): one generator per absolute frame index, read from
   ``transformer_options["temporal_restore"]["frame_index"]`` of the sampling call's model options
   (TR_RecurrentRestore sets it per frame; a list of another length than the batch is refused by
   ``_patching.frame_index``, as in every patch), else ``0..B-1``. So frames
   get the same step noise whichever window they are sampled in, as long as the caller publishes the
   indices there (TR_ILTChunker currently sets them per model call only, not for the sampler);
4. otherwise the host's own batch noise sampler (``comfy.k_diffusion.sampling.default_noise_sampler``),
   so the sampler draws exactly what stock ``lcm`` draws on that ComfyUI: since 0.33 core takes step
   noise from ``seed + 1`` on the CPU (the initial noise uses ``seed``; the same stream twice correlated
   them), 0.3.75 from ``seed``.
"""
from __future__ import annotations

import logging

import comfy.k_diffusion.sampling as k_sampling
import torch
from comfy_api.latest import io

from ..pipelines import distilled
from ._patching import model_frame_index, tr_options
from ._checks import check_family

log = logging.getLogger("temporal_restore")


def make_sampler_function(eta: float, s_noise: float, per_frame: bool):
    """A k-diffusion sampler function ``fn(model, x, sigmas, extra_args, callback, disable, noise_sampler)``."""

    @torch.no_grad()
    def sample_tr_distilled(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None,
                            **kwargs):
        extra_args = {} if extra_args is None else extra_args
        seed = extra_args.get("seed")
        if noise_sampler is None and eta > 0:
            mo = extra_args.get("model_options")
            factory = tr_options((mo or {}).get("transformer_options")).get("noise_sampler")
            idx = model_frame_index(mo, x.shape[0])
            if callable(factory):
                noise_sampler = factory(x, seed, list(idx))
            elif per_frame:
                noise_sampler = distilled.frame_noise_sampler(x, seed, idx)
            else:
                noise_sampler = k_sampling.default_noise_sampler(x, seed=seed)
        model_sampling = model.inner_model.inner_model.model_sampling

        def noise_scaling(sigma, noise, x0):
            return model_sampling.noise_scaling(sigma.reshape(()), noise.clone(), x0)

        return distilled.sample_distilled(model, x, sigmas, extra_args=extra_args, callback=callback,
                                          disable=disable, noise_sampler=noise_sampler, eta=eta,
                                          s_noise=s_noise, noise_scaling=noise_scaling)

    return sample_tr_distilled


#: families with distilled few-step checkpoints (LCM / Turbo / Hyper / TCD: SD1.5, SD2.1, SDXL); the x4
#: upscaler has none, and its linear schedule is not the one these timesteps were chosen on
SUPPORTED = ("sd15", "sd2", "sdxl")


def distilled_sigmas(model, schedule: str, steps: int, denoise: float, original_steps: int) -> torch.Tensor:
    """SIGMAS ``[steps+1]`` of the model's own noise schedule at the distilled timesteps (final 0)."""
    ms = model.get_model_object("model_sampling")
    T = int(getattr(ms, "num_timesteps", 0) or len(getattr(ms, "sigmas", [])) or 1000)
    ts = distilled.distilled_timesteps(schedule, steps, denoise, num_train_timesteps=T, original_steps=original_steps)
    sig = ms.sigma(torch.tensor(ts, dtype=torch.float32)).float().cpu()
    return torch.cat([sig, sig.new_zeros(1)])


class DistilledSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TR_DistilledSigmas",
            display_name="Distilled Sigmas (Temporal Restore)",
            category="temporal_restore/sampling",
            description="Few-step schedules of distilled models: trailing (Turbo/Hyper/TCD), LCM skipping "
                        "schedule, SD-Turbo stride-100.",
            inputs=[
                io.Model.Input("model", tooltip="The model whose noise schedule maps timesteps to sigmas."),
                io.Combo.Input("schedule", options=list(distilled.SCHEDULES), default="trailing",
                               tooltip="trailing: t_i = round(T - i*T/n) - 1 (Turbo / Hyper / TCD); "
                                       "lcm: every (50/n)-th of the 50 original LCM timesteps; "
                                       "turbo: 999, 899, ... (SD-Turbo)."),
                io.Int.Input("steps", default=4, min=1, max=distilled.MAX_STEPS,
                             tooltip="Number of sampling steps (distilled models: 1-8)."),
                io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="Fraction of the schedule to run: 1 starts from pure noise, lower "
                                       "values keep more of the input latent (restoration / img2img)."),
                io.Int.Input("original_steps", default=50, min=1, max=1000,
                             tooltip="lcm schedule only: the number of DDIM timesteps the model was distilled on."),
            ],
            outputs=[io.Sigmas.Output(display_name="sigmas")],
        )

    @classmethod
    def execute(cls, model, schedule, steps, denoise, original_steps=50) -> io.NodeOutput:
        check_family(model, SUPPORTED, "TR_DistilledSigmas", discrete=True)
        return io.NodeOutput(distilled_sigmas(model, schedule, steps, denoise, original_steps))


class DistilledSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TR_DistilledSampler",
            display_name="Distilled Sampler (Temporal Restore)",
            category="temporal_restore/sampling",
            description="Consistency-style few-step sampler (x0 predicted, re-noised to the next sigma) for "
                        "LCM / Turbo / Hyper-style models; eta 0 is deterministic DDIM.",
            inputs=[
                io.Float.Input("eta", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Share of fresh noise when re-noising: 1 = consistency / LCM sampling, "
                                       "0 = deterministic DDIM (reuses the predicted noise)."),
                io.Float.Input("s_noise", default=1.0, min=0.0, max=2.0, step=0.01,
                               tooltip="Scale of the fresh noise."),
                io.Boolean.Input("per_frame_noise", default=True,
                                 tooltip="Seed the fresh noise per absolute frame index so windows of a long clip "
                                         "get the same noise per frame (ignored when a noise sampler is provided)."),
            ],
            outputs=[io.Sampler.Output(display_name="sampler")],
        )

    @classmethod
    def execute(cls, eta, s_noise=1.0, per_frame_noise=True) -> io.NodeOutput:
        import comfy.samplers

        if not 0.0 <= float(eta) <= 1.0:
            raise ValueError(f"eta: expected a value in [0, 1], got {eta}")
        fn = make_sampler_function(float(eta), float(s_noise), bool(per_frame_noise))
        return io.NodeOutput(comfy.samplers.KSAMPLER(fn))


NODES = [DistilledSigmas, DistilledSampler]
