"""Optical flow between video frames: the FLOW type shared by the pack's temporal techniques.

Conventions (used by every function here and by every consumer of :class:`FlowField`):

* A flow ``f [2,H,W]`` from frame ``a`` to frame ``b`` holds, for every pixel ``p = (x, y)`` of
  frame ``a``, the displacement ``(dx, dy)`` in pixels of the grid ``H x W`` such that ``p + f(p)``
  is where that content sits in frame ``b``.  Channel 0 is ``dx`` (along the width), channel 1 ``dy``.
* :func:`warp` is a *backward* warp: ``warp(x_b, f_ab)(p) = x_b(p + f_ab(p))`` brings frame ``b``
  onto the pixel grid of frame ``a``.  So to pull frame ``t`` onto frame ``t+1`` you use the
  *backward* flow ``t+1 -> t``.
* Occlusion masks are ``[.,1,H,W]`` float with 1 where the forward-backward check fails (the pixel
  of the source frame has no reliable match in the target frame, including matches that leave the
  frame); confidences are ``[.,1,H,W]`` in ``[0,1]`` (DiffIR2VR-Zero Eq. 5,
  ``sigma = exp(-|f_ab(p) + f_ba(p + f_ab(p))|^2)``).

Backends: OpenCV DIS (default, no weights) and torchvision RAFT (small or large, weights loaded
from a file the user supplies; nothing is ever downloaded).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger("temporal_restore")

Tensor = torch.Tensor

#: Forward-backward check thresholds (Sundaram, Brox & Keutzer 2010, also used by UnFlow / RAFT
#: evaluations): a pixel is occluded when
#: ``|f_ab + f_ba(p + f_ab)|^2 > FB_ALPHA1 * (|f_ab|^2 + |f_ba(p + f_ab)|^2) + FB_ALPHA2``.
FB_ALPHA1 = 0.01
FB_ALPHA2 = 0.5

DIS_PRESETS = ("ultrafast", "fast", "medium")
#: OpenCV DIS rejects frames below about 12 px a side; smaller frames are edge-padded to this size.
DIS_MIN_SIZE = 16


# --------------------------------------------------------------------------------------------
# Elementary operations
# --------------------------------------------------------------------------------------------

def pixel_grid(h: int, w: int, device=None, dtype=torch.float32) -> Tensor:
    """``[2,H,W]`` pixel coordinates: channel 0 is x (column), channel 1 is y (row)."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=dtype),
                            torch.arange(w, device=device, dtype=dtype), indexing="ij")
    return torch.stack([xs, ys], 0)


def warp(x: Tensor, flow: Tensor, padding_mode: str = "border", mode: str = "bilinear") -> Tensor:
    """Backward-warp ``x [N,C,H,W]`` with ``flow [N,2,H,W]``: ``out(p) = x(p + flow(p))``.

    Bilinear sampling via ``grid_sample`` with ``align_corners=True`` (pixel centres at integer
    coordinates 0..W-1).  Border handling: positions outside the frame take the nearest border
    value (``padding_mode="border"``, default) or zero (``"zeros"``); either way such pixels are
    flagged as occluded by :func:`fb_check`, so consumers should mask them.
    """
    if x.ndim != 4 or flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(f"warp: expected x [N,C,H,W] and flow [N,2,H,W], got {tuple(x.shape)} and {tuple(flow.shape)}")
    if x.shape[0] != flow.shape[0] or x.shape[-2:] != flow.shape[-2:]:
        raise ValueError(f"warp: x {tuple(x.shape)} and flow {tuple(flow.shape)} must share N, H and W")
    n, _, h, w = x.shape
    flow = flow.to(device=x.device, dtype=torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype)
    pos = pixel_grid(h, w, x.device, flow.dtype).unsqueeze(0) + flow
    gx = pos[:, 0] * (2.0 / max(w - 1, 1)) - 1.0
    gy = pos[:, 1] * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], -1)
    out = F.grid_sample(x.to(flow.dtype), grid, mode=mode, padding_mode=padding_mode, align_corners=True)
    return out.to(x.dtype)


