"""ZVRD early stopping: TR_EarlyStop (SAMPLER wrapper) and TR_EarlyStopSigmas (SIGMAS).

Both stop sampling at progress ``stop_at`` (T_ES as a fraction of the schedule) and return the x0
estimate of that step: the schedule becomes ``sigmas[:k+1] ++ [0]`` with ``k = round(stop_at * N)``
(``pipelines/early_stop.py``), whose last step to sigma 0 returns the model's x0 at ``sigmas[k]``.

* ``TR_EarlyStop`` wraps the SAMPLER (recommended): ComfyUI still publishes the *full* schedule as
  ``sample_sigmas`` in the model options, so the progress thresholds of TR_SLRAttention / TR_TCGuidance
  keep their meaning. Composes with TR_NoiseShareSampler in either order.
* ``TR_EarlyStopSigmas`` truncates a SIGMAS (e.g. after BasicScheduler); then ``sample_sigmas`` is the
  truncated schedule and the other thresholds are fractions of that shorter schedule.
"""
from __future__ import annotations

from comfy_api.latest import io

from ..pipelines import early_stop as es
from ._zvrd import SamplerWrapper


class EarlyStopSampler(SamplerWrapper):
    def __init__(self, inner, stop_at: float):
        super().__init__(inner)
        es.stop_index(1, stop_at)  # validates
        self.stop_at = float(stop_at)

    def sample(self, model_wrap, sigmas, *args, **kwargs):
        cut = es.early_stop_sigmas(sigmas, self.stop_at)
        return self.inner.sample(model_wrap, cut, *args, **kwargs)


_STOP_TOOLTIP = ("T_ES as a fraction of the schedule: sampling stops at the step at this point and returns that "
                 "step's x0 estimate (1 = no early stop, 0 = one-step x0 prediction).")


class EarlyStop(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TR_EarlyStop",
            display_name="Early Stop (Temporal Restore)",
            category="temporal_restore/sampling",
            description="ZVRD early stopping: wraps a sampler so sampling stops at T_ES and the x0 estimate of "
                        "that step is the result (less late high-frequency flicker and noise).",
            inputs=[
                io.Sampler.Input("sampler", tooltip="The sampler to wrap (any KSamplerSelect sampler or a pack "
                                                    "sampler wrapper)."),
                io.Float.Input("stop_at", default=0.8, min=0.0, max=1.0, step=0.01, tooltip=_STOP_TOOLTIP),
            ],
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def execute(cls, sampler, stop_at) -> io.NodeOutput:
        return io.NodeOutput(EarlyStopSampler(sampler, stop_at))


class EarlyStopSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TR_EarlyStopSigmas",
            display_name="Early Stop Sigmas (Temporal Restore)",
            category="temporal_restore/sampling",
            description="ZVRD early stopping on a schedule: keeps the steps up to T_ES and ends with a final "
                        "denoise to 0, so the sampler returns the x0 estimate of the T_ES step.",
            inputs=[
                io.Sigmas.Input("sigmas", tooltip="The schedule to truncate (e.g. from BasicScheduler)."),
                io.Float.Input("stop_at", default=0.8, min=0.0, max=1.0, step=0.01, tooltip=_STOP_TOOLTIP),
            ],
            outputs=[io.Sigmas.Output()],
        )

    @classmethod
    def execute(cls, sigmas, stop_at) -> io.NodeOutput:
        return io.NodeOutput(es.early_stop_sigmas(sigmas, stop_at))


NODES = [EarlyStop, EarlyStopSigmas]
