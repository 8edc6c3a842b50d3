"""Video quality metrics: fidelity (PSNR, SSIM) and temporal consistency (warping error, flicker, seams).

All clips are ComfyUI IMAGE batches ``[T, H, W, 3]`` float in 0..1; flows are ``[T-1, 2, H, W]`` in pixels
(dx, dy) with ``flow[t]`` mapping pixel p of frame t to ``p + flow[t](p)`` in frame t+1. Computation is in
float64 on the CPU. Definitions (all documented here so numbers are comparable across runs):

* ``psnr``: per frame ``10 log10(1 / MSE)`` over all pixels and channels, averaged over frames (``inf`` for
  identical clips).
* ``ssim``: Wang et al. 2004 SSIM with an 11x11 Gaussian window (sigma 1.5, smaller window on tiny
  frames), K1 = 0.01, K2 = 0.03, population covariances, "valid" region only (no padding); on luminance
  Y = 0.299 R + 0.587 G + 0.114 B (BT.601) by default, or averaged over R, G, B with ``channel="rgb"``.
  Averaged over frames. Matches ``skimage.metrics.structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1)``.
* ``warping_error``: per consecutive pair, ``mean |frame_t(p) - frame_{t+1}(p + flow_t(p))|`` over the
  valid pixels (not occluded, target inside the frame) and the 3 channels, bilinear backward warp; averaged
  over pairs. With no flow given, flow is estimated with OpenCV DIS (medium preset, ``flow.estimate_flow``)
  on ``flow_from`` (default: the clip itself) in both directions, and pixels failing the forward-backward check
  ``|f + b(p + f)|^2 > 0.01 (|f|^2 + |b(p + f)|^2) + 0.5`` (Sundaram et al. 2010) are occluded.
* ``flicker`` (mode "mean"): per pair, ``|mean Y_{t+1} - mean Y_t|``, the jump of the frame's mean
  luminance; averaged over pairs. Mode "lowpass": per pair, ``mean |B(Y_{t+1}) - B(Y_t)|`` where B averages
  ``b x b`` blocks, ``b = max(1, round(min(H, W) / 8))`` (local brightness/colour flicker, motion leaks in).
* ``seam_ratio(frames, boundaries)``: per-pair flicker (or warping error, ``mode="warp"``) averaged over
  the pairs ``(b - 1, b)`` for each ``b`` in ``boundaries`` (the first frame of a new window), divided by
  the average over all other pairs. 1 means the window seams are invisible.
* ``color_delta_e`` / ``color_flicker``: CIEDE2000 colour difference to the reference on low-passed (block
  mean) frames, and the frame-to-frame change of the mean L*a*b* colour cast (CIE76); defined in
  ``color_diff``.
"""
from __future__ import annotations

import json
import math

import torch
import torch.nn.functional as F

from . import color_diff
from . import flow as _flow
from .degrade import check_frames, gaussian_kernel1d

LUMA = (0.299, 0.587, 0.114)
FLICKER_MODES = ("mean", "lowpass")


def _clip64(x, name) -> torch.Tensor:
    return check_frames(x, name).detach().to("cpu", torch.float64)


def _same_shape(a, b, na, nb):
    if a.shape != b.shape:
        raise ValueError(f"{nb}: expected the same shape as {na} {tuple(a.shape)}, got {tuple(b.shape)}")


def luma(frames: torch.Tensor) -> torch.Tensor:
    """BT.601 luminance ``[T, H, W]`` of ``frames [T, H, W, 3]``."""
    w = torch.tensor(LUMA, dtype=frames.dtype, device=frames.device)
    return (frames * w).sum(-1)


# ---------------------------------------------------------------------------------------------- fidelity
def psnr_per_frame(restored, reference, data_range: float = 1.0) -> torch.Tensor:
    """PSNR of each frame ``[T]`` (dB; ``inf`` where the frames are identical)."""
    a, b = _clip64(restored, "restored"), _clip64(reference, "reference")
    _same_shape(a, b, "restored", "reference")
    mse = ((a - b) ** 2).mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(data_range ** 2 / mse)  # mse == 0 -> inf


def psnr(restored, reference, data_range: float = 1.0) -> float:
    """Mean over frames of the per-frame PSNR (dB)."""
    return float(psnr_per_frame(restored, reference, data_range).mean())