def fb_error(fwd: Tensor, bwd: Tensor) -> tuple[Tensor, Tensor]:
    """Forward-backward residual for the source pixels of ``fwd``.

    ``fwd [N,2,H,W]`` is a -> b, ``bwd [N,2,H,W]`` is b -> a.  Returns ``(err2, mag2)`` both
    ``[N,1,H,W]``: ``err2 = |fwd(p) + bwd(p + fwd(p))|^2`` and ``mag2 = |fwd|^2 + |bwd(p+fwd)|^2``.
    """
    bwd_at = warp(bwd, fwd)
    err2 = (fwd + bwd_at).pow(2).sum(1, keepdim=True)
    mag2 = fwd.pow(2).sum(1, keepdim=True) + bwd_at.pow(2).sum(1, keepdim=True)
    return err2, mag2


def out_of_frame(flow: Tensor) -> Tensor:
    """``[N,1,H,W]`` float, 1 where ``p + flow(p)`` leaves the frame."""
    _, _, h, w = flow.shape
    pos = pixel_grid(h, w, flow.device, flow.dtype).unsqueeze(0) + flow
    outside = (pos[:, 0] < 0) | (pos[:, 0] > w - 1) | (pos[:, 1] < 0) | (pos[:, 1] > h - 1)
    return outside.unsqueeze(1).to(flow.dtype)


def fb_check(fwd: Tensor, bwd: Tensor, alpha1: float = FB_ALPHA1, alpha2: float = FB_ALPHA2) -> Tensor:
    """Occlusion of the source pixels of ``fwd`` (a -> b) given ``bwd`` (b -> a), both ``[N,2,H,W]``.

    Returns ``[N,1,H,W]`` float in {0,1}; 1 = fails the forward-backward consistency check
    ``|fwd + bwd(p+fwd)|^2 > alpha1 (|fwd|^2 + |bwd(p+fwd)|^2) + alpha2`` (Sundaram et al. 2010)
    or the match leaves the frame.
    """
    _check_flow(fwd, "fwd")
    _check_flow(bwd, "bwd")
    if fwd.shape != bwd.shape:
        raise ValueError(f"fb_check: fwd {tuple(fwd.shape)} and bwd {tuple(bwd.shape)} must have the same shape")
    err2, mag2 = fb_error(fwd, bwd)
    occ = (err2 > alpha1 * mag2 + alpha2).to(fwd.dtype)
    return torch.maximum(occ, out_of_frame(fwd))


def fb_confidence(fwd: Tensor, bwd: Tensor) -> Tensor:
    """DiffIR2VR-Zero Eq. 5 confidence ``exp(-|fwd(p) + bwd(p + fwd(p))|^2)``, ``[N,1,H,W]`` in [0,1];
    0 where the match leaves the frame.  Residual measured in pixels of the flow's grid."""
    err2, _ = fb_error(fwd, bwd)
    return torch.exp(-err2) * (1.0 - out_of_frame(fwd))


def compose(f_ab: Tensor, f_bc: Tensor) -> Tensor:
    """Chain flows: ``f_ac(p) = f_ab(p) + f_bc(p + f_ab(p))``, all ``[N,2,H,W]``."""
    return f_ab + warp(f_bc, f_ab)


def resize_flow(flow: Tensor, h: int, w: int) -> Tensor:
    """Resample ``flow [N,2,H,W]`` to ``[N,2,h,w]`` and scale the vectors by ``w/W`` (dx), ``h/H`` (dy).

    Shrinking uses area averaging (no aliasing); enlarging uses bilinear interpolation.
    """
    _check_flow(flow, "flow")
    H, W = flow.shape[-2:]
    if (H, W) == (h, w):
        return flow.clone()
    out = _resample(flow, h, w)
    scale = torch.tensor([w / W, h / H], device=flow.device, dtype=flow.dtype).view(1, 2, 1, 1)
    return out * scale


def _resample(x: Tensor, h: int, w: int) -> Tensor:
    H, W = x.shape[-2:]
    if h <= H and w <= W:
        return F.interpolate(x, size=(h, w), mode="area")
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


def resize_mask(mask: Tensor, h: int, w: int, threshold: Optional[float] = None) -> Tensor:
    """Resample a ``[N,1,H,W]`` mask; with ``threshold`` the result is binarised (``>= threshold``)."""
    out = _resample(mask, h, w) if mask.shape[-2:] != (h, w) else mask.clone()
    if threshold is not None:
        out = (out >= threshold).to(mask.dtype)
    return out


def _check_flow(flow: Tensor, name: str) -> None:
    if not isinstance(flow, torch.Tensor) or flow.ndim != 4 or flow.shape[1] != 2:
        shape = tuple(flow.shape) if isinstance(flow, torch.Tensor) else type(flow).__name__
        raise ValueError(f"{name}: expected a flow tensor [N,2,H,W], got {shape}")


