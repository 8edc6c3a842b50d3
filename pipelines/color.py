"""Colour correction of restored frames towards a reference clip (the restorer's input), steady over time.

Diffusion restorers drift colour and exposure (VAE round trip, sampling); the usual fix (StableSR, SUPIR,
DiffBIR, FlashVSR's ``color_fix``) takes the colour from the input and the detail from the restored frame.
StableSR (Wang et al. 2023, "Exploiting Diffusion Prior for Real-World Image Super-Resolution", Sec. 3.4
colour correction) gives the two methods implemented here; this module defines them precisely:

Shapes: ``restored [T, H, W, 3]``, ``reference [T, h, w, 3]`` (ComfyUI IMAGE, float, 0..1). When
``(h, w) != (H, W)`` (super-resolution) the reference is resized to ``H x W`` first: bicubic with
antialiasing when it grows, area averaging when it shrinks (``match_size``). Output: ``[T, H, W, 3]`` on the
restored clip's device and dtype, clamped to 0..1. Arithmetic is float32 for half / bfloat16 inputs, the
input dtype otherwise. Frames are processed in chunks of ``chunk`` frames, so memory does not grow with T.

* ``wavelet``: a stationary (undecimated, "a trous") wavelet decomposition with N levels (default 5, as
  StableSR). Let ``k = [1, 2, 1] / 4`` and ``K_d`` the separable 2-D filter ``k x k`` with taps ``d`` pixels
  apart, borders replicated (index clamping, so any size works, odd and 1-pixel sizes too). Then
  ``L_0 = x``, ``L_{i+1} = K_{2^i} * L_i`` for ``i = 0..N-1``; the low-frequency band is ``low(x) = L_N`` and
  the high-frequency band ``high(x) = x - L_N`` (the sum of the N detail bands ``L_i - L_{i+1}``). Per frame
  ``out = high(restored) + low(reference)``, i.e. ``out = restored + D`` with the low-frequency difference
  ``D = low(reference) - low(restored)``; so ``out - low(reference) == high(restored)`` exactly (before the
  0..1 clamp): the restored frame's high-frequency band is kept as it is.
* ``adain``: adaptive instance normalisation (Huang & Belongie 2017, Eq. 8) per frame and channel c:
  ``out_c = (x_c - mu_c(x)) / sigma_c(x) * sigma_c(ref) + mu_c(ref)`` with mean and (population) standard
  deviation over the frame's pixels (``sigma`` floored at 1e-5 so flat frames stay finite).
* ``none``: the restored frames unchanged.

Temporal smoothing (``window`` radius r > 0): the correction statistics are averaged over the centred window
of frames ``t-r .. t+r`` with a box filter, the clip's end frames repeated where the window passes an end
(so every window has 2r+1 terms). For ``wavelet`` the smoothed statistic is the difference map ``D_t``; for
``adain`` the four statistics ``mu(x), sigma(x), mu(ref), sigma(ref)`` per channel. Consequences (tested):
on a static clip the correction is the same for every frame, and between consecutive frames a smoothed
statistic S changes by ``(s_{t+r+1} - s_{t-r}) / (2r+1)``, so never by more than ``(max s - min s) / (2r+1)``.
``strength`` in 0..1 blends: ``out = restored + strength * (corrected - restored)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .degrade import validate_frames

METHODS = ("wavelet", "adain", "none")
DEFAULT_LEVELS = 5
DEFAULT_CHUNK = 16
_EPS = 1e-5


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def match_size(reference: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``reference [N, C, h, w]`` -> ``[N, C, height, width]``: bicubic (antialiased) when growing in both
    directions, area averaging when shrinking in both, bicubic otherwise; unchanged at the same size."""
    h, w = reference.shape[-2:]
    if (h, w) == (height, width):
        return reference
    if height <= h and width <= w:
        return F.interpolate(reference, size=(height, width), mode="area")
    return F.interpolate(reference, size=(height, width), mode="bicubic", align_corners=False, antialias=True)


def _blur_axis(x: torch.Tensor, dim: int, step: int) -> torch.Tensor:
    """``[1, 2, 1] / 4`` along ``dim`` with taps ``step`` apart, clamped (replicated) borders."""
    n = x.shape[dim]
    idx = torch.arange(n, device=x.device)
    lo = x.index_select(dim, (idx - step).clamp_min(0))
    hi = x.index_select(dim, (idx + step).clamp_max(n - 1))
    return 0.25 * lo + 0.5 * x + 0.25 * hi


def lowpass(x: torch.Tensor, levels: int = DEFAULT_LEVELS) -> torch.Tensor:
    """The low-frequency band ``L_N`` of ``x [N, C, H, W]`` (see the module docstring; ``levels`` = N >= 1)."""
    for i in range(levels):
        x = _blur_axis(_blur_axis(x, -1, 2 ** i), -2, 2 ** i)
    return x


def _box_padded(padded: torch.Tensor, radius: int) -> torch.Tensor:
    """Box averages of width 2r+1 along dim 0 of an already padded ``[n + 2r, ...]`` -> ``[n, ...]``."""
    if radius <= 0:
        return padded
    n = padded.shape[0] - 2 * radius
    csum = torch.cat([torch.zeros_like(padded[:1]), padded.cumsum(0)])
    return (csum[2 * radius + 1:] - csum[:n]) / (2 * radius + 1)


