"""TR_SLRAttention: ZVRD SLR temporal attention (Eq. 5-7) on the UNet decoder's self-attention.

* attn1 *replace* patches on every transformer of the decoder (``output`` blocks), on a
  ``model.clone()``; settings recorded under ``transformer_options["temporal_restore"]["slr_attention"]``.
  Installing twice replaces (the previous SLR patch is unwrapped, never stacked). A foreign attn1
  replace patch already on a block is kept and used for the cross-neighbour attention itself.
* Stage 2 (trajectory attention) runs on the decoder blocks at the largest attention resolution, read
  off the model (SD1.5: output 9-11), once the progress reaches ``trajectory_start``.
* The x0 estimate of each model evaluation is recorded by a post-CFG function (the next step's
  trajectories need the previous step's x0); its preview is made with the model's latent-to-RGB
  factors (see ``pipelines/slr_attention.py``).
* CFG: the batch is split into cond/uncond chunks (``chunk_layout``), trajectories are computed per
  chunk from that chunk's keys; chunks never mix. Windows of a longer clip use the chunker's
  absolute ``frame_index`` for neighbours and for selecting the input FLOW.
* ControlNet: ComfyUI's ControlNet has no decoder, so these patches never run there.
"""
from __future__ import annotations

import logging

from comfy_api.latest import io

from ..pipelines import slr_attention as slr
from ._checks import UNET_FAMILIES, check_family
from ._patching import (Shared, chunk_layout, clone_with_options, fallback_attention, frame_index,
                        install_attn1_replace, install_post_cfg)
from ._tiled import tile_of
from ._types import FLOW
from ._zvrd import rgb_factors, run_key, step_progress

log = logging.getLogger("temporal_restore")

#: T_TA as a fraction of the schedule: ZVRD applies trajectory attention for t < 100 of 1000 (§3.2)
TRAJECTORY_START = 0.9

KEY = "slr_attention"


def decoder_attn1(model) -> tuple[list[tuple[int, int]], set[int]]:
    """``([(output block id, transformer index)], {ids at the largest attention resolution})``.

    Resolution levels are counted by the upsampling layers met while walking the decoder; the
    largest attention resolution is the deepest level that still has attention."""
    from comfy.ldm.modules.attention import BasicTransformerBlock, SpatialTransformer
    from comfy.ldm.modules.diffusionmodules.openaimodel import Upsample

    unet = model.get_model_object("diffusion_model")
    found, level_of = [], {}
    level = 0
    for i, blk in enumerate(unet.output_blocks):
        n_tb = 0
        for m in blk.modules():
            if isinstance(m, SpatialTransformer):  # x4 upscaler: some attn1 attend to the text, not patched
                n_tb += sum(1 for t in m.transformer_blocks
                            if isinstance(t, BasicTransformerBlock) and not t.disable_self_attn)
        for t in range(n_tb):
            found.append((i, t))
        if n_tb:
            level_of[i] = level
        if any(isinstance(m, Upsample) for m in blk.modules()):
            level += 1
    if not found:
        raise ValueError("model: expected a UNet with self-attention in its decoder (output blocks)")
    top = max(level_of.values())
    return found, {i for i, lv in level_of.items() if lv == top}


class SLRPatch(Shared):
    """attn1 replace patch ``(q, k, v, extra_options) -> out`` sharing one :class:`SLRAttention` state."""

    def __init__(self, state: slr.SLRAttention, largest: bool, prev=None):
        self.state, self.largest, self.prev = state, bool(largest), prev

    def __call__(self, q, k, v, extra_options, *args, **kwargs):
        n_chunks, frames = chunk_layout(extra_options, q.shape[0])
        idx = frame_index(extra_options, frames)
        heads = extra_options["n_heads"]
        progress = step_progress(extra_options)
        self.state.new_run(run_key(extra_options))
        act = extra_options.get("activations_shape")
        hw = tuple(act[-2:]) if act is not None else None
        largest = self.largest and hw is not None and hw[0] * hw[1] == q.shape[1] and progress is not None
        self.state.attention = fallback_attention(self.prev, extra_options)
        given = list(extra_options.get("cond_or_uncond") or [0])
        labels = [given[c] if c < len(given) else c for c in range(n_chunks)]
        return self.state(q, k, v, heads, idx, chunk=labels, hw=hw,
                          progress=progress if progress is not None else 0.0, largest=largest,
                          region=tile_of(extra_options))


