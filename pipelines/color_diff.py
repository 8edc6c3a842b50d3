"""Colour difference of a clip to a reference: CIEDE2000 on low-passed frames, and colour flicker.

Frames ``[T, H, W, 3]`` are sRGB in 0..1 (ComfyUI IMAGE). Definitions (computed in float64 on the CPU):

* low-pass ``B``: the mean of ``b x b`` pixel blocks, ``b = max(1, round(min(H, W) / 8))`` (the block size of
  ``metrics.flicker(mode="lowpass")``), so noise and fine detail do not count as colour.
* CIELAB: sRGB (IEC 61966-2-1 transfer curve) -> linear RGB -> XYZ (sRGB/D65 matrix) -> L*a*b* with the D65
  2-degree white (0.95047, 1, 1.08883), as ``skimage.color.rgb2lab``.
* ``delta_e_2000(lab1, lab2)``: CIEDE2000 (CIE 142-2001) with kL = kC = kH = 1, as written out in Sharma, Wu
  and Dalal 2005, "The CIEDE2000 color-difference formula: implementation notes", Eq. 1-22.
* ``color_difference_per_frame``: per frame, the mean over blocks of ``dE00(Lab(B(x_t)), Lab(B(ref_t)))``.
  1 is about a just noticeable difference; 0 for identical frames.
* ``color_flicker_per_pair``: the frame's colour cast ``e_t = mean over blocks of (Lab(B(x_t)) - Lab(B(ref_t)))``
  (a 3-vector: dL*, da*, db*); per consecutive pair ``||e_{t+1} - e_t||`` (the CIE76 distance, a simpler
  deltaE: CIEDE2000 is not defined for differences of differences). A steady cast, however large, gives 0;
  a cast that pumps from frame to frame does not. Motion cancels because the reference moves too.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

WHITE_D65 = (0.95047, 1.0, 1.08883)
XYZ_FROM_RGB = ((0.412453, 0.357580, 0.180423),
                (0.212671, 0.715160, 0.072169),
                (0.019334, 0.119193, 0.950227))


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB ``[..., 3]`` in 0..1 -> CIELAB ``[..., 3]`` (L* 0..100), D65 white."""
    lin = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb.clamp_min(0) + 0.055) / 1.055) ** 2.4)
    m = torch.tensor(XYZ_FROM_RGB, dtype=rgb.dtype, device=rgb.device)
    xyz = (lin @ m.T) / torch.tensor(WHITE_D65, dtype=rgb.dtype, device=rgb.device)
    eps, kappa = 216 / 24389, 24389 / 27
    f = torch.where(xyz > eps, xyz.clamp_min(eps) ** (1 / 3), (kappa * xyz + 16) / 116)
    return torch.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def delta_e_2000(lab1: torch.Tensor, lab2: torch.Tensor) -> torch.Tensor:
    """CIEDE2000 ``[...]`` between CIELAB tensors ``[..., 3]`` (Sharma et al. 2005, Eq. 1-22)."""
    l1, a1, b1 = lab1.unbind(-1)
    l2, a2, b2 = lab2.unbind(-1)
    c_bar7 = ((torch.hypot(a1, b1) + torch.hypot(a2, b2)) / 2) ** 7
    g = 0.5 * (1 - torch.sqrt(c_bar7 / (c_bar7 + 25.0 ** 7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = torch.hypot(a1p, b1), torch.hypot(a2p, b2)
    h1p = torch.rad2deg(torch.atan2(b1, a1p)) % 360
    h2p = torch.rad2deg(torch.atan2(b2, a2p)) % 360
    zero = (c1p * c2p) == 0
    dh = h2p - h1p
    dh = torch.where(dh > 180, dh - 360, torch.where(dh < -180, dh + 360, dh))
    dh = torch.where(zero, torch.zeros_like(dh), dh)
    d_hp = 2 * torch.sqrt(c1p * c2p) * torch.sin(torch.deg2rad(dh / 2))
    l_bar, c_barp = (l1 + l2) / 2, (c1p + c2p) / 2
    hsum = h1p + h2p
    h_bar = torch.where((h1p - h2p).abs() <= 180, hsum / 2, torch.where(hsum < 360, (hsum + 360) / 2, (hsum - 360) / 2))
    h_bar = torch.where(zero, hsum, h_bar)
    rad = torch.deg2rad
    t = (1 - 0.17 * torch.cos(rad(h_bar - 30)) + 0.24 * torch.cos(rad(2 * h_bar))
         + 0.32 * torch.cos(rad(3 * h_bar + 6)) - 0.20 * torch.cos(rad(4 * h_bar - 63)))
    d_theta = 30 * torch.exp(-(((h_bar - 275) / 25) ** 2))
    r_c = 2 * torch.sqrt(c_barp ** 7 / (c_barp ** 7 + 25.0 ** 7))
    s_l = 1 + 0.015 * (l_bar - 50) ** 2 / torch.sqrt(20 + (l_bar - 50) ** 2)
    s_c = 1 + 0.045 * c_barp
    s_h = 1 + 0.015 * c_barp * t
    r_t = -torch.sin(rad(2 * d_theta)) * r_c
    dl, dc, dhh = (l2 - l1) / s_l, (c2p - c1p) / s_c, d_hp / s_h
    return torch.sqrt((dl ** 2 + dc ** 2 + dhh ** 2 + r_t * dc * dhh).clamp_min(0))


def block_lab(frames: torch.Tensor) -> torch.Tensor:
    """``frames [T, H, W, 3]`` -> CIELAB of the ``b x b`` block means ``[T, h, w, 3]`` (float64, CPU)."""
    x = frames.detach().to("cpu", torch.float64)
    b = max(1, round(min(x.shape[1:3]) / 8))
    lp = F.avg_pool2d(x.permute(0, 3, 1, 2), kernel_size=b, stride=b, ceil_mode=True)
    return rgb_to_lab(lp.permute(0, 2, 3, 1))


def _pairs(frames, reference, chunk: int = 32):
    """Yields ``(lab_x, lab_ref)`` block-Lab chunks of both clips (bounded memory on long clips)."""
    if frames.shape != reference.shape:
        raise ValueError(f"reference: expected the same shape as restored {tuple(frames.shape)}, "
                         f"got {tuple(reference.shape)}")
    for a in range(0, frames.shape[0], chunk):
        yield block_lab(frames[a:a + chunk]), block_lab(reference[a:a + chunk])


def color_difference_per_frame(frames: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean CIEDE2000 per frame ``[T]`` between the low-passed clips (see the module docstring)."""
    return torch.cat([delta_e_2000(lx, lr).mean((1, 2)) for lx, lr in _pairs(frames, reference)])


def color_cast(frames: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-frame mean Lab difference ``e_t [T, 3]`` (dL*, da*, db*) of the low-passed clips."""
    return torch.cat([(lx - lr).mean((1, 2)) for lx, lr in _pairs(frames, reference)])


def color_flicker_per_pair(frames: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``||e_{t+1} - e_t||`` per consecutive pair ``[T-1]`` (CIE76 units; see the module docstring)."""
    e = color_cast(frames, reference)
    return (e[1:] - e[:-1]).norm(dim=-1)


def color_metrics(frames: torch.Tensor, reference: torch.Tensor) -> dict:
    """``{"color_delta_e": mean CIEDE2000, "color_flicker": mean per-pair cast change (None for 1 frame)}``."""
    d, e = [], []
    for lx, lr in _pairs(frames, reference):  # one Lab conversion for both figures
        d.append(delta_e_2000(lx, lr).mean((1, 2)))
        e.append((lx - lr).mean((1, 2)))
    e = torch.cat(e)
    f = (e[1:] - e[:-1]).norm(dim=-1)
    return {"color_delta_e": float(torch.cat(d).mean()),
            "color_flicker": float(f.mean()) if f.numel() else None}
