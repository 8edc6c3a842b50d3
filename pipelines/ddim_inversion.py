"""Deterministic DDIM inversion (TDM paper §2.1, Eq. 4) and the matching DDIM sampling, in the
k-diffusion sigma parametrisation used by ComfyUI.

Parametrisation: for an EPS model a noisy latent is ``x = x0 + sigma * eps`` (ComfyUI's
"unscaled" latent; the model wrapper divides by ``sqrt(1 + sigma^2)`` itself). A model is a callable
``model(x, sigma) -> denoised`` with ``x`` ``[B, C, H, W]`` (any shape with batch first) and
``sigma`` a ``[B]`` tensor, returning the x0 estimate (k-diffusion convention). The noise
estimate is ``eps_hat = (x - denoised) / sigma``.

DDIM (Eq. 3) written in sigma form is one first-order step from ``sigma`` to ``sigma_next``:

    x_next = x0_hat + sigma_next * eps_hat  =  x + (sigma_next - sigma) * eps_hat

DDIM inversion (Eq. 4) runs the same update upwards, from the clean latent (``sigma = 0``, the
last entry of a sampling schedule) to the highest sigma (the first entry). The noise estimate
``eps_hat`` for the step between two sigmas is taken where the sampler will take it:

* ``eval_at="next"`` (default): the model is evaluated at the *higher* sigma of the interval with the
  current (lower-noise) latent. This is the sampler's own evaluation point for that interval, is
  well defined from ``sigma = 0`` and is the convention of diffusers' DDIMInverseScheduler.
* ``eval_at="current"``: Eq. 4 literally (the model at the current sigma). At ``sigma = 0`` the model
  carries no noise information, so the first step from 0 falls back to ``"next"``.

Both are exact inverses of :func:`ddim_sample` on the same schedule when the model predicts the same
noise everywhere (e.g. constant noise), and close for a smooth model.

Schedules are ComfyUI SIGMAS: 1-D, descending, usually ending with 0.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, torch.Tensor, torch.Tensor, int], None]

EVAL_AT = ("next", "current")


def check_sigmas(sigmas: torch.Tensor | Sequence[float], name: str = "sigmas") -> torch.Tensor:
    """Validate a sampling schedule: 1-D, >= 2 entries, finite, >= 0, strictly descending."""
    s = torch.as_tensor(sigmas, dtype=torch.float64 if not torch.is_tensor(sigmas) else None)
    if s.ndim != 1 or s.numel() < 2:
        raise ValueError(f"{name}: expected a 1-D schedule with at least 2 sigmas, got shape {tuple(s.shape)}")
    if not torch.isfinite(s).all() or (s < 0).any():
        raise ValueError(f"{name}: expected finite sigmas >= 0")
    if not (s[:-1] > s[1:]).all():
        raise ValueError(f"{name}: expected a strictly descending schedule (high sigma first), got {s.tolist()}")
    return s


def _eps(model: Model, x: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    s = x.new_full((x.shape[0],), float(sigma))
    denoised = model(x, s)
    return (x - denoised) / float(sigma), denoised


def ddim_step(model: Model, x: torch.Tensor, sigma: float, sigma_next: float,
              eval_sigma: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One deterministic DDIM update ``x(sigma) -> x(sigma_next)`` (up or down).

    ``eval_sigma`` is where the model is asked for its noise (default ``sigma``). Returns
    ``(x_next, denoised)``.
    """
    ev = float(sigma if eval_sigma is None else eval_sigma)
    if ev <= 0:
        raise ValueError(f"eval_sigma: expected a sigma > 0 to evaluate the model at, got {ev}")
    eps, denoised = _eps(model, x, ev)
    return x + (float(sigma_next) - float(sigma)) * eps, denoised


def ddim_sample(model: Model, x: torch.Tensor, sigmas, callback: Callback | None = None) -> torch.Tensor:
    """Deterministic DDIM sampling down the schedule: ``x`` is at ``sigmas[0]``; returns the latent
    at ``sigmas[-1]``. ``callback(i, denoised, x, total_steps)`` after each step."""
    s = check_sigmas(sigmas)
    n = s.numel() - 1
    for i in range(n):
        x, denoised = ddim_step(model, x, s[i].item(), s[i + 1].item())
        if callback is not None:
            callback(i, denoised, x, n)
    return x


def ddim_invert(model: Model, x: torch.Tensor, sigmas, eval_at: str = "next", refine: int = 0,
                callback: Callback | None = None) -> torch.Tensor:
    """Deterministic DDIM inversion (Eq. 4) up the schedule: ``x`` is at ``sigmas[-1]`` (the clean
    latent when the schedule ends with 0); returns the latent at ``sigmas[0]``, ready for
    :func:`ddim_sample` on the same ``sigmas``.

    x: ``[B, ...]`` latent. ``eval_at``: see the module docstring.
    ``refine``: extra fixed-point iterations per step (0 = plain Eq. 4). The sampler's step from
    ``hi`` down to ``lo`` uses ``eps(x_hi, hi)``; plain inversion approximates it with
    ``eps(x_lo, hi)``, which leaves a round-trip error that grows with the step size. Each
    iteration re-solves ``x_hi = x_lo + (hi - lo) * eps(x_hi, hi)`` with the latest ``x_hi``
    (one extra model call), so the round trip becomes exact as the iteration converges.
    ``callback(i, denoised, x, total_steps)`` after each step.
    """
    if eval_at not in EVAL_AT:
        raise ValueError(f"eval_at: expected one of {EVAL_AT}, got {eval_at!r}")
    if int(refine) < 0:
        raise ValueError(f"refine: expected an integer >= 0, got {refine}")
    s = check_sigmas(sigmas)
    n = s.numel() - 1
    for step, i in enumerate(range(n, 0, -1)):
        lo, hi = s[i].item(), s[i - 1].item()
        ev = hi if (eval_at == "next" or lo <= 0) else lo
        x_hi, denoised = ddim_step(model, x, lo, hi, eval_sigma=ev)
        for _ in range(int(refine)):
            eps, denoised = _eps(model, x_hi, hi)
            x_hi = x + (hi - lo) * eps
        x = x_hi
        if callback is not None:
            callback(step, denoised, x, n)
    return x


def uniform_timestep_sigmas(sigma_fn: Callable[[torch.Tensor], torch.Tensor], t_start: float, t_end: float,
                            steps: int, append_zero: bool = True) -> torch.Tensor:
    """DDIM-style schedule: ``steps`` sigmas at timesteps evenly spaced from ``t_start`` down to
    ``t_end`` (``sigma_fn`` maps a timestep tensor to sigma, e.g. ComfyUI's
    ``model_sampling.sigma``), then 0. With ``t_start`` = the model's top timestep this is ComfyUI's
    "normal" scheduler; a lower ``t_start`` is a partial (denoise < 1) schedule that still has
    ``steps`` steps. Returns float32 ``[steps + 1]`` (``[steps]`` without the zero)."""
    if int(steps) < 1:
        raise ValueError(f"steps: expected an integer >= 1, got {steps}")
    if not t_start > t_end:
        raise ValueError(f"t_start: expected a timestep above t_end ({t_end}), got {t_start}")
    ts = torch.linspace(float(t_start), float(t_end), int(steps), dtype=torch.float32)
    sig = torch.stack([torch.as_tensor(sigma_fn(t)).reshape(()).float() for t in ts])
    if append_zero:
        sig = torch.cat([sig, sig.new_zeros(1)])
    return sig


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` (round-trip quality figure)."""
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))
