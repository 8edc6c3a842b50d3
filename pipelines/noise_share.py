"""Spatial-temporal noise sharing (ZVRD Eq. 11, Table 5 STNS).

Two parts:

1. **Shared noise.** Every frame gets the *same* noise field: one draw ``z [1,C,h,w]`` repeated over
   the ``T`` frames, for the initial noise ``x_T`` and for each step's fresh noise ``z`` of
   ancestral / SDE samplers. In static areas all frames then see identical noise and the model
   generates identical detail.
2. **Flow-guided blending (Eq. 11).** In moving areas the noise should follow the motion, so frame
   ``i`` blends its noise with frame ``i-1``'s noise pulled onto its grid by the backward flow
   ``f_i`` (frame ``i`` -> ``i-1``):

       z'^i = M_i (lam z^i + (1 - lam) w^i) + (1 - M_i) z^i,    w^i = warp(z^{i-1}, f_i)

   ``M_i = 1 - occlusion_bwd[i-1]`` (1 where the flow passes the forward-backward check) and frame 0
   is left as is. ``z^{i-1}`` is the *unblended* noise of frame ``i-1`` (the formula is applied once,
   not recursively). Warping uses nearest-neighbour sampling, so ``w^i`` is a copy of single noise
   values (bilinear sampling would average neighbours and shrink the variance).

Variance. As written Eq. 11 shrinks the variance where ``z^i`` and ``w^i`` are independent:
``Var = lam^2 + (1 - lam)^2 < 1`` (0.5 at ``lam = 0.5``), i.e. moving areas get less noise than the
sampler expects, which shows up as smoothed / washed-out detail. Two modes:

* ``variance_preserving=True`` (default): the blend is divided by its exact standard deviation
  ``sqrt(lam^2 + (1-lam)^2 + 2 lam (1-lam) rho)``, where ``rho`` is the correlation of ``z^i(p)`` and
  ``w^i(p)``. With shared or independent Gaussian noise and a nearest-neighbour warp, ``w^i(p)`` is
  either the very same random value as ``z^i(p)`` (``rho = 1``: zero displacement on shared noise; the
  blend is then the identity) or an independent one (``rho = 0``), and the two cases are told apart
  exactly by value equality (two independent continuous draws coincide with probability 0). Every
  output value therefore has unit variance.
* ``variance_preserving=False``: Eq. 11 exactly as in the paper.

All randomness comes from a seeded ``torch.Generator`` on the CPU (like ComfyUI's own noise), never
from the global RNG.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .checks import check_latents, check_unit
from .flow import FlowField, warp

Tensor = torch.Tensor

DEFAULT_LAMBDA = 0.5


def shared_noise(shape, generator: torch.Generator, dtype=torch.float32, device=None) -> Tensor:
    """One standard-normal field ``[1,C,h,w]`` repeated to ``shape = [T,C,h,w]`` (drawn on the CPU
    from ``generator``, then moved to ``device``)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"shape: expected [frames,C,h,w] with positive sizes, got {shape}")
    z = torch.randn((1,) + shape[1:], generator=generator, dtype=torch.float32, device="cpu")
    return z.expand(shape).to(device=device, dtype=dtype).contiguous()


def blend_noise(z: Tensor, flow: Optional[FlowField], lam: float = DEFAULT_LAMBDA,
                variance_preserving: bool = True) -> Tensor:
    """Eq. 11 flow-guided blending of per-frame noise ``z [T,C,h,w]`` (see module docstring).

    ``flow`` is a :class:`FlowField` of the same ``T`` frames on any grid (it is resized to
    ``h x w``); ``None`` or ``T == 1`` returns ``z`` unchanged. Returns a new tensor.
    """
    check_latents(z, "z")
    lam = check_unit(lam, "lam", "a blend weight")
    T, C, h, w = z.shape
    if flow is None or T == 1:
        return z
    if flow.num_frames != T:
        raise ValueError(f"flow: expected a FLOW of {T} frames (one per latent frame), got {flow.num_frames}")
    f = flow.resized(h, w)
    bwd = f.backward.to(device=z.device, dtype=torch.float32)          # [T-1,2,h,w]: frame i -> i-1
    valid = 1.0 - f.occlusion_bwd.to(device=z.device, dtype=torch.float32)  # [T-1,1,h,w]
    a = z[1:].float()
    b = warp(z[:-1].float(), bwd, padding_mode="border", mode="nearest")
    mixed = lam * a + (1.0 - lam) * b
    if variance_preserving:
        rho = (a == b).float()
        var = lam * lam + (1.0 - lam) ** 2 + 2.0 * lam * (1.0 - lam) * rho
        mixed = mixed / var.sqrt()
    out = z.clone()
    out[1:] = (valid * mixed + (1.0 - valid) * a).to(z.dtype)
    return out


class NoiseShare:
    """Seeded source of shared, flow-blended noise for one clip.

    * ``initial(shape, dtype, device)``: the initial noise ``[T,C,h,w]`` (shared; blended with the flow
      when ``blend_initial``). Deterministic for a given seed.
    * ``step_sampler(x)``: a k-diffusion ``noise_sampler(sigma, sigma_next) -> [T,C,h,w]`` for
      ancestral / SDE samplers: each call draws a fresh shared field from its own generator (seeded
      with ``seed + 1``, so step noise never repeats the initial noise) and blends it.
    * ``frames``: absolute frame indices of the latent batch (a window of a longer clip); the flow is
      narrowed to them with ``FlowField.select``.
    """

    def __init__(self, seed: int, flow: Optional[FlowField] = None, lam: float = DEFAULT_LAMBDA,
                 variance_preserving: bool = True, blend_initial: bool = True):
        self.seed = int(seed)
        self.flow = flow
        self.lam = check_unit(lam, "lam", "a blend weight")
        self.variance_preserving = bool(variance_preserving)
        self.blend_initial = bool(blend_initial)

    def _flow_for(self, frames: int, frame_index=None) -> Optional[FlowField]:
        if self.flow is None or frames < 2:
            return None
        if frame_index is not None:
            return self.flow.select(list(frame_index))
        if self.flow.num_frames != frames:
            raise ValueError(f"flow: expected a FLOW of {frames} frames (one per latent frame), "
                             f"got {self.flow.num_frames}")
        return self.flow

    def initial(self, shape, dtype=torch.float32, device=None, frame_index=None) -> Tensor:
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        z = shared_noise(shape, gen, dtype=dtype, device=device)
        if self.blend_initial:
            z = blend_noise(z, self._flow_for(z.shape[0], frame_index), self.lam, self.variance_preserving)
        return z

    def step_sampler(self, x: Tensor, frame_index=None) -> Callable[[Tensor, Tensor], Tensor]:
        check_latents(x, "x")
        gen = torch.Generator(device="cpu").manual_seed(self.seed + 1)
        flow = self._flow_for(x.shape[0], frame_index)
        shape, dtype, device = tuple(x.shape), x.dtype, x.device
        lam, vp = self.lam, self.variance_preserving

        def noise_sampler(sigma=None, sigma_next=None) -> Tensor:
            z = shared_noise(shape, gen, dtype=dtype, device=device)
            return blend_noise(z, flow, lam, vp)

        return noise_sampler
