"""Few-step sampling for distilled models (LCM / Turbo / Hyper style), D2-VR's 4-step regime.

Two pure pieces, both usable without ComfyUI:

1. **Timestep schedules** over the discrete DDPM schedule of ``T`` training timesteps (1000 for SD1.5).
   ``n`` is the number of steps (1-8 is what distilled models are trained for), ``d`` the denoise
   fraction in (0, 1] (1 = start from pure noise, < 1 = img2img / restoration from a degraded latent).

   * ``"trailing"`` (Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed", the
     diffusers ``timestep_spacing="trailing"`` used by SDXL-Turbo / Hyper-SD / TCD)::

         T_d = round(d * T)
         t_i = round(T_d - i * T_d / n) - 1,        i = 0 .. n-1

     n=4, d=1 -> 999, 749, 499, 249.  ``round`` is round-half-to-even (numpy / Python).
   * ``"lcm"`` (Latent Consistency Models; skipping schedule over the ``N`` = ``original_steps``
     (default 50) DDIM timesteps the model was distilled on, diffusers >= 0.25 ``LCMScheduler``)::

         c   = T // N                     (20 for T=1000, N=50)
         N_d = floor(d * N)
         k_i = floor(i * N_d / n)         (i = 0 .. n-1)
         t_i = (N_d - k_i) * c - 1

     n=4, d=1 -> 999, 759, 499, 259.
   * ``"turbo"`` (SD-Turbo / ComfyUI's ``SDTurboScheduler``: a fixed 100-timestep stride)::

         s   = 10 - int(10 * d)
         t_i = (10 - s - i) * 100 - 1,     i = 0 .. n-1   (needs n <= 10 - s)

     n=4, d=1 -> 999, 899, 799, 699.

   Timesteps map to k-diffusion sigmas by ``sigma(t) = sqrt((1 - abar_t) / abar_t)`` and a final
   ``0`` is appended (``sigmas_for_timesteps``). Inside ComfyUI the node uses the model's own
   ``model_sampling.sigma`` instead, so zero-terminal-SNR and other schedules are honoured.

2. **The sampler step** (``sample_distilled``): at each step the model predicts ``x0`` from
   ``x_i`` at ``sigma_i``; the next state is ``x0`` re-noised to ``sigma_{i+1}``::

         eps_hat = (x_i - B(sigma_i) x0) / A(sigma_i)          (the noise the model implies)
         z       = noise_sampler(sigma_i, sigma_{i+1})          (fresh unit noise)
         n_i     = sqrt(1 - eta^2) * eps_hat + eta * z
         x_{i+1} = B(sigma_{i+1}) x0 + A(sigma_{i+1}) n_i      (x_{i+1} = x0 when sigma_{i+1} = 0)

   where ``noise_scaling(sigma, noise, x0) = A(sigma) noise + B(sigma) x0`` is the model's forward
   noising (``A = sigma, B = 1`` for eps/v-prediction models in k-diffusion form). ``eta = 1`` is
   the consistency-model multistep sampler (LCM, D2-VR: x0 re-noised with fresh noise); ``eta = 0``
   is deterministic DDIM (the predicted noise is reused, no randomness after the initial noise).
   ``s_noise`` scales ``z``.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .checks import check_unit

SCHEDULES = ("trailing", "lcm", "turbo")
MAX_STEPS = 8


def _check_steps_denoise(steps: int, denoise: float, max_steps: int = MAX_STEPS) -> tuple[int, float]:
    if isinstance(steps, bool) or int(steps) != steps or not 1 <= int(steps) <= max_steps:
        raise ValueError(f"steps: expected an integer in [1, {max_steps}], got {steps!r}")
    denoise = float(denoise)
    if not (0.0 < denoise <= 1.0) or math.isnan(denoise):
        raise ValueError(f"denoise: expected a value in (0, 1], got {denoise!r}")
    return int(steps), denoise


def trailing_timesteps(steps: int, denoise: float = 1.0, num_train_timesteps: int = 1000) -> list[int]:
    """``t_i = round(T_d - i*T_d/n) - 1`` with ``T_d = round(d*T)`` (descending, length ``n``)."""
    steps, denoise = _check_steps_denoise(steps, denoise)
    T_d = int(round(denoise * num_train_timesteps))
    if T_d < steps:
        raise ValueError(f"denoise: {denoise} leaves {T_d} timesteps, fewer than steps={steps}")
    ts = [int(np.round(T_d - i * T_d / steps)) - 1 for i in range(steps)]
    return ts


def lcm_timesteps(steps: int, denoise: float = 1.0, num_train_timesteps: int = 1000,
                  original_steps: int = 50) -> list[int]:
    """LCM skipping schedule: ``t_i = (N_d - floor(i*N_d/n)) * (T//N) - 1`` with ``N_d = floor(d*N)``."""
    steps, denoise = _check_steps_denoise(steps, denoise)
    if int(original_steps) != original_steps or not 1 <= original_steps <= num_train_timesteps:
        raise ValueError(f"original_steps: expected an integer in [1, {num_train_timesteps}], got {original_steps!r}")
    c = num_train_timesteps // int(original_steps)
    n_d = int(math.floor(denoise * original_steps))
    if n_d < steps:
        raise ValueError(f"denoise: {denoise} leaves {n_d} of the original {original_steps} LCM timesteps, "
                         f"fewer than steps={steps}")
    return [(n_d - (i * n_d) // steps) * c - 1 for i in range(steps)]


def turbo_timesteps(steps: int, denoise: float = 1.0) -> list[int]:
    """SD-Turbo stride-100 schedule: ``t_i = (10 - s - i)*100 - 1`` with ``s = 10 - int(10*d)``."""
    steps, denoise = _check_steps_denoise(steps, denoise)
    start = 10 - int(10 * denoise)
    if steps > 10 - start:
        raise ValueError(f"denoise: {denoise} leaves {10 - start} turbo timesteps, fewer than steps={steps}")
    return [(10 - start - i) * 100 - 1 for i in range(steps)]


def distilled_timesteps(schedule: str, steps: int, denoise: float = 1.0, num_train_timesteps: int = 1000,
                        original_steps: int = 50) -> list[int]:
    """Dispatch on ``schedule`` in ``SCHEDULES``; returns descending integer timesteps."""
    if schedule == "trailing":
        return trailing_timesteps(steps, denoise, num_train_timesteps)
    if schedule == "lcm":
        return lcm_timesteps(steps, denoise, num_train_timesteps, original_steps)
    if schedule == "turbo":
        if num_train_timesteps != 1000:
            raise ValueError(f"schedule: 'turbo' needs a 1000-timestep model, got {num_train_timesteps}")
        return turbo_timesteps(steps, denoise)
    raise ValueError(f"schedule: expected one of {SCHEDULES}, got {schedule!r}")


def sd_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                      beta_end: float = 0.012) -> torch.Tensor:
    """SD1.x "scaled linear" DDPM schedule: ``beta = linspace(sqrt(b0), sqrt(b1), T)^2``, ``abar = cumprod(1-beta)``."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def sigmas_for_timesteps(timesteps: Sequence[int], alphas_cumprod: Optional[torch.Tensor] = None) -> torch.Tensor:
    """k-diffusion sigmas ``sqrt((1 - abar_t)/abar_t)`` for the timesteps, with a final 0: ``[n+1]`` float32."""
    ac = sd_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod.double()
    t = torch.as_tensor(list(timesteps), dtype=torch.long)
    if t.numel() and (t.min() < 0 or t.max() >= ac.numel()):
        raise ValueError(f"timesteps: expected values in [0, {ac.numel() - 1}], got {t.tolist()}")
    s = ((1.0 - ac[t]) / ac[t]).sqrt()
    return torch.cat([s, s.new_zeros(1)]).float()


def eps_noise_scaling(sigma, noise: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """k-diffusion forward noising for eps / v models: ``x = x0 + sigma * noise``."""
    return x0 + noise * sigma


def seeded_noise_sampler(x: torch.Tensor, seed: Optional[int]) -> Callable:
    """``noise_sampler(sigma, sigma_next) -> [x.shape]`` unit Gaussian noise from a private CPU generator
    seeded with ``seed`` (fresh noise at every call, reproducible per seed; no global seeding)."""
    gen = torch.Generator(device="cpu")
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed) & 0xFFFFFFFFFFFFFFFF)

    def sample(sigma, sigma_next):
        return torch.randn(x.shape, generator=gen, dtype=torch.float32).to(device=x.device, dtype=x.dtype)

    return sample


def frame_noise_sampler(x: torch.Tensor, seed: Optional[int], frame_index: Sequence[int]) -> Callable:
    """Like :func:`seeded_noise_sampler` but each batch item (a frame) has its own generator seeded by
    ``(seed, absolute frame index)``: the noise a frame receives at step ``i`` does not depend on which
    window / batch it is sampled in (chunked and whole-clip sampling draw the same per-frame noise).
    ``frame_index`` has one entry per item of ``x``."""
    idx = [int(i) for i in frame_index]
    if len(idx) != x.shape[0]:
        raise ValueError(f"frame_index: expected {x.shape[0]} indices (one per batch item), got {len(idx)}")
    base = 0 if seed is None else int(seed)
    gens = []
    for i in idx:
        g = torch.Generator(device="cpu")
        g.manual_seed((base * 1_000_003 + i * 7_919 + 17) & 0x7FFFFFFFFFFFFFFF)
        gens.append(g)

    def sample(sigma, sigma_next):
        out = torch.stack([torch.randn(x.shape[1:], generator=g, dtype=torch.float32) for g in gens])
        return out.to(device=x.device, dtype=x.dtype)

    return sample


def _scalar(sigma) -> torch.Tensor:
    return torch.as_tensor(sigma).reshape(()).float()


@torch.no_grad()
def sample_distilled(model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: Optional[dict] = None,
                     callback: Optional[Callable] = None, disable=None, noise_sampler: Optional[Callable] = None,
                     eta: float = 1.0, s_noise: float = 1.0,
                     noise_scaling: Optional[Callable] = None) -> torch.Tensor:
    """Consistency-style multistep sampler (k-diffusion calling convention).

    model: ``model(x [B,...], sigma [B], **extra_args) -> x0 [B,...]`` (a denoiser).
    x: noisy start ``[B, C, h, w]`` at ``sigmas[0]``. sigmas: ``[n+1]`` descending (last usually 0).
    noise_sampler: ``(sigma, sigma_next) -> [B, C, h, w]`` unit noise (e.g. from NoiseShare); default
    a generator seeded with ``extra_args["seed"]``. eta in [0, 1]: 1 = fresh noise (LCM / consistency),
    0 = deterministic DDIM. noise_scaling: ``(sigma, noise, x0) -> x`` (default ``x0 + sigma*noise``).
    Returns the final sample ``[B, C, h, w]`` (equal to the last x0 prediction when ``sigmas[-1] == 0``).
    """
    eta = check_unit(eta, "eta")
    if sigmas.ndim != 1 or sigmas.numel() < 1:
        raise ValueError(f"sigmas: expected a 1-D schedule, got shape {tuple(sigmas.shape)}")
    extra_args = {} if extra_args is None else extra_args
    ns = eps_noise_scaling if noise_scaling is None else noise_scaling
    if noise_sampler is None and eta > 0:
        noise_sampler = seeded_noise_sampler(x, extra_args.get("seed"))
    s_in = x.new_ones([x.shape[0]])
    keep = math.sqrt(max(0.0, 1.0 - eta * eta))
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = model(x, sigma * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": x0})
        if float(sigma_next) <= 0:
            x = x0
            continue
        direction = torch.zeros_like(x)
        if keep > 0:
            scale = ns(_scalar(sigma).to(x.device), torch.ones_like(x[:1]), torch.zeros_like(x[:1]))
            eps_hat = (x - ns(_scalar(sigma).to(x.device), torch.zeros_like(x), x0)) / scale
            direction = direction + keep * eps_hat
        if eta > 0:
            direction = direction + eta * s_noise * noise_sampler(sigma, sigma_next)
        x = ns(_scalar(sigma_next).to(x.device), direction, x0)
    return x