def _window_index(a: int, b: int, radius: int, t: int, device) -> torch.Tensor:
    """Frame indices ``a-r .. b-1+r`` with the clip's end frames repeated past its ends."""
    return torch.arange(a - radius, b + radius, device=device).clamp(0, t - 1)


def _box_time(stats: torch.Tensor, radius: int) -> torch.Tensor:
    """Centred box average over dim 0 of ``stats [T, ...]`` with end frames repeated (window 2r+1)."""
    t = stats.shape[0]
    return _box_padded(stats.index_select(0, _window_index(0, t, radius, t, stats.device)), radius)


def _frames(x: torch.Tensor, idx: torch.Tensor, dtype, device) -> torch.Tensor:
    """Frames ``idx`` of an IMAGE clip as ``[n, 3, H, W]`` in the working dtype on ``device``."""
    return x.index_select(0, idx.to(x.device)).to(device=device, dtype=dtype).permute(0, 3, 1, 2)


def _adain_stats(restored, reference, h, w, dtype, device, chunk) -> torch.Tensor:
    """Per frame ``[T, 4, 3]``: mean(x), std(x), mean(ref), std(ref) per channel."""
    out = []
    for a in range(0, restored.shape[0], chunk):
        idx = torch.arange(a, min(a + chunk, restored.shape[0]), device=device)
        x = _frames(restored, idx, dtype, device)
        r = match_size(_frames(reference, idx, dtype, device), h, w)
        out.append(torch.stack([x.mean((2, 3)), x.std((2, 3), correction=0),
                                r.mean((2, 3)), r.std((2, 3), correction=0)], 1))
    return torch.cat(out)


def _wavelet_diff(restored, reference, idx, h, w, dtype, device, levels) -> torch.Tensor:
    """``D = low(reference) - low(restored)`` of frames ``idx`` as ``[n, 3, H, W]``."""
    x = _frames(restored, idx, dtype, device)
    r = match_size(_frames(reference, idx, dtype, device), h, w)
    return lowpass(r, levels) - lowpass(x, levels)


def color_match(restored, reference, method: str = "wavelet", window: int = 0, strength: float = 1.0,
                levels: int = DEFAULT_LEVELS, chunk: int = DEFAULT_CHUNK, clamp: bool = True,
                callback=None) -> torch.Tensor:
    """Colour-correct ``restored [T,H,W,3]`` towards ``reference [T,h,w,3]`` (see the module docstring).

    ``method``: "wavelet" / "adain" / "none"; ``window``: temporal radius r (0 = per frame); ``strength``
    0..1; ``levels``: wavelet levels N; ``chunk``: frames processed at once; ``clamp``: clamp to 0..1;
    ``callback(done, total)`` is called after each chunk (progress / interruption hook).
    Returns ``[T, H, W, 3]`` with the dtype and device of ``restored``.
    """
    x = validate_frames(restored, "restored")
    ref = validate_frames(reference, "reference")
    if method not in METHODS:
        raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}")
    if ref.shape[0] != x.shape[0]:
        raise ValueError(f"reference: expected {x.shape[0]} frames like restored, got {ref.shape[0]}")
    if isinstance(window, bool) or int(window) != window or window < 0:
        raise ValueError(f"window: expected an integer >= 0 (temporal radius in frames), got {window!r}")
    if not 0.0 <= float(strength) <= 1.0:
        raise ValueError(f"strength: expected a number in 0..1, got {strength!r}")
    if isinstance(levels, bool) or int(levels) != levels or not 1 <= levels <= 12:
        raise ValueError(f"levels: expected an integer in 1..12 (wavelet levels), got {levels!r}")
    if isinstance(chunk, bool) or int(chunk) != chunk or chunk < 1:
        raise ValueError(f"chunk: expected an integer >= 1 (frames per chunk), got {chunk!r}")
    if method == "none" or float(strength) == 0.0:
        return x.clone()
    window, chunk, levels = int(window), int(chunk), int(levels)
    t, h, w, _ = x.shape
    device, dtype = x.device, _work_dtype(x.dtype)
    stats = None
    if method == "adain":
        stats = _box_time(_adain_stats(x, ref, h, w, dtype, device, chunk), window)
    out = torch.empty_like(x)
    for a in range(0, t, chunk):
        b = min(a + chunk, t)
        idx = torch.arange(a, b, device=device)
        cur = _frames(x, idx, dtype, device)
        if method == "adain":
            s = stats[a:b, :, :, None, None]  # [n, 4, 3, 1, 1]
            fixed = (cur - s[:, 0]) / s[:, 1].clamp_min(_EPS) * s[:, 3] + s[:, 2]
        else:
            # the window's difference maps: frames a-r .. b-1+r, ends repeated (bounded by chunk + 2r frames)
            span = _window_index(a, b, window, t, device)
            fixed = cur + _box_padded(_wavelet_diff(x, ref, span, h, w, dtype, device, levels), window)
        res = cur + float(strength) * (fixed - cur)
        if clamp:
            res = res.clamp(0.0, 1.0)
        out[a:b] = res.permute(0, 2, 3, 1).to(out.dtype)
        if callback is not None:
            callback(b, t)
    return out
