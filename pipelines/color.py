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

Temporal smoothing (``window`` radius r > 0) smooths the *target* colour, not the frame's own statistics:
the reference's per-channel frame statistics ``m_t = mu(ref_t)`` and ``s_t = sigma(ref_t)`` are averaged over
the centred window ``t-r .. t+r`` with a box filter, the clip's end frames repeated where the window passes
an end (every window has 2r+1 terms): ``M_t``, ``S_t``. ``adain`` then uses ``M_t, S_t`` in place of
``mu(ref), sigma(ref)`` while still normalising by the restored frame's own ``mu(x), sigma(x)`` (so the
restorer's frame-to-frame drift is still removed, and the output's channel means and deviations are exactly
``M_t, S_t``); ``wavelet`` uses the target low band ``low(ref_t) - m_t + M_t`` (the reference's structure of
frame t, its global colour averaged over the window). Smoothing the difference ``D_t`` itself was measured
and rejected: it keeps the restorer's own per-frame drift (the colour flicker of the output came back to that
of the uncorrected clip). Consequences (tested): on a static clip the correction is the same for every
frame; between consecutive frames ``M`` changes by ``(m_{t+r+1} - m_{t-r}) / (2r+1)``, so never by more than
``(max m - min m) / (2r+1)`` (likewise ``S``); with r = 0 and restored == reference the output is the input.
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


def _box_time(stats: torch.Tensor, radius: int) -> torch.Tensor:
    """Centred box average over dim 0 of ``stats [T, ...]`` with end frames repeated (window 2r+1)."""
    if radius <= 0:
        return stats
    t = stats.shape[0]
    padded = stats.index_select(0, torch.arange(-radius, t + radius, device=stats.device).clamp(0, t - 1))
    csum = torch.cat([torch.zeros_like(padded[:1]), padded.cumsum(0)])
    return (csum[2 * radius + 1:] - csum[:t]) / (2 * radius + 1)


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
    stats = _adain_stats(x, ref, h, w, dtype, device, chunk)  # [T, 4, 3], small
    target = _box_time(stats[:, 2:], window)  # the reference's smoothed mean / std: M_t, S_t
    out = torch.empty_like(x)
    for a in range(0, t, chunk):
        b = min(a + chunk, t)
        idx = torch.arange(a, b, device=device)
        cur = _frames(x, idx, dtype, device)
        own, tgt = stats[a:b, :, :, None, None], target[a:b, :, :, None, None]  # [n, 2|4, 3, 1, 1]
        if method == "adain":
            fixed = (cur - own[:, 0]) / own[:, 1].clamp_min(_EPS) * tgt[:, 1] + tgt[:, 0]
        else:
            r = match_size(_frames(ref, idx, dtype, device), h, w)
            low_ref = lowpass(r, levels) + (tgt[:, 0] - own[:, 2] if window else 0.0)
            fixed = cur - lowpass(cur, levels) + low_ref
        res = cur + float(strength) * (fixed - cur)
        if clamp:
            res = res.clamp(0.0, 1.0)
        out[a:b] = res.permute(0, 2, 3, 1).to(out.dtype)
        if callback is not None:
            callback(b, t)
    return out