class X0Recorder(Shared):
    """post-CFG function: stores the x0 estimate (CFG result) for the next step's trajectories."""

    def __init__(self, state: slr.SLRAttention):
        self.state = state

    def __call__(self, args, *rest, **kwargs):
        x0 = args["denoised"]
        to = (args.get("model_options") or {}).get("transformer_options", {})
        self.state.new_run(run_key(to))
        idx = frame_index(to, x0.shape[0])
        self.state.record_x0(x0, tuple(idx))
        return x0


def install_slr(model, flow=None, trajectory_start=None, strength=1.0, search_radius=3, patch_radius=1,
                x0_flow=True):
    """Clone ``model`` and install SLR attention on its decoder. Returns ``(clone, state)``."""
    check_family(model, UNET_FAMILIES, "TR_SLRAttention")
    blocks, largest = decoder_attn1(model)
    factors, bias = rgb_factors(model)
    trajectory_start = TRAJECTORY_START if trajectory_start is None else trajectory_start
    state = slr.SLRAttention(trajectory_start=trajectory_start, strength=strength, search_radius=search_radius,
                             patch_radius=patch_radius, input_flow=flow, x0_flow=x0_flow,
                             rgb_factors=factors, rgb_bias=bias)
    settings = {"trajectory_start": float(trajectory_start), "strength": float(strength),
                "search_radius": int(search_radius), "patch_radius": int(patch_radius),
                "x0_flow": bool(x0_flow), "flow": flow is not None, "largest_blocks": sorted(largest)}
    m = clone_with_options(model, KEY, settings)
    for number, t_index in blocks:
        install_attn1_replace(m, KEY, lambda prev, n=number: SLRPatch(state, n in largest, prev), "output", number,
                              t_index)
    install_post_cfg(m, KEY, X0Recorder(state))
    log.debug("SLR attention on %d decoder transformers, trajectories on output %s", len(blocks), sorted(largest))
    return m, state


class SLRAttention(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TR_SLRAttention",
            display_name="Short-Long-Range Temporal Attention (Temporal Restore)",
            category="temporal_restore/attention",
            description="ZVRD SLR temporal attention: decoder self-attention looks at the previous and next "
                        "frames (cross-neighbour-frame attention), and late in sampling follows each token's "
                        "self-corrected trajectory through the clip (flow, feature similarity, best so far).",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to patch (a patched clone is returned; the "
                                                 "input model is left untouched)."),
                FLOW.Input("flow", optional=True,
                           tooltip="Optional flow of the input frames (TR_FlowEstimate): an extra flow-based "
                                   "trajectory candidate. Without it, only the flow of the x0 estimate is used."),
                io.Float.Input("trajectory_start", default=TRAJECTORY_START, min=0.0, max=1.0, step=0.01,
                               tooltip="T_TA as a fraction of the schedule: trajectory attention runs from this "
                                       "point of sampling on (0 = from the first step, 1 = never). Default 0.9: the "
                                       "paper's setting (t < 100 of 1000, the last 10%); this pack's earlier "
                                       "default was 0.5 (demo model, full ZVRD row: PSNR 23.92 -> 24.45, warping "
                                       "error 0.0240 -> 0.0246, flicker 0.0018 -> 0.0017 with guidance_start 0.7)."),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Weight of the trajectory attention output over the cross-neighbour output "
                                       "(1 = the paper: trajectory attention replaces it; 0 = off)."),
                io.Int.Input("search_radius", default=3, min=0, max=16,
                             tooltip="Similarity-based trajectories: tokens searched within this many tokens of "
                                     "the same position in the neighbouring frame."),
                io.Int.Input("patch_radius", default=1, min=0, max=8,
                             tooltip="Warp error of a candidate trajectory is measured on a (2r+1)^2 patch of the "
                                     "x0 preview around each token."),
                io.Boolean.Input("x0_flow", default=True,
                                 tooltip="Estimate optical flow (OpenCV DIS) on the previous step's x0 preview each "
                                         "step, as in the paper. Off: only the input flow and similarity."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, trajectory_start, strength, search_radius, patch_radius, x0_flow,
                flow=None) -> io.NodeOutput:
        return io.NodeOutput(install_slr(model, flow, trajectory_start, strength, search_radius, patch_radius,
                                         x0_flow)[0])


NODES = [SLRAttention]
