"""Early stopping sampling strategy (ZVRD, "Early Stopping Sampling Strategy", Table 5 ESSS).

The x0 estimate reconstructs low frequencies first and high-frequency detail (and, on noisy inputs,
noise) last, which is where flicker appears. ZVRD stops sampling at ``T_ES`` and takes the x0
estimate of that step as the result.

Schedule convention (shared by every ZVRD piece of the pack): a schedule ``sigmas`` of ``N + 1``
values has ``N`` steps; step ``i`` (0-based) evaluates the model at ``sigmas[i]`` and its *progress*
is ``i / N`` (0 = first step, pure noise side; 1 = done). Thresholds are such progress fractions, so
they mean the same thing for any sampler and any step count.

How it is done: stopping at progress ``stop_at`` keeps the steps up to ``k = round(stop_at * N)`` and
replaces the rest by one final step to sigma 0:

    sigmas[:k + 1] ++ [0]

Every k-diffusion sampler makes its step to sigma 0 a plain "return the model's x0" step (Euler,
Heun and DPM++ all special-case ``sigma_next == 0``; ancestral/SDE samplers add no noise there), so the
result is exactly the x0 estimate (denoised output, after CFG and post-CFG functions) of the model
evaluated at ``sigmas[k]``. ``stop_at >= 1`` (or ``k >= N``) returns the schedule unchanged.
"""
from __future__ import annotations

import math

import torch

from .checks import check_unit

Tensor = torch.Tensor


def _check_sigmas(sigmas) -> Tensor:
    if not isinstance(sigmas, torch.Tensor) or sigmas.ndim != 1 or sigmas.numel() < 2:
        shape = tuple(sigmas.shape) if isinstance(sigmas, torch.Tensor) else type(sigmas).__name__
        raise ValueError(f"sigmas: expected a 1-D schedule of at least 2 values (1 step), got {shape}")
    return sigmas


def stop_index(num_steps: int, stop_at: float) -> int:
    """Index ``k`` of the step whose x0 estimate is returned: ``round(stop_at * num_steps)``
    (``num_steps`` means "no early stop")."""
    stop_at = check_unit(stop_at, "stop_at", "a fraction of the schedule")
    if num_steps < 1:
        raise ValueError(f"num_steps: expected at least one step, got {num_steps}")
    return int(min(num_steps, max(0, math.floor(stop_at * num_steps + 0.5))))


def early_stop_sigmas(sigmas: Tensor, stop_at: float) -> Tensor:
    """Truncate ``sigmas [N+1]`` at progress ``stop_at`` and end with a final denoise to 0.

    Returns ``sigmas[:k+1] ++ [0]`` with ``k = stop_index(N, stop_at)``, or ``sigmas`` itself
    (unchanged, same object) when ``k == N``. Same dtype/device as the input.
    """
    sigmas = _check_sigmas(sigmas)
    n = sigmas.numel() - 1
    k = stop_index(n, stop_at)
    if k >= n:
        return sigmas
    return torch.cat([sigmas[:k + 1], sigmas.new_zeros(1)])


def schedule_progress(sigma: float, sample_sigmas: Tensor) -> float:
    """Progress ``i / N`` of the step evaluated at ``sigma`` within ``sample_sigmas [N+1]``.

    ``i`` is the index of the nearest schedule value among the first ``N`` (so intermediate
    evaluations of 2nd-order samplers map to the nearest step). Used by the attention and guidance
    patches to compare the current step with their thresholds.
    """
    ss = _check_sigmas(sample_sigmas)
    n = ss.numel() - 1
    s = float(sigma)
    vals = ss[:n].detach().float().cpu()
    i = int(torch.argmin((vals - s).abs()).item())
    return i / n
