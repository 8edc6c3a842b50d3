"""TR_TCGuidance: ZVRD temporal consistency guidance (Eq. 8-10) as a post-CFG function.

Implemented as a **post-CFG function** (``set_model_sampler_post_cfg_function``) on a ``model.clone()``:
after CFG combines cond and uncond, the x0 estimate of all frames is moved down the gradient of the
temporal consistency loss (``pipelines/tc_guidance.py``) and the sampler continues from the guided x0.
It therefore works with every sampler and with SamplerCustom(Advanced), KSampler and the pack's
chunker (absolute ``frame_index`` selects the flow of the window). Installing twice replaces.

Semantic term (Eq. 9): with a CLIP_VISION model connected, previews of the x0 estimate are embedded
with it (resized to its input size and normalised with its mean/std, differentiably) and
``gamma * (1 - cos)`` between neighbours joins the loss. If the CLIP vision weights cannot take part in
autograd the semantic term is skipped with a warning. ComfyUI loads weights in inference mode, so a
private autograd-capable copy of the vision tower is made on first use (see ``clip_embedder``).
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from comfy_api.latest import io

from ..pipelines import tc_guidance as tcg
from ._checks import check_finite
from ._patching import Shared, clone_with_options, frame_index, install_post_cfg
from ._types import FLOW
from ._zvrd import rgb_factors, run_key, step_progress

log = logging.getLogger("temporal_restore")

#: T_TC as a fraction of the schedule: ZVRD applies the pixel term for t < 300 of 1000 (§3.3)
GUIDANCE_START = 0.7

KEY = "tc_guidance"


def _residual_forward(layer, x, mask=None, optimized_attention=None):
    x = x + layer.self_attn(layer.layer_norm1(x), mask, optimized_attention)
    return x + layer.mlp(layer.layer_norm2(x))


def _out_of_place_residuals(model) -> None:
    """ComfyUI's CLIPLayer adds its residuals in place (fine for inference, fatal for autograd). On
    OUR private copy only, each such layer gets an out-of-place forward (same maths); ComfyUI's
    classes and every other instance are untouched."""
    import types

    for mod in model.modules():
        if type(mod).__name__ == "CLIPLayer" and all(hasattr(mod, a) for a in ("self_attn", "layer_norm1", "mlp", "layer_norm2")):
            mod.forward = types.MethodType(_residual_forward, mod)


def clip_embedder(clip_vision):
    """Differentiable ``rgb [T,3,h,w] (0..1) -> image embeddings [T,D]`` with a ComfyUI CLIP vision model.

    ComfyUI loads models inside ``torch.inference_mode()``, and inference-mode weights cannot take part
    in autograd, so the first call makes a private copy of the vision tower with normal tensors
    (frozen, on the model's load device): the semantic term costs one extra copy of the CLIP vision
    weights in memory while guidance is active."""
    import copy

    holder = {}

    def tower():
        if "model" not in holder:
            with torch.inference_mode(False), torch.no_grad():
                m = copy.deepcopy(clip_vision.model)
                for p in list(m.parameters()) + list(m.buffers()):
                    p.data = p.data.clone()
                m.requires_grad_(False)
                _out_of_place_residuals(m)
                holder["model"] = m.to(clip_vision.load_device).eval()
        return holder["model"]

    def embed(rgb):
        model = tower()
        size = int(getattr(clip_vision, "image_size", 224))
        mean = torch.tensor(getattr(clip_vision, "image_mean", [0.48145466, 0.4578275, 0.40821073]),
                            device=rgb.device, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(getattr(clip_vision, "image_std", [0.26862954, 0.26130258, 0.27577711]),
                           device=rgb.device, dtype=torch.float32).view(1, 3, 1, 1)
        pix = F.interpolate(rgb.float(), size=(size, size), mode="bilinear", align_corners=False)
        pix = ((pix - mean) / std).to(clip_vision.load_device)
        out = model(pixel_values=pix, intermediate_output=-2)
        return out[2].float().to(rgb.device)

    return embed


class GuidancePostCFG(Shared):
    def __init__(self, guide: tcg.TCGuidance):
        self.guide = guide

    def __call__(self, args, *rest, **kwargs):
        x0 = args["denoised"]
        if self.guide.scale != 0.0:  # a non-finite x0 would silently poison the flow-warp gradient
            check_finite(x0, "latent")
        to = (args.get("model_options") or {}).get("transformer_options", {})
        opts = dict(to)
        opts["sigmas"] = args.get("sigma")
        progress = step_progress(opts)
        if progress is None:
            return x0
        idx = frame_index(to, x0.shape[0])
        try:
            return self.guide(x0, progress, idx, run_key(to))
        except RuntimeError as e:  # e.g. CLIP vision weights that refuse autograd
            if self.guide.embed is None:
                raise
            log.warning("temporal_restore: semantic guidance term disabled (%s)", e)
            self.guide.embed = None
            return self.guide(x0, progress, idx, run_key(to))


def install_tc_guidance(model, scale=0.1, guidance_start=None, flow=None, clip_vision=None, gamma=0.1):
    guidance_start = GUIDANCE_START if guidance_start is None else guidance_start
    factors, bias = rgb_factors(model)
    guide = tcg.TCGuidance(scale=scale, guidance_start=guidance_start, gamma=gamma, input_flow=flow,
                           embed=clip_embedder(clip_vision) if clip_vision is not None else None,
                           rgb_factors=factors, rgb_bias=bias)
    m = clone_with_options(model, KEY, {"scale": float(scale), "guidance_start": float(guidance_start),
                                        "gamma": float(gamma), "flow": flow is not None,
                                        "semantic": clip_vision is not None})
    install_post_cfg(m, KEY, GuidancePostCFG(guide))
    return m, guide


class TCGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TR_TCGuidance",
            display_name="Temporal Consistency Guidance (Temporal Restore)",
            category="temporal_restore/guidance",
            description="ZVRD temporal consistency guidance: during sampling the x0 estimate is pushed towards "
                        "agreeing with its flow-warped previous frame (and, with a CLIP vision model, towards "
                        "similar CLIP embeddings of neighbouring frames).",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to patch (a patched clone is returned)."),
                io.Float.Input("scale", default=0.1, min=0.0, max=10.0, step=0.01,
                               tooltip="Gradient scale s: x0 <- x0 - s * grad(L_TC). 0 disables guidance "
                                       "(bit-identical to the unpatched model)."),
                io.Float.Input("guidance_start", default=GUIDANCE_START, min=0.0, max=1.0, step=0.01,
                               tooltip="T_TC as a fraction of the schedule: the pixel (flow-warp) term is applied "
                                       "from this point of sampling on (the x0 estimate is too blurry for flow "
                                       "before, per the paper). Default 0.7: the paper's t < 300 of 1000; this "
                                       "pack's earlier default was 0.5."),
                FLOW.Input("flow", optional=True,
                           tooltip="Flow of the input frames (TR_FlowEstimate). Without it the flow is estimated "
                                   "on the previous step's x0 preview each step, as in the paper (slower)."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="Optional CLIP vision model for the semantic term (Eq. 9)."),
                io.Float.Input("gamma", default=0.1, min=0.0, max=100.0, step=0.01,
                               tooltip="Weight of the semantic (CLIP) term; used only with a CLIP vision model."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, scale, guidance_start, gamma, flow=None, clip_vision=None) -> io.NodeOutput:
        return io.NodeOutput(install_tc_guidance(model, scale, guidance_start, flow, clip_vision, gamma)[0])


NODES = [TCGuidance]
