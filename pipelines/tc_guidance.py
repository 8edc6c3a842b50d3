"""Temporal consistency guidance (ZVRD Eq. 8-10, Table 5 TCG).

Losses on the x0 estimate ``x~0`` of all frames of a clip:

* pixel-level (Eq. 8): ``L_PC = sum_i sum_p M_i(p) |x~0^i(p) - warp(x~0^{i-1}, f_i)(p)|``, ``f_i`` the flow
  frame ``i`` -> ``i-1`` (so the backward warp pulls frame ``i-1`` onto frame ``i``), ``M_i = 1 -
  occlusion`` of that flow (forward-backward check). Computed on the linear RGB preview of the latent
  x0 (model latent-to-RGB factors, see :func:`.slr_attention.latent_to_rgb`, unclamped so the loss is
  differentiable everywhere) at latent resolution: the paper's pixel-space loss without a VAE decode.
* semantic (Eq. 9): ``L_SC = sum_i 1 - cos(E_i, E_{i-1})`` with ``E`` image embeddings of the previews
  from a user-supplied differentiable ``embed(rgb [T,3,h,w]) -> [T,D]`` (a CLIP vision model).
* ``L_TC = L_PC + gamma L_SC`` (Eq. 10).

Guidance (GDP-style, the paper's ``N(mu + s grad, sigma^2)``): once the sampling progress reaches
``guidance_start`` (``T_TC``, fraction of the schedule; the semantic term is used at every step, the
pixel term only from ``T_TC`` on, as in the paper), the x0 estimate is moved down the gradient,

    x~0 <- x~0 - s * grad_{x~0} L_TC(x~0),

and the sampler continues from the guided x0 (it derives its step direction from it). The gradient
is taken w.r.t. x0 only (no backpropagation through the UNet), so one guidance step costs about a
warp and its adjoint. The loss is a sum (not a mean), so the per-pixel step does not depend on the
resolution or frame count. ``s = 0`` returns the input tensor itself (bit-identical sampling).

Flow: the FLOW of the input frames when given, else the flow of the previous step's x0 preview
(the paper's choice; OpenCV DIS, see :func:`.slr_attention.preview_flow`), which is unavailable on
the first guided step of a run if the previous step's x0 is unknown (that step is then not guided).
"""
from __future__ import annotations

import logging
from typing import Callable, Hashable, Optional, Sequence

import torch
import torch.nn.functional as F

from .checks import check_latents, check_unit
from .flow import FlowField, warp
from .slr_attention import check_flow_covers, latent_to_rgb, preview_flow

log = logging.getLogger("temporal_restore")

Tensor = torch.Tensor
EmbedFn = Callable[[Tensor], Tensor]


def pc_loss(rgb: Tensor, flow: FlowField) -> Tensor:
    """Eq. 8 on ``rgb [T,3,h,w]`` with ``flow`` a :class:`FlowField` of the ``T`` frames on ``h x w``."""
    if rgb.ndim != 4:
        raise ValueError(f"rgb: expected [frames,3,h,w], got {tuple(rgb.shape)}")
    T, _, h, w = rgb.shape
    if T < 2:
        return rgb.sum() * 0.0
    if flow.num_frames != T or (flow.height, flow.width) != (h, w):
        raise ValueError(f"flow: expected a FLOW of {T} frames on {h}x{w}, got {flow!r}")
    return _pc(rgb, flow.backward, flow.occlusion_bwd)


def _pc(rgb: Tensor, bwd: Tensor, occ: Tensor) -> Tensor:
    bwd = bwd.detach().clone().to(device=rgb.device, dtype=rgb.dtype)
    m = 1.0 - occ.detach().clone().to(device=rgb.device, dtype=rgb.dtype)
    warped = warp(rgb[:-1], bwd)
    return (m * (rgb[1:] - warped).abs()).sum()


def sc_loss(emb: Tensor) -> Tensor:
    """Eq. 9 summed over neighbouring pairs: ``emb [T,D]`` -> ``sum_i 1 - cos(E_i, E_{i-1})``."""
    if emb.ndim != 2:
        raise ValueError(f"emb: expected embeddings [frames,D], got {tuple(emb.shape)}")
    if emb.shape[0] < 2:
        return emb.sum() * 0.0
    return (1.0 - F.cosine_similarity(emb[1:], emb[:-1], dim=-1)).sum()


