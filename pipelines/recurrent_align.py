"""Recurrent flow-aligned conditioning for per-frame restoration (D2-VR's motion-compensated
conditioning from the previous frame, with a confidence mask in the spirit of its DRFA module).

Frames are restored in order, one at a time (or in small groups, see ``recurrent_restore``). For
frame ``t > 0``:

1. **Flow.** The backward flow ``f_t = flow(t -> t-1)`` and the forward flow ``t-1 -> t`` are
   measured between the *degraded* frames ``y_{t-1}, y_t`` (a given :class:`FlowField` or OpenCV
   DIS per pair). Degraded-to-degraded flow is used (not restored-to-degraded) because both frames
   then share the same degradation, the flow of the whole clip can be computed up front (or shared
   with other nodes through FLOW), and restoring frame ``t`` never waits for a VAE decode.
2. **Alignment.** The previous *restored* latent is backward-warped onto frame ``t``:
   ``a_t = warp(z_{t-1}, f_t)`` on the latent grid (flow resampled with ``FlowField.resized``,
   vectors scaled by ``h/H``); for the ControlNet hint the decoded previous restored frame is warped
   the same way on the pixel grid.
3. **Confidence** ``m_t [1,1,H,W]`` in [0,1], the product of
   * the forward-backward check of ``f_t`` (``1 - occlusion``, Sundaram et al. 2010 thresholds), and
   * a photometric term against the current degraded frame:
     ``exp(-(e/tau)^2)``, ``e = mean_c |G(warp(y_{t-1}, f_t)) - G(y_t)|`` with ``G`` a Gaussian blur
     (``blur`` px; suppresses the per-pixel noise that degraded frames do not share).
   On the latent grid ``m`` is area-averaged.
4. **Conditioning** with strength ``s`` in [0,1]::

       x_init = m s a_t + (1 - m s) y_t^lat          (init latent of the sampler)
       hint   = m s A_t + (1 - m s) y_t              (ControlNet hint, pixel space, when a decoder is given)

   ``s = 0`` gives exactly ``x_init = y_t^lat`` and ``hint = y_t``: plain per-frame restoration.
   Frame 0 (and every frame when ``s = 0``) is restored without alignment.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from .checks import check_unit
from .flow import FlowField, estimate_pair, fb_check, resize_flow, resize_mask, warp

log = logging.getLogger("temporal_restore")

Tensor = torch.Tensor

DEFAULT_TAU = 0.08
DEFAULT_BLUR = 1.0


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``x [N,C,H,W]`` (reflect padding); identity when ``sigma < 1e-3`` px
    (the kernel is a delta to float precision there, and a sigma that underflows float32 would divide by 0)."""
    if sigma < 1e-3:
        return x
    r = max(1, int(math.ceil(3 * sigma)))
    k = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (k / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    h, w = x.shape[-2:]
    mode = "reflect" if h > r and w > r else "replicate"
    y = F.pad(x, (r, r, 0, 0), mode=mode)
    y = F.conv2d(y, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    y = F.pad(y, (0, 0, r, r), mode=mode)
    return F.conv2d(y, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def photometric_confidence(prev: Tensor, cur: Tensor, flow_bwd: Tensor, tau: float = DEFAULT_TAU,
                           blur: float = DEFAULT_BLUR) -> Tensor:
    """``exp(-(e/tau)^2)`` with ``e = mean_c |G(warp(prev, flow_bwd)) - G(cur)|``.

    prev, cur: degraded frames ``[N,3,H,W]`` in 0..1; flow_bwd ``[N,2,H,W]`` (cur -> prev).
    Returns ``[N,1,H,W]`` in (0, 1].
    """
    if tau <= 0:
        raise ValueError(f"tau: expected a positive photometric tolerance, got {tau}")
    warped = warp(prev, flow_bwd)
    e = (gaussian_blur(warped, blur) - gaussian_blur(cur, blur)).abs().mean(1, keepdim=True)
    return torch.exp(-(e / tau) ** 2)


def alignment_confidence(prev: Tensor, cur: Tensor, flow_bwd: Tensor, occlusion_bwd: Optional[Tensor] = None,
                         flow_fwd: Optional[Tensor] = None, tau: float = DEFAULT_TAU,
                         blur: float = DEFAULT_BLUR) -> Tensor:
    """Confidence ``[N,1,H,W]`` that ``warp(prev, flow_bwd)`` is a valid prediction of ``cur``.

    ``(1 - occlusion_bwd) * photometric_confidence``; the occlusion of the pixels of ``cur`` is taken
    from ``occlusion_bwd [N,1,H,W]`` when given, else computed with ``fb_check(flow_bwd, flow_fwd)``
    (``flow_fwd`` = prev -> cur); with neither only the photometric term is used.
    """
    for name, t in (("prev", prev), ("cur", cur)):
        if t.ndim != 4:
            raise ValueError(f"{name}: expected frames [N,C,H,W], got {tuple(t.shape)}")
    if prev.shape != cur.shape:
        raise ValueError(f"prev/cur: frames must have the same shape, got {tuple(prev.shape)} and {tuple(cur.shape)}")
    m = photometric_confidence(prev, cur, flow_bwd, tau, blur)
    if occlusion_bwd is None and flow_fwd is not None:
        occlusion_bwd = fb_check(flow_bwd, flow_fwd)
    if occlusion_bwd is not None:
        m = m * (1.0 - occlusion_bwd.to(m.dtype).clamp(0, 1))
    return m


def blend(degraded: Tensor, aligned: Tensor, mask: Tensor, strength: float) -> Tensor:
    """``m s aligned + (1 - m s) degraded``; returns ``degraded`` itself when ``s == 0``.

    degraded, aligned ``[N,C,h,w]``; mask ``[N,1,h,w]`` (resampled by area if on another grid).
    """
    s = check_strength(strength)
    if s == 0.0:
        return degraded
    if mask.shape[-2:] != degraded.shape[-2:]:
        mask = F.interpolate(mask.float(), size=degraded.shape[-2:], mode="area")
    w = (mask.to(degraded.dtype) * s)
    return w * aligned.to(degraded.dtype) + (1.0 - w) * degraded


def check_strength(strength: float) -> float:
    s = check_unit(strength, "strength")
    return s


def _chw(img: Tensor) -> Tensor:
    """``[H,W,3]`` -> ``[1,3,H,W]`` float."""
    return img.permute(2, 0, 1).unsqueeze(0).float()


class PairFlows:
    """Flow from frame ``t`` back to an earlier frame ``a`` (``t -> a``) and the occlusion of frame
    ``t``'s pixels, on the frame grid.

    From a :class:`FlowField` of the clip (``FlowField.between``: the stored backward flow for
    neighbours, chained otherwise) or, without one, estimated for the pair with OpenCV DIS (memory
    stays O(one frame) on long clips).
    """

    def __init__(self, images: Tensor, flow: Optional[FlowField] = None, frame_index: Optional[Sequence[int]] = None):
        self.images = images
        self.H, self.W = int(images.shape[1]), int(images.shape[2])
        self.flow = flow
        self.index = None
        if flow is not None:
            idx = list(range(images.shape[0])) if frame_index is None else [int(i) for i in frame_index]
            if flow.num_frames == images.shape[0]:
                self.index = list(range(images.shape[0]))
            elif idx and idx[-1] < flow.num_frames:
                self.index = idx  # a FLOW of the whole clip, frames = a window of it
            else:
                raise ValueError(f"flow: FLOW covers {flow.num_frames} frames, the clip has {images.shape[0]} "
                                 f"(frame indices {idx[:3]}...)")

    def __call__(self, t: int, a: Optional[int] = None) -> tuple[Tensor, Tensor]:
        """``(flow [1,2,H,W], occlusion [1,1,H,W])`` for frame ``t`` -> frame ``a`` (default ``t-1``)."""
        a = t - 1 if a is None else a
        if self.flow is None:
            bwd = estimate_pair(self.images[t], self.images[a])[None]
            fwd = estimate_pair(self.images[a], self.images[t])[None]
            return bwd, fb_check(bwd, fwd)
        f, occ, _ = self.flow.between(self.index[t], self.index[a])
        f, occ = f[None].float(), occ[None].float()
        if (self.flow.height, self.flow.width) != (self.H, self.W):
            f = resize_flow(f, self.H, self.W)
            occ = resize_mask(occ, self.H, self.W, 0.25)
        return f, occ


def recurrent_restore(latents: Tensor, images: Tensor, restore: Callable[[list, Tensor, Optional[Tensor]], Tensor],
                      strength: float, flow: Optional[FlowField] = None, frame_index: Optional[Sequence[int]] = None,
                      tau: float = DEFAULT_TAU, blur: float = DEFAULT_BLUR,
                      decode: Optional[Callable[[Tensor], Tensor]] = None,
                      on_frame: Optional[Callable[[int], None]] = None, group: int = 1,
                      confidence_grid: str = "image",
                      on_decoded: Optional[Callable[[list, Tensor], None]] = None,
                      hints: Optional[bool] = None) -> tuple[Tensor, Tensor]:
    """Restore ``latents [T,C,h,w]`` in order, each frame conditioned on the aligned previous result.

    Frames go in groups of ``group`` (default 1: strictly frame by frame). Every frame ``t`` of a group
    is aligned to the *anchor* ``a``, the last frame of the previous group (``a = t - 1`` for group 1),
    with the flow ``t -> a``; the frames of a group are restored in one call (one batch). The first
    group has no anchor and is restored unaligned.

    images: degraded frames ``[T,H,W,3]`` in 0..1 (flow + photometric check + hint).
    restore(ts: list[int], x_init [G,C,h,w], hint [G,H,W,3] or None) -> restored latents ``[G,C,h,w]``.
    decode: restored latent ``[1,C,h,w]`` -> image ``[1,H,W,3]``; when given, a ControlNet hint is
    built (``m s warp(decode(z_a)) + (1 - m s) y_t``), else ``hint`` is None.
    frame_index: absolute indices of the frames (a window of a longer clip) used to read ``flow``.
    on_frame(t) is called after each frame (progress / interruption).
    on_decoded(ts, images [G,H',W',3]): when given (with ``decode``), every group is decoded once right after it
    is restored and handed over, and the next group's hint reuses its last frame instead of decoding the
    anchor again: a clip needs T decodes in all instead of T (a VAEDecode after the node) + T/G - 1 (anchors).
    hints: build ControlNet hints (default: whenever ``decode`` is given); False when ``decode`` is only there
    for ``on_decoded``.
    confidence_grid: ``"image"`` returns the confidence on the frame grid ``[T,1,H,W]``, ``"latent"``
    area-averaged to ``[T,1,h,w]`` (64x less memory on long clips).
    Returns ``(restored [T,C,h,w], confidence)`` (confidence 0 for frame 0 and when s = 0).
    """
    s = check_strength(strength)
    if confidence_grid not in ("image", "latent"):
        raise ValueError(f"confidence_grid: expected 'image' or 'latent', got {confidence_grid!r}")
    if latents.ndim != 4:
        raise ValueError(f"latent: expected [T,C,h,w], got {tuple(latents.shape)}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images: expected degraded frames [T,H,W,3], got {tuple(images.shape)}")
    if images.shape[0] != latents.shape[0]:
        raise ValueError(f"images: expected {latents.shape[0]} frames (one per latent), got {images.shape[0]}")
    if on_decoded is not None and decode is None:
        raise ValueError("on_decoded: needs a decode function (the restored frames are decoded with it)")
    if isinstance(group, bool) or int(group) != group or int(group) < 1:
        raise ValueError(f"group: expected an integer >= 1 (frames restored per call), got {group!r}")
    group = int(group)
    T = latents.shape[0]
    h, w = latents.shape[-2:]
    H, W = images.shape[1:3]
    pairs = PairFlows(images, flow, frame_index) if s > 0 and T > 1 else None
    hints = decode is not None if hints is None else bool(hints) and decode is not None
    out = torch.empty_like(latents)
    conf = torch.zeros(T, 1, H, W) if confidence_grid == "image" else torch.zeros(T, 1, h, w)
    anchor_img = None
    for g0 in range(0, T, group):
        ts = list(range(g0, min(T, g0 + group)))
        x_init = latents[g0:ts[-1] + 1].clone()
        hint = images[g0:ts[-1] + 1] if hints else None
        a = g0 - 1
        if a >= 0 and s > 0:
            hint = None if hint is None else hint.clone()
            for j, t in enumerate(ts):
                f, occ = pairs(t, a)
                m = alignment_confidence(_chw(images[a]), _chw(images[t]), f, occlusion_bwd=occ, tau=tau, blur=blur)
                conf[t] = m[0] if confidence_grid == "image" else F.interpolate(m.float(), size=(h, w), mode="area")[0]
                aligned = warp(out[a:a + 1].float(), resize_flow(f, h, w)).to(latents.dtype)
                x_init[j:j + 1] = blend(latents[t:t + 1], aligned, m, s)
                if hints:
                    a_img = warp(_chw(anchor_img[0]), f)
                    hint[j:j + 1] = blend(_chw(images[t]), a_img, m, s).permute(0, 2, 3, 1).to(images.dtype)
        z = restore(ts, x_init, hint)
        if z.shape != x_init.shape:
            raise ValueError(f"restore: expected restored latents {tuple(x_init.shape)}, got {tuple(z.shape)}")
        out[g0:ts[-1] + 1] = z.to(out.dtype)
        if on_decoded is not None:
            decoded = decode(out[g0:ts[-1] + 1])
            on_decoded(ts, decoded)
            anchor_img = decoded[-1:]
        elif hints and s > 0 and ts[-1] + 1 < T:
            anchor_img = decode(out[ts[-1]:ts[-1] + 1])
        if anchor_img is not None and anchor_img.shape[1:3] != (H, W):
            anchor_img = F.interpolate(anchor_img.permute(0, 3, 1, 2).float(), size=(H, W), mode="bilinear",
                                       align_corners=False).permute(0, 2, 3, 1)
        if on_frame is not None:
            for t in ts:
                on_frame(t)
    return out, conf