#: A resized occlusion mask marks a cell occluded when at least this share of it was occluded
#: (conservative: consumers leave occluded pixels alone, so erring towards "occluded" is safe).
OCCLUSION_RESIZE_THRESHOLD = 0.25


# --------------------------------------------------------------------------------------------
# The FLOW type
# --------------------------------------------------------------------------------------------

DIRECT_CACHE_SIZE = 8
"""Direct keyframe flows kept by :meth:`FlowField.direct` (least recently used dropped first)."""


@dataclass
class FlowField:
    """Flows of a clip of ``T`` frames, measured on a ``height x width`` pixel grid.

    forward  ``[T-1,2,H,W]``: frame t -> t+1 (pixel p of frame t goes to p + forward[t](p) in t+1)
    backward ``[T-1,2,H,W]``: frame t+1 -> t
    occlusion_fwd / occlusion_bwd ``[T-1,1,H,W]``: 1 where the forward-backward check fails for the
        source pixels of forward[t] (pixels of frame t) / of backward[t] (pixels of frame t+1)
    confidence_fwd / confidence_bwd ``[T-1,1,H,W]`` in [0,1] (Eq. 5)
    keyframes: optional sorted absolute frame indices with direct flows between consecutive
        keyframes in ``key_*`` (``[K-1,...]``, same layout as above with t -> k-th keyframe).
    source_height / source_width: size of the frames the flow was estimated on (for reference).
    pair_estimator: optional ``(i, j) -> [2, source_height, source_width]`` flow from source frame ``i`` to
        ``j`` (set by :func:`estimate_flow`; keeps a reference to the frames): :meth:`between` with
        ``direct=True`` estimates any pair directly, as DiffIR2VR-Zero's official code does for
        frame -> keyframe. ``frame_ids``: the source frame of each frame of this field (after ``select``).
    """

    forward: Tensor
    backward: Tensor
    occlusion_fwd: Tensor
    occlusion_bwd: Tensor
    confidence_fwd: Tensor
    confidence_bwd: Tensor
    height: int
    width: int
    keyframes: Optional[list[int]] = None
    key_forward: Optional[Tensor] = None
    key_backward: Optional[Tensor] = None
    key_occlusion_fwd: Optional[Tensor] = None
    key_occlusion_bwd: Optional[Tensor] = None
    key_confidence_fwd: Optional[Tensor] = None
    key_confidence_bwd: Optional[Tensor] = None
    source_height: int = 0
    source_width: int = 0
    backend: str = "dis"
    pair_estimator: Optional[Callable[[int, int], Tensor]] = None
    frame_ids: Optional[list[int]] = None
    direct_cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        n = self.forward.shape[0]
        for name in ("forward", "backward"):
            t = getattr(self, name)
            if t.ndim != 4 or tuple(t.shape) != (n, 2, self.height, self.width):
                raise ValueError(f"FlowField.{name}: expected [{n},2,{self.height},{self.width}], got {tuple(t.shape)}")
        for name in ("occlusion_fwd", "occlusion_bwd", "confidence_fwd", "confidence_bwd"):
            t = getattr(self, name)
            if t.ndim != 4 or tuple(t.shape) != (n, 1, self.height, self.width):
                raise ValueError(f"FlowField.{name}: expected [{n},1,{self.height},{self.width}], got {tuple(t.shape)}")
        if self.keyframes is not None:
            kf = [int(k) for k in self.keyframes]
            if kf != sorted(set(kf)) or (kf and (kf[0] < 0 or kf[-1] >= self.num_frames)):
                raise ValueError(f"FlowField.keyframes: expected sorted unique indices in [0,{self.num_frames}), got {kf}")
            self.keyframes = kf
            k = max(len(kf) - 1, 0)
            for name in ("key_forward", "key_backward", "key_occlusion_fwd", "key_occlusion_bwd",
                         "key_confidence_fwd", "key_confidence_bwd"):
                t = getattr(self, name)
                c = 2 if name in ("key_forward", "key_backward") else 1
                if t is None or tuple(t.shape) != (k, c, self.height, self.width):
                    shape = None if t is None else tuple(t.shape)
                    raise ValueError(f"FlowField.{name}: expected [{k},{c},{self.height},{self.width}], got {shape}")
        if not self.source_height:
            self.source_height, self.source_width = self.height, self.width
        if self.pair_estimator is not None and self.frame_ids is None:
            self.frame_ids = list(range(self.num_frames))
        if self.frame_ids is not None and len(self.frame_ids) != self.num_frames:
            raise ValueError(f"FlowField.frame_ids: expected {self.num_frames} source indices, got {len(self.frame_ids)}")

    # -- basic facts -------------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        return int(self.forward.shape[0]) + 1

    def __len__(self) -> int:
        return self.num_frames

    def to(self, device=None, dtype=None) -> "FlowField":
        def mv(t):
            return None if t is None else t.to(device=device, dtype=dtype)
        return FlowField(**{**self._fields(), **{k: mv(v) for k, v in self._tensors().items()}})

    def _tensors(self) -> dict:
        return {k: getattr(self, k) for k in ("forward", "backward", "occlusion_fwd", "occlusion_bwd",
                                              "confidence_fwd", "confidence_bwd", "key_forward", "key_backward",
                                              "key_occlusion_fwd", "key_occlusion_bwd", "key_confidence_fwd",
                                              "key_confidence_bwd")}

    def _fields(self) -> dict:
        return {k: getattr(self, k) for k in ("height", "width", "keyframes", "source_height", "source_width", "backend",
                                              "pair_estimator", "frame_ids", "direct_cache")} | self._tensors()

    # -- resampling --------------------------------------------------------------------------
    def resized(self, h: int, w: int) -> "FlowField":
        """Same flows on an ``h x w`` grid: vectors scaled by ``w/width`` and ``h/height``;
        occlusion re-binarised (cell occluded when >= 25 % of it was), confidence averaged."""
        h, w = int(h), int(w)
        if h < 1 or w < 1:
            raise ValueError(f"FlowField.resized: expected a positive size, got {h}x{w}")
        if (h, w) == (self.height, self.width):
            return self

        def rf(t):
            return None if t is None else (resize_flow(t, h, w) if t.shape[0] else t.new_zeros(0, 2, h, w))

        def ro(t):
            if t is None:
                return None
            return resize_mask(t, h, w, OCCLUSION_RESIZE_THRESHOLD) if t.shape[0] else t.new_zeros(0, 1, h, w)

        def rc(t):
            if t is None:
                return None
            return resize_mask(t, h, w).clamp(0, 1) if t.shape[0] else t.new_zeros(0, 1, h, w)

        return FlowField(
            forward=rf(self.forward), backward=rf(self.backward),
            occlusion_fwd=ro(self.occlusion_fwd), occlusion_bwd=ro(self.occlusion_bwd),
            confidence_fwd=rc(self.confidence_fwd), confidence_bwd=rc(self.confidence_bwd),
            height=h, width=w, keyframes=None if self.keyframes is None else list(self.keyframes),
            key_forward=rf(self.key_forward), key_backward=rf(self.key_backward),
            key_occlusion_fwd=ro(self.key_occlusion_fwd), key_occlusion_bwd=ro(self.key_occlusion_bwd),
            key_confidence_fwd=rc(self.key_confidence_fwd), key_confidence_bwd=rc(self.key_confidence_bwd),
            source_height=self.source_height, source_width=self.source_width, backend=self.backend,
            pair_estimator=self.pair_estimator, frame_ids=self.frame_ids, direct_cache=self.direct_cache)

    # -- arbitrary pairs -----------------------------------------------------------------------
    def between(self, a: int, b: int, direct: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Flow from frame ``a`` to frame ``b`` (absolute indices of this field) with its occlusion
        and confidence: ``([2,H,W], [1,H,W], [1,H,W])``, for the pixels of frame ``a``.

        Neighbours and consecutive keyframes use the stored direct flows. Other pairs: with ``direct``
        and a ``pair_estimator``, a flow estimated between the two frames themselves (:meth:`direct`);
        otherwise chained through keyframe hops where possible and neighbour steps otherwise
        (:func:`compose`); a chained pixel is occluded if any link is or its final match leaves the
        frame, and its confidence is the product of the links'.
        """
        T = self.num_frames
        a, b = int(a), int(b)
        if not (0 <= a < T and 0 <= b < T):
            raise ValueError(f"FlowField.between: frame indices must be in [0,{T}), got {a} and {b}")
        if a == b:
            z = self.forward.new_zeros(2, self.height, self.width)
            return z, z.new_zeros(1, self.height, self.width), z.new_ones(1, self.height, self.width)
        if direct and self.pair_estimator is not None and abs(a - b) > 1:
            return self.direct(a, b)
        path = self._path(a, b)
        flow = occ = conf = None
        for (u, v) in path:
            f, o, c = self._direct(u, v)
            if flow is None:
                flow, occ, conf = f, o, c
                continue
            fb = flow.unsqueeze(0)
            o_next = warp(o.unsqueeze(0), fb)[0]
            c_next = warp(c.unsqueeze(0), fb)[0]
            flow = compose(fb, f.unsqueeze(0))[0]
            occ = torch.maximum(occ, (o_next >= 0.5).to(occ.dtype))
            conf = conf * c_next
        if len(path) > 1:
            outside = out_of_frame(flow.unsqueeze(0))[0]
            occ = torch.maximum(occ, outside)
            conf = conf * (1 - outside)
        return flow, occ, conf

    def direct(self, a: int, b: int) -> tuple[Tensor, Tensor, Tensor]:
        """Flow ``a -> b`` estimated between the two source frames (``pair_estimator``, both directions
        for the forward-backward check, :func:`fb_check` / :func:`fb_confidence`), on this field's grid,
        cached per source pair and grid (the ``DIRECT_CACHE_SIZE`` most recently used, shared by the fields
        derived from this one). ``([2,H,W], [1,H,W], [1,H,W])``."""
        if self.pair_estimator is None:
            raise ValueError("FlowField.direct: this flow keeps no frames to estimate a pair from "
                             "(estimate it with TR_FlowEstimate / flow.estimate_flow)")
        sa, sb = self.frame_ids[int(a)], self.frame_ids[int(b)]
        key = (sa, sb, self.height, self.width)
        hit = self.direct_cache.pop(key, None)  # re-inserted below: the dict's order is least recent first
        if hit is None:
            fw, bw = self.pair_estimator(sa, sb)[None].float(), self.pair_estimator(sb, sa)[None].float()
            occ, conf = fb_check(fw, bw), fb_confidence(fw, bw)
            if (self.height, self.width) != tuple(fw.shape[-2:]):
                fw = resize_flow(fw, self.height, self.width)
                occ = resize_mask(occ, self.height, self.width, OCCLUSION_RESIZE_THRESHOLD)
                conf = resize_mask(conf, self.height, self.width)
            hit = (fw[0].cpu(), occ[0].cpu(), conf[0].cpu())
        self.direct_cache[key] = hit
        while len(self.direct_cache) > DIRECT_CACHE_SIZE:  # LRU: a long clip's keyframe pairs never pile up
            del self.direct_cache[next(iter(self.direct_cache))]
        ref = self.forward
        return tuple(t.to(ref.device, ref.dtype) for t in hit)

    def _path(self, a: int, b: int) -> list[tuple[int, int]]:
        step = 1 if b > a else -1
        kf = self.keyframes or []
        pos = {k: i for i, k in enumerate(kf)}
        path, cur = [], a
        while cur != b:
            nxt = cur + step
            if cur in pos:
                i = pos[cur] + step
                if 0 <= i < len(kf) and (kf[i] - b) * step <= 0:
                    nxt = kf[i]
            path.append((cur, nxt))
            cur = nxt
        return path

    def _direct(self, u: int, v: int) -> tuple[Tensor, Tensor, Tensor]:
        if abs(u - v) == 1:
            t = min(u, v)
            if v > u:
                return self.forward[t], self.occlusion_fwd[t], self.confidence_fwd[t]
            return self.backward[t], self.occlusion_bwd[t], self.confidence_bwd[t]
        i, j = self.keyframes.index(u), self.keyframes.index(v)
        k = min(i, j)
        if j > i:
            return self.key_forward[k], self.key_occlusion_fwd[k], self.key_confidence_fwd[k]
        return self.key_backward[k], self.key_occlusion_bwd[k], self.key_confidence_bwd[k]

    def select(self, indices: Sequence[int]) -> "FlowField":
        """FlowField of the frames ``indices`` (sorted, unique, absolute), renumbered 0..len-1.

        Contiguous windows are plain slices; gaps are bridged with :meth:`between`.  Keyframes
        inside the selection are kept (remapped)."""
        idx = [int(i) for i in indices]
        T = self.num_frames
        if not idx or idx != sorted(set(idx)) or idx[0] < 0 or idx[-1] >= T:
            raise ValueError(f"FlowField.select: indices must be sorted unique frame indices in [0,{T}), got {idx}")
        if idx == list(range(idx[0], idx[-1] + 1)):
            s, e = idx[0], idx[-1]
            fw, bw = self.forward[s:e], self.backward[s:e]
            of, ob = self.occlusion_fwd[s:e], self.occlusion_bwd[s:e]
            cf, cb = self.confidence_fwd[s:e], self.confidence_bwd[s:e]
        else:
            pairs = [self.between(u, v) for u, v in zip(idx[:-1], idx[1:])]
            back = [self.between(v, u) for u, v in zip(idx[:-1], idx[1:])]
            fw, of, cf = (torch.stack([p[i] for p in pairs]) for i in range(3))
            bw, ob, cb = (torch.stack([p[i] for p in back]) for i in range(3))
        kwargs = {}
        if self.keyframes is not None:
            where = {a: n for n, a in enumerate(idx)}
            kept = [k for k in self.keyframes if k in where]
            if len(kept) >= 1:
                kf_pairs = [self.between(u, v) for u, v in zip(kept[:-1], kept[1:])]
                kb_pairs = [self.between(v, u) for u, v in zip(kept[:-1], kept[1:])]
                z2 = self.forward.new_zeros(0, 2, self.height, self.width)
                z1 = self.forward.new_zeros(0, 1, self.height, self.width)
                kwargs = dict(
                    keyframes=[where[k] for k in kept],
                    key_forward=torch.stack([p[0] for p in kf_pairs]) if kf_pairs else z2,
                    key_occlusion_fwd=torch.stack([p[1] for p in kf_pairs]) if kf_pairs else z1,
                    key_confidence_fwd=torch.stack([p[2] for p in kf_pairs]) if kf_pairs else z1,
                    key_backward=torch.stack([p[0] for p in kb_pairs]) if kb_pairs else z2,
                    key_occlusion_bwd=torch.stack([p[1] for p in kb_pairs]) if kb_pairs else z1,
                    key_confidence_bwd=torch.stack([p[2] for p in kb_pairs]) if kb_pairs else z1)
        ids = None if self.frame_ids is None else [self.frame_ids[i] for i in idx]
        return FlowField(forward=fw, backward=bw, occlusion_fwd=of, occlusion_bwd=ob, confidence_fwd=cf,
                         confidence_bwd=cb, height=self.height, width=self.width, source_height=self.source_height,
                         source_width=self.source_width, backend=self.backend, pair_estimator=self.pair_estimator,
                         frame_ids=ids, direct_cache=self.direct_cache, **kwargs)

    def __repr__(self) -> str:  # keep ComfyUI logs short
        return (f"FlowField(frames={self.num_frames}, grid={self.height}x{self.width}, "
                f"source={self.source_height}x{self.source_width}, keyframes={self.keyframes}, backend={self.backend})")


# --------------------------------------------------------------------------------------------
# Estimation backends
# --------------------------------------------------------------------------------------------

def _to_gray_u8(img) -> np.ndarray:
    a = img.detach().cpu().float().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    if a.ndim != 3 or a.shape[-1] not in (1, 3):
        raise ValueError(f"frame: expected [H,W,3] (or [H,W,1]), got {a.shape}")
    if a.dtype != np.uint8:
        a = np.clip(a.astype(np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if a.shape[-1] == 3:
        import cv2
        return cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(a[..., 0])


def _dis(preset: str):
    import cv2
    if preset not in DIS_PRESETS:
        raise ValueError(f"preset: expected one of {DIS_PRESETS}, got {preset!r}")
    code = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
            "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}[preset]
    return cv2.DISOpticalFlow_create(code)


def estimate_pair(a, b, preset: str = "medium", _dis_obj=None) -> Tensor:
    """OpenCV DIS flow from frame ``a`` to frame ``b`` (both ``[H,W,3]`` float 0..1 or uint8).

    Returns ``[2,H,W]`` float32: pixel p of ``a`` sits at ``p + flow(p)`` in ``b``.
    """
    ga, gb = _to_gray_u8(a), _to_gray_u8(b)
    if ga.shape != gb.shape:
        raise ValueError(f"estimate_pair: frames a {ga.shape} and b {gb.shape} must have the same size")
    dis = _dis_obj if _dis_obj is not None else _dis(preset)
    h, w = ga.shape
    ph, pw = max(0, DIS_MIN_SIZE - h), max(0, DIS_MIN_SIZE - w)
    if ph or pw:  # DIS rejects tiny frames: pad by edge replication, crop the result back
        ga = np.pad(ga, ((0, ph), (0, pw)), mode="edge")
        gb = np.pad(gb, ((0, ph), (0, pw)), mode="edge")
    flow = dis.calc(ga, gb, None)[:h, :w]
    return torch.from_numpy(np.ascontiguousarray(flow)).permute(2, 0, 1).float()


class RaftEstimator:
    """torchvision RAFT (small or large, detected from the weights) loaded from a local file.

    ``RaftEstimator(path)(a [N,H,W,3] float 0..1, b) -> [N,2,H,W]``.  Frames are padded
    (replicate) to a multiple of 8 and at least 128 per side, and the padding is cropped off.
    """

    def __init__(self, path: str, device=None, iters: int = 12):
        if not path or not os.path.isfile(path):
            raise ValueError(f"raft_weights: file not found: {path!r} (give a torchvision RAFT state dict, "
                             "e.g. raft_small_C_T_V2-01064c6d.pth or raft_large_C_T_SKHT_V2-ff5fadd5.pth)")
        try:
            from torchvision.models.optical_flow import raft_large, raft_small
        except Exception as e:  # pragma: no cover - torchvision is a ComfyUI dependency
            raise ValueError(f"raft_weights: torchvision RAFT is unavailable ({e})") from e
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            if path.endswith(".safetensors"):
                from safetensors.torch import load_file
                sd = load_file(path)
            else:
                raise ValueError(f"raft_weights: cannot read {path!r} as a torch state dict ({e})") from e
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        if not isinstance(sd, dict):
            raise ValueError(f"raft_weights: {path!r} does not hold a state dict")
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
        errors = []
        for name, ctor in (("raft_large", raft_large), ("raft_small", raft_small)):
            model = ctor(weights=None, progress=False)
            try:
                model.load_state_dict(sd, strict=True)
            except Exception as e:
                errors.append(f"{name}: {str(e).splitlines()[0]}")
                continue
            self.model, self.kind = model.eval().to(device or "cpu"), name
            break
        else:
            raise ValueError(f"raft_weights: {path!r} is not a torchvision RAFT small/large state dict ({'; '.join(errors)})")
        self.iters = int(iters)
        self.device = device or "cpu"

    @torch.no_grad()
    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        a = torch.as_tensor(a).float()
        b = torch.as_tensor(b).float()
        if a.ndim == 3:
            a, b = a[None], b[None]
        _, h, w, _ = a.shape
        # RAFT needs sides that are multiples of 8 and at least 128 (its correlation pyramid)
        ph, pw = max((-h) % 8, 128 - h), max((-w) % 8, 128 - w)
        x1 = a.permute(0, 3, 1, 2).to(self.device) * 2 - 1
        x2 = b.permute(0, 3, 1, 2).to(self.device) * 2 - 1
        if ph or pw:
            x1 = F.pad(x1, (0, pw, 0, ph), mode="replicate")
            x2 = F.pad(x2, (0, pw, 0, ph), mode="replicate")
        flows = self.model(x1, x2, num_flow_updates=self.iters)
        return flows[-1][:, :, :h, :w].float().cpu()


# --------------------------------------------------------------------------------------------
# Whole clips
# --------------------------------------------------------------------------------------------

def keyframe_indices(num_frames: int, stride: int) -> Optional[list[int]]:
    """Fixed-stride keyframes ``0, s, 2s, ...`` (the last frame is not forced); None when stride <= 0."""
    if stride <= 0 or num_frames < 2:
        return None
    return list(range(0, num_frames, int(stride)))


def estimate_flow(frames, backend="dis", keyframes: Optional[Sequence[int]] = None, preset: str = "medium",
                  raft=None, out_size: Optional[tuple[int, int]] = None,
                  callback: Optional[Callable[[int, int], None]] = None) -> FlowField:
    """Estimate a :class:`FlowField` for ``frames [T,H,W,3]`` float in 0..1 (a ComfyUI IMAGE).

    * ``backend``: ``"dis"`` (OpenCV DIS at ``preset``), or ``"raft"`` with ``raft`` a
      :class:`RaftEstimator` (or any callable ``(a [1,H,W,3], b) -> [1,2,H,W]``).
    * ``keyframes``: sorted absolute indices; direct flows are estimated between consecutive ones.
    * ``out_size``: ``(h, w)`` grid to store the result on (e.g. the latent grid H/8 x W/8): each
      pair is estimated at full size, checked, then resampled at once, so memory stays at
      ``O(T * h * w)``.
    * ``callback(done, total)`` is called after each pair (progress / interruption hook).
    """
    if not isinstance(frames, (torch.Tensor, np.ndarray)) or frames.ndim != 4 or frames.shape[-1] != 3:
        shape = getattr(frames, "shape", type(frames).__name__)
        raise ValueError(f"frames: expected an image batch [T,H,W,3], got {shape}")
    frames = torch.as_tensor(frames)
    T, H, W, _ = frames.shape
    if T < 1:
        raise ValueError("frames: expected at least one frame")
    h, w = (H, W) if out_size is None else (int(out_size[0]), int(out_size[1]))
    if backend == "dis":
        dis = _dis(preset)

        def pair(i, j):
            return estimate_pair(frames[i], frames[j], _dis_obj=dis)
    elif backend == "raft":
        if raft is None:
            raise ValueError("raft: backend 'raft' needs a RAFT estimator (a weights file)")

        def pair(i, j):
            return raft(frames[i:i + 1].float(), frames[j:j + 1].float())[0]
    else:
        raise ValueError(f"backend: expected 'dis' or 'raft', got {backend!r}")

    kf = None if keyframes is None else sorted({int(k) for k in keyframes})
    if kf is not None and (not kf or kf[0] < 0 or kf[-1] >= T):
        raise ValueError(f"keyframes: expected indices in [0,{T}), got {list(keyframes)}")
    links = [(t, t + 1) for t in range(T - 1)]
    key_links = [] if kf is None else [(u, v) for u, v in zip(kf[:-1], kf[1:]) if v - u > 1]
    total = len(links) + len(key_links)
    done = 0

    def run(pairs):
        nonlocal done
        out = {k: [] for k in ("f", "b", "of", "ob", "cf", "cb")}
        for (u, v) in pairs:
            fw = pair(u, v)[None]
            bw = pair(v, u)[None]
            of, ob = fb_check(fw, bw), fb_check(bw, fw)
            cf, cb = fb_confidence(fw, bw), fb_confidence(bw, fw)
            if (h, w) != (H, W):
                fw, bw = resize_flow(fw, h, w), resize_flow(bw, h, w)
                of = resize_mask(of, h, w, OCCLUSION_RESIZE_THRESHOLD)
                ob = resize_mask(ob, h, w, OCCLUSION_RESIZE_THRESHOLD)
                cf, cb = resize_mask(cf, h, w), resize_mask(cb, h, w)
            for k, t in zip(("f", "b", "of", "ob", "cf", "cb"), (fw, bw, of, ob, cf, cb)):
                out[k].append(t)
            done += 1
            if callback is not None:
                callback(done, total)
        for k, c in (("f", 2), ("b", 2), ("of", 1), ("ob", 1), ("cf", 1), ("cb", 1)):
            out[k] = torch.cat(out[k]) if out[k] else torch.zeros(0, c, h, w)
        return out

    nb = run(links)
    kwargs = {}
    if kf is not None:
        direct = run(key_links)
        pos = {p: n for n, p in enumerate(key_links)}
        parts = {k: [] for k in ("f", "b", "of", "ob", "cf", "cb")}
        for u, v in zip(kf[:-1], kf[1:]):
            src, n = (direct, pos[(u, v)]) if (u, v) in pos else (nb, u)
            for k in parts:
                parts[k].append(src[k][n:n + 1])
        cat = {k: (torch.cat(v) if v else torch.zeros(0, 2 if k in ("f", "b") else 1, h, w)) for k, v in parts.items()}
        kwargs = dict(keyframes=kf, key_forward=cat["f"], key_backward=cat["b"], key_occlusion_fwd=cat["of"],
                      key_occlusion_bwd=cat["ob"], key_confidence_fwd=cat["cf"], key_confidence_bwd=cat["cb"])
    return FlowField(forward=nb["f"], backward=nb["b"], occlusion_fwd=nb["of"], occlusion_bwd=nb["ob"],
                     confidence_fwd=nb["cf"], confidence_bwd=nb["cb"], height=h, width=w,
                     source_height=H, source_width=W, backend=backend, pair_estimator=pair, **kwargs)


def end_point_error(pred: Tensor, true: Tensor, mask: Optional[Tensor] = None) -> float:
    """Mean end-point error ``|pred - true|_2`` over ``[N,2,H,W]`` (optionally where ``mask [N,1,H,W]`` > 0)."""
    epe = (pred - true).pow(2).sum(1, keepdim=True).sqrt()
    if mask is None:
        return float(epe.mean())
    m = (mask > 0).to(epe.dtype)
    return float((epe * m).sum() / m.sum().clamp_min(1))