def ssim_per_frame(restored, reference, channel: str = "y", data_range: float = 1.0) -> torch.Tensor:
    """SSIM of each frame ``[T]``; see the module docstring for the exact definition."""
    if channel not in ("y", "rgb"):
        raise ValueError(f"channel: expected 'y' (luminance) or 'rgb' (mean over channels), got {channel!r}")
    a, b = _clip64(restored, "restored"), _clip64(reference, "reference")
    _same_shape(a, b, "restored", "reference")
    if channel == "y":
        a, b = luma(a)[:, None], luma(b)[:, None]
    else:
        a, b = a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2)
    h, w = a.shape[-2:]
    r = min(5, (min(h, w) - 1) // 2)
    if r < 1:
        raise ValueError(f"restored: expected frames of at least 3x3 pixels for SSIM, got {h}x{w}")
    k = gaussian_kernel1d(1.5, r, dtype=torch.float64)
    c = a.shape[1]
    kx = k.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    ky = k.view(1, 1, -1, 1).expand(c, 1, -1, 1)

    def filt(x):
        return F.conv2d(F.conv2d(x, kx, groups=c), ky, groups=c)

    mu_a, mu_b = filt(a), filt(b)
    saa = filt(a * a) - mu_a ** 2
    sbb = filt(b * b) - mu_b ** 2
    sab = filt(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    smap = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (saa + sbb + c2))
    return smap.mean(dim=(1, 2, 3))


def ssim(restored, reference, channel: str = "y", data_range: float = 1.0) -> float:
    """Mean over frames of the per-frame SSIM."""
    return float(ssim_per_frame(restored, reference, channel, data_range).mean())


# ------------------------------------------------------------------------------------------ flow helpers
def warp(x: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward warp ``out(p) = x(p + flow(p))`` (``flow.warp``: bilinear, border-clamped).

    ``x [N, C, H, W]``, ``flow [N, 2, H, W]`` (dx, dy pixels). Returns ``(out [N, C, H, W], inside [N, H, W])``
    where ``inside`` is True when ``p + flow(p)`` lies in the frame.
    """
    flow = flow.to(x.dtype)
    return _flow.warp(x, flow), _flow.out_of_frame(flow)[:, 0] < 0.5


def estimate_flow_dis(frames, callback=None) -> tuple[torch.Tensor, torch.Tensor]:
    """DIS optical flow (OpenCV, medium preset, via ``flow.estimate_flow``) between consecutive frames.

    Returns ``(forward [T-1, 2, H, W] float64, occlusion [T-1, H, W] bool)``: ``forward[t]`` from frame t to
    t+1 at the pixels of t; ``occlusion`` from the forward-backward check (including leaving the frame).
    ``callback(done, total)`` is called after each pair (progress / interruption hook).
    """
    x = check_frames(frames).detach().cpu()
    ff = _flow.estimate_flow(x, backend="dis", preset="medium", callback=callback)
    return ff.forward.to(torch.float64), ff.occlusion_fwd[:, 0] > 0.5


def fb_occlusion(fwd: torch.Tensor, bwd: torch.Tensor) -> torch.Tensor:
    """Forward-backward occlusion ``[N, H, W]`` bool of ``fwd [N,2,H,W]`` (t -> t+1) given ``bwd`` (t+1 -> t):
    Sundaram et al. 2010 check or leaving the frame (``flow.fb_check``)."""
    return _flow.fb_check(fwd.to(torch.float64), bwd.to(torch.float64))[:, 0] > 0.5


# -------------------------------------------------------------------------------------------- temporal
def _check_flow(flow, t, h, w, name="flow") -> torch.Tensor:
    if hasattr(flow, "forward") and hasattr(flow, "occlusion_fwd"):  # a flow.FlowField
        flow = flow.forward if tuple(flow.forward.shape[-2:]) == (h, w) else _flow.resize_flow(flow.forward, h, w)
    if not isinstance(flow, torch.Tensor) or tuple(flow.shape) != (t - 1, 2, h, w):
        got = tuple(flow.shape) if isinstance(flow, torch.Tensor) else type(flow).__name__
        raise ValueError(f"{name}: expected a tensor of shape {(t - 1, 2, h, w)} [T-1,2,H,W] pixels, got {got}")
    return flow.detach().to("cpu", torch.float64)


def _flowfield_occlusion(flow, h, w):
    occ = flow.occlusion_fwd
    if tuple(occ.shape[-2:]) != (h, w):
        occ = _flow.resize_mask(occ.float(), h, w, 0.5)
    return occ[:, 0] > 0.5


def warping_error_per_pair(frames, flow=None, occlusion=None, flow_from=None) -> torch.Tensor:
    """Warping error of each consecutive pair ``[T-1]`` (see module docstring).

    ``flow [T-1,2,H,W]`` (true flow, or a ``flow.FlowField`` whose forward flow and occlusion are used,
    resized to the frames if needed) with optional ``occlusion [T-1,H,W]`` (True = excluded); without
    ``flow`` it is estimated by DIS on ``flow_from`` (a clip of the same shape, default ``frames``) and the
    occlusion comes from the forward-backward check.
    """
    x = _clip64(frames, "frames")
    t, h, w, _ = x.shape
    if t < 2:
        return torch.zeros(0, dtype=torch.float64)
    if flow is None:
        src = x if flow_from is None else _clip64(flow_from, "flow_from")
        _same_shape(x, src, "frames", "flow_from")
        fwd, occ = estimate_flow_dis(src)
        if occlusion is not None:
            raise ValueError("occlusion: only meaningful together with flow; got occlusion without flow")
    else:
        if occlusion is None and hasattr(flow, "occlusion_fwd"):
            occlusion = _flowfield_occlusion(flow, h, w)
        fwd = _check_flow(flow, t, h, w)
        if occlusion is None:
            occ = torch.zeros(t - 1, h, w, dtype=torch.bool)
        else:
            if not isinstance(occlusion, torch.Tensor) or tuple(occlusion.shape) != (t - 1, h, w):
                raise ValueError(f"occlusion: expected a bool tensor of shape {(t - 1, h, w)}")
            occ = occlusion.detach().cpu().bool()
    nchw = x.permute(0, 3, 1, 2)
    warped, inside = warp(nchw[1:], fwd)
    valid = (inside & ~occ).unsqueeze(1).to(torch.float64)
    err = ((nchw[:-1] - warped).abs() * valid).sum(dim=(1, 2, 3))
    cnt = valid.sum(dim=(1, 2, 3)) * 3
    return torch.where(cnt > 0, err / cnt.clamp_min(1), torch.zeros_like(err))


def warping_error(frames, flow=None, occlusion=None, flow_from=None) -> float:
    """Mean over consecutive pairs of the warping error (0..1 units); ``nan`` for fewer than 2 frames."""
    e = warping_error_per_pair(frames, flow, occlusion, flow_from)
    return float(e.mean()) if e.numel() else float("nan")


def flicker_per_pair(frames, mode: str = "mean") -> torch.Tensor:
    """Per consecutive pair ``[T-1]`` flicker (see module docstring for ``mode`` "mean" / "lowpass")."""
    if mode not in FLICKER_MODES:
        raise ValueError(f"mode: expected one of {list(FLICKER_MODES)}, got {mode!r}")
    y = luma(_clip64(frames, "frames"))
    if y.shape[0] < 2:
        return torch.zeros(0, dtype=torch.float64)
    if mode == "mean":
        m = y.mean(dim=(1, 2))
        return (m[1:] - m[:-1]).abs()
    b = max(1, round(min(y.shape[1:]) / 8))
    lp = F.avg_pool2d(y[:, None], kernel_size=b, stride=b, ceil_mode=True)
    return (lp[1:] - lp[:-1]).abs().mean(dim=(1, 2, 3))


def flicker(frames, mode: str = "mean") -> float:
    """Mean over consecutive pairs of the per-pair flicker; ``nan`` for fewer than 2 frames."""
    f = flicker_per_pair(frames, mode)
    return float(f.mean()) if f.numel() else float("nan")


def seam_ratio(frames, boundaries, mode: str = "mean", flow=None, occlusion=None) -> float:
    """Flicker at window seams over flicker elsewhere.

    ``boundaries``: frame indices b (1 <= b <= T-1) that start a new window, so the pair (b-1, b) straddles
    a seam. ``mode``: "mean" / "lowpass" (flicker, see ``flicker_per_pair``) or "warp" (warping error per
    pair, with ``flow``/``occlusion`` as in ``warping_error_per_pair``). Returns ``inf`` if the other pairs
    are perfectly stable but the seams are not, 1.0 if both are zero.
    """
    x = check_frames(frames)
    t = x.shape[0]
    try:
        bset = sorted({int(b) for b in boundaries})
    except (TypeError, ValueError) as e:
        raise ValueError(f"boundaries: expected a list of frame indices, got {boundaries!r}") from e
    if not bset or bset[0] < 1 or bset[-1] > t - 1:
        raise ValueError(f"boundaries: expected at least one frame index in 1..{t - 1} (T={t}), got {boundaries!r}")
    if len(bset) >= t - 1:
        raise ValueError(f"boundaries: expected some consecutive pairs that are not seams, got all {t - 1} pairs")
    if mode == "warp":
        per = warping_error_per_pair(x, flow, occlusion)
    else:
        per = flicker_per_pair(x, mode)
    mask = torch.zeros(t - 1, dtype=torch.bool)
    mask[[b - 1 for b in bset]] = True
    num, den = float(per[mask].mean()), float(per[~mask].mean())
    if den == 0.0:
        return 1.0 if num == 0.0 else float("inf")
    return num / den


# ------------------------------------------------------------------------------------------ convenience
def resize_to(frames, height: int, width: int) -> torch.Tensor:
    """Bicubic resize ``[T, h, w, 3]`` -> ``[T, height, width, 3]`` (the usual baseline for SR inputs)."""
    x = check_frames(frames)
    if x.shape[1:3] == (height, width):
        return x
    y = F.interpolate(x.permute(0, 3, 1, 2), size=(height, width), mode="bicubic", align_corners=False,
                      antialias=True)
    return y.permute(0, 2, 3, 1).clamp(0, 1).contiguous()


def video_metrics(restored, reference=None, flow=None, occlusion=None, degraded=None,
                  boundaries=None, callback=None) -> dict:
    """All metrics in one dict (floats; ``None`` where undefined).

    Keys: ``frames``, ``height``, ``width``; with ``reference``: ``psnr``, ``ssim`` (luminance),
    ``flicker_reference``, ``warping_error_reference``, ``color_delta_e`` (CIEDE2000 on low-passed frames) and
    ``color_flicker`` (see ``color_diff``); with ``reference`` and ``degraded`` (bicubic-resized
    to the reference size if smaller): ``psnr_degraded``, ``ssim_degraded``, ``color_delta_e_degraded``; always ``warping_error``
    (flow: the given one, else DIS on the reference if any, else DIS on ``restored``; ``flow_source`` says
    which), ``flicker``, ``flicker_lowpass``; with ``boundaries``: ``seam_ratio`` (mean mode) and
    ``seam_ratio_lowpass``. ``callback(done, total)`` is called after each flow pair estimated.
    """
    x = check_frames(restored, "restored")
    t, h, w, _ = x.shape
    out: dict = {"frames": t, "height": h, "width": w}
    ref = None
    if reference is not None:
        ref = check_frames(reference, "reference")
        _same_shape(x, ref, "restored", "reference")
        out["psnr"] = psnr(x, ref)
        out["ssim"] = ssim(x, ref)
        out.update(color_diff.color_metrics(x, ref))
        if degraded is not None:
            d = resize_to(check_frames(degraded, "degraded"), h, w)
            if d.shape[0] != t:
                raise ValueError(f"degraded: expected {t} frames like reference, got {d.shape[0]}")
            out["psnr_degraded"] = psnr(d, ref)
            out["ssim_degraded"] = ssim(d, ref)
            out["color_delta_e_degraded"] = float(color_diff.color_difference_per_frame(d, ref).mean())
    if t >= 2:
        if flow is not None:
            occ = occlusion
            if occ is None and hasattr(flow, "occlusion_fwd"):
                occ = _flowfield_occlusion(flow, h, w)
            fwd = _check_flow(flow, t, h, w)
            out["flow_source"] = "given"
        else:
            fwd, occ = estimate_flow_dis(ref if ref is not None else x, callback)
            out["flow_source"] = "reference" if ref is not None else "restored"
        out["warping_error"] = warping_error(x, fwd, occ)
        if ref is not None:
            out["warping_error_reference"] = warping_error(ref, fwd, occ)
            out["flicker_reference"] = flicker(ref)
        out["flicker"] = flicker(x)
        out["flicker_lowpass"] = flicker(x, "lowpass")
        if boundaries:
            out["seam_ratio"] = seam_ratio(x, boundaries)
            out["seam_ratio_lowpass"] = seam_ratio(x, boundaries, "lowpass")
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


def metrics_to_json(metrics: dict, indent: int | None = 2) -> str:
    """Strict JSON (``inf`` -> the string "inf", ``nan`` -> null), floats rounded to 6 significant digits."""
    def clean(v):
        if isinstance(v, float):
            if math.isnan(v):
                return None
            if math.isinf(v):
                return "inf" if v > 0 else "-inf"
            return float(f"{v:.6g}")
        if isinstance(v, dict):
            return {k: clean(u) for k, u in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(u) for u in v]
        return v
    return json.dumps(clean(metrics), indent=indent, allow_nan=False)
