"""Bring frames back to an exact size after a workflow changed it (working-scale round trips, VAEs that
crop to multiples of 8), so a W x H clip in gives a W x H clip out whatever W and H are.

``match_size(images [T, h, w, C], height, width, method) -> [T, height, width, C]`` on the input's device
and dtype. Methods: ``area`` (pixel averaging; at an exact 1/2 it equals ComfyUI's ImageScaleBy "area" x0.5),
``bicubic`` / ``bilinear`` resize (antialiased when shrinking), ``crop_or_pad`` keeps
the pixel grid (centre crop where larger, edge replication where smaller: no resampling at all).

A super-resolution workflow's output is a whole multiple of the input: ``output_scale`` reads that
multiple off the two sizes, so matching goes to ``scale x`` the reference size, not back to it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

METHODS = ("area", "bicubic", "bilinear", "crop_or_pad")


def _crop_or_pad(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """x [T, C, h, w]: centre crop or edge-replicate each axis independently."""
    h, w = x.shape[-2:]
    top, left = max(h - height, 0) // 2, max(w - width, 0) // 2
    x = x[..., top:top + min(h, height), left:left + min(w, width)]
    ph, pw = max(height - h, 0), max(width - w, 0)
    if ph or pw:
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate")
    return x


def match_size(images: torch.Tensor, height: int, width: int, method: str = "bicubic") -> torch.Tensor:
    """[T, h, w, C] -> [T, height, width, C]; the same tensor when the size already matches."""
    if images.ndim != 4:
        raise ValueError(f"images: expected [frames, height, width, channels], got {tuple(images.shape)}")
    if height < 1 or width < 1:
        raise ValueError(f"size: expected a positive height and width, got {height}x{width}")
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if tuple(images.shape[1:3]) == (height, width):
        return images
    x = images.permute(0, 3, 1, 2)
    if method == "crop_or_pad":
        y = _crop_or_pad(x, height, width)
    elif method == "area":
        y = F.interpolate(x, size=(height, width), mode="area")
    else:
        y = F.interpolate(x, size=(height, width), mode=method, align_corners=False, antialias=True)
        y = y.clamp(0, 1)  # bicubic overshoots
    return y.permute(0, 2, 3, 1).contiguous()


def output_scale(height: int, width: int, ref_height: int, ref_width: int) -> int:
    """The whole scale factor a workflow applied, read off its output ``height x width`` and the input
    ``ref_height x ref_width``: the integer nearest the mean of the two size ratios, at least 1 (a
    restore that crops to multiples of 8 gives 1; the x4 upscaler gives 4 whatever the cropping)."""
    if min(height, width, ref_height, ref_width) < 1:
        raise ValueError(f"size: expected positive sizes, got {height}x{width} and {ref_height}x{ref_width}")
    return max(1, round((height / ref_height + width / ref_width) / 2))


def to_8bit_centres(images: torch.Tensor) -> torch.Tensor:
    """Snap values in 0..1 to the centres of the 8-bit bins, ``(round(255 x) + 0.5) / 255`` (1.0 stays 1.0),
    same shape, device and dtype. An 8-bit writer then stores round(255 x) whether it rounds or truncates
    (ComfyUI's SaveImage truncates ``255 x``: a decoder that returns 40/255 as 0.156862 would be saved as 39)."""
    k = (images.float().clamp(0, 1) * 255).round()
    return ((k + 0.5).clamp(max=255) / 255).to(images.dtype)