def guide_x0(x0: Tensor, flow: Optional[FlowField], scale: float, gamma: float = 0.0,
             embed: Optional[EmbedFn] = None, rgb_factors=None, rgb_bias=None, pixel: bool = True
             ) -> tuple[Tensor, float]:
    """One guidance step on ``x0 [T,C,h,w]``: returns ``(x0 - scale * grad L_TC, L_TC before)``.

    ``flow`` (FlowField of the T frames, any grid; resized to ``h x w``) is needed for the pixel term;
    ``embed`` for the semantic term (weight ``gamma``). Works inside ComfyUI's inference mode (the
    computation runs on detached copies with autograd locally enabled). ``scale == 0`` or nothing to
    compute returns ``(x0, 0.0)`` with the very same tensor.
    """
    check_latents(x0, "x0")
    scale, gamma = float(scale), float(gamma)
    use_pc = pixel and flow is not None and x0.shape[0] > 1
    use_sc = embed is not None and gamma != 0.0 and x0.shape[0] > 1
    if scale == 0.0 or not (use_pc or use_sc):
        return x0, 0.0
    T, C, h, w = x0.shape
    with torch.inference_mode(False), torch.enable_grad():
        x = x0.detach().clone().float().requires_grad_(True)
        rgb = latent_to_rgb(x, rgb_factors, rgb_bias, clamp=False)
        loss = x.new_zeros(())
        if use_pc:
            f = flow.resized(h, w)
            if f.num_frames != T:
                raise ValueError(f"flow: expected a FLOW of {T} frames, got {f!r}")
            loss = loss + _pc(rgb, f.backward, f.occlusion_bwd)
        if use_sc:
            loss = loss + gamma * sc_loss(embed(rgb.clamp(0.0, 1.0)))
        (grad,) = torch.autograd.grad(loss, x)
    out = (x0.float() - scale * grad.to(x0.device)).to(x0.dtype)
    return out, float(loss.detach())


class TCGuidance:
    """Per-run guidance state (``x0`` of the previous step for the x0-flow) around :func:`guide_x0`.

    ``__call__(x0, progress, frame_index, run_key)`` returns the guided x0 for one model evaluation.
    """

    def __init__(self, scale: float, guidance_start: float = 0.5, gamma: float = 0.0,
                 input_flow: Optional[FlowField] = None, embed: Optional[EmbedFn] = None,
                 rgb_factors=None, rgb_bias=None):
        if float(scale) < 0:
            raise ValueError(f"scale: expected a guidance scale >= 0, got {scale}")
        check_unit(guidance_start, "guidance_start", "a fraction of the schedule")
        self.scale = float(scale)
        self.guidance_start = float(guidance_start)
        self.gamma = float(gamma)
        self.input_flow = input_flow
        self.embed = embed
        self.rgb_factors, self.rgb_bias = rgb_factors, rgb_bias
        self._run_key = None
        self._prev: dict = {}
        self._flows: dict = {}
        self.guided_steps = 0
        self.last_loss = None

    def new_run(self, run_key: Hashable) -> None:
        if run_key != self._run_key:
            self._run_key = run_key
            self._prev.clear()
            self._flows.clear()

    def flow_for(self, frame_index: Sequence[int], x0_shape) -> Optional[FlowField]:
        key = tuple(int(i) for i in frame_index)
        if self.input_flow is not None:
            if key not in self._flows:
                self._flows[key] = self.input_flow.select(list(key)).resized(x0_shape[-2], x0_shape[-1])
            return self._flows[key]
        prev = self._prev.get(key)
        if prev is None or prev.shape != tuple(x0_shape):
            return None
        return preview_flow(latent_to_rgb(prev, self.rgb_factors, self.rgb_bias))

    def __call__(self, x0: Tensor, progress: float, frame_index: Sequence[int], run_key: Hashable = None) -> Tensor:
        if self.scale == 0.0:
            return x0
        self.new_run(run_key)
        key = tuple(int(i) for i in frame_index)
        check_flow_covers(self.input_flow, key)
        pixel = progress >= self.guidance_start
        use_sc = self.embed is not None and self.gamma != 0.0
        flow = self.flow_for(key, x0.shape) if pixel else None
        if self.input_flow is None:
            self._prev[key] = x0.detach()
        if not pixel and not use_sc:
            return x0
        out, loss = guide_x0(x0, flow, self.scale, self.gamma, self.embed if use_sc else None,
                             self.rgb_factors, self.rgb_bias, pixel=pixel)
        if out is not x0:
            self.guided_steps += 1
            self.last_loss = loss
        return out
