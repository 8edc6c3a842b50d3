"""Sampling a clip of any length in overlapping windows (DiffVSR §3.4, Eq. 4): the orchestration behind
TR_ILTChunker.

Three modes:

* ``fused``: one sampler run over the whole latent; every model call is split into windows (each
  window's conditioning, ControlNet hint and ``frame_index`` sliced to its frames) and the per-window
  denoised predictions are blended with the Eq. 4 weights at every step, so all windows advance
  together and overlaps agree at every step. Activation memory is bounded by one window; the latent
  of the whole clip is held (it is small: ``[T, 4, H/8, W/8]``).
* ``sequential``: windows sampled one after the other, each a full sampler run on its frames. With
  ``carry_state`` the previous window's denoised predictions on the shared frames (recorded per
  sigma) are blended into the current window's predictions with the Eq. 4 weights, so the overlap
  frames follow the previous window's trajectory at the seam and hand over to the new window
  gradually (:class:`._windowed.Carry`); the results are then fused with the Eq. 4 weights. Patches
  may also keep per-window state in ``transformer_options["temporal_restore"]["ilt_state"]`` (a
  :class:`._windowed.RunState` shared by every model call of one run; ``"window"`` is the index in
  sequential mode).
* ``post`` (DiffVSR §3.4 as published): windows sampled one after the other, each on its own (no
  carried predictions), and only their final latents fused with Eq. 4 ("a lightweight post-processing
  solution"). This is ``sequential`` without ``carry_state``; ``fused`` and the carried ``sequential``
  are this pack's extensions.
* ``boundary_kv > 0`` (all modes): self-attention keys/values of the previous window's last
  exclusive frames are appended to every frame of the next window (:mod:`._boundary_kv`).

All modes use the rescheduled noise (same noise frames reused and reordered across overlaps) unless
``noise`` is ``independent`` (ComfyUI's ``prepare_noise`` over the whole clip). Any stock SAMPLER and
SIGMAS and any model patches work; each window's absolute frame indices are published in
``transformer_options["temporal_restore"]["frame_index"]``. Conditioning tensors, ControlNet hints and
the noise mask whose batch equals the clip length are sliced per window (:mod:`._conditioning`);
batch-1 ones are shared. Conditioning hooks are applied on the whole-clip conditioning only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..pipelines import ilt
from . import _boundary_kv
from ._checks import check_choice, check_latent
from ._conditioning import slice_conditioning, slice_frames
from ._windowed import Carry, Part, Progress, RunState, WindowedGuider

MODES = ("fused", "sequential", "post")
NOISE_MODES = ("rescheduled", "independent")


@dataclass
class Setup:
    """What both modes share: the model (with the boundary K/V patch when asked), the clip, its plan,
    noise, mask, progress bar, run state and the per-window boundary K/V instructions."""
    model: object
    positive: list
    negative: list
    latent_image: torch.Tensor
    plan: ilt.WindowPlan
    noise: torch.Tensor
    noise_mask: torch.Tensor | None
    progress: Progress | None
    disable_pbar: bool
    state: RunState
    kv_specs: list | None

    @property
    def total(self) -> int:
        return int(self.latent_image.shape[0])

    def part(self, i: int, local: bool) -> Part:
        """Window ``i`` as a guider part; ``local``: the guider samples only this window's frames."""
        w = self.plan.windows[i]
        sl_abs = slice(w.start, w.end)
        memo: dict = {}
        conds = {"positive": slice_conditioning(self.positive, sl_abs, self.total, memo),
                 "negative": slice_conditioning(self.negative, sl_abs, self.total, memo)}
        if local:
            return Part(slice(0, len(w)), w.frames, torch.ones(len(w), dtype=torch.float64), conds)
        return Part(sl_abs, w.frames, self.plan.weights[i], conds)


def _setup(model, positive, negative, latent: dict, seed: int, sigmas, window: int, overlap: int, fused: bool,
           noise_mode: str, blend_mode: str, progress: bool, boundary_kv: int) -> Setup:
    import comfy.sample
    import comfy.utils

    samples = check_latent(latent, "latent")
    latent_image = comfy.sample.fix_empty_latent_channels(model, samples)
    total = int(samples.shape[0])
    plan = ilt.WindowPlan(total, window, overlap, blend_mode)
    if noise_mode == "rescheduled":
        noise = ilt.reschedule_noise(total, window, overlap, latent_image.shape[1:], seed=seed,
                                     dtype=latent_image.dtype, windows=plan.windows)
    else:
        noise = comfy.sample.prepare_noise(latent_image, seed)
    steps = max(1, int(sigmas.shape[-1]) - 1)
    if int(boundary_kv) < 0:
        raise ValueError(f"boundary_kv: expected 0 or more frames, got {boundary_kv}")
    kv_specs = None
    if boundary_kv and len(plan) > 1:
        model = _boundary_kv.install_boundary_kv(model)
        kv_specs = _boundary_kv.window_specs(plan, int(boundary_kv), _boundary_kv.KVStore() if fused else None,
                                             fused=fused)
    return Setup(model, positive, negative, latent_image, plan, noise, latent.get("noise_mask"),
                 Progress(len(plan) * steps) if progress else None, not comfy.utils.PROGRESS_BAR_ENABLED,
                 RunState(), kv_specs)


def _fused(s: Setup, seed: int, cfg: float, sampler, sigmas) -> torch.Tensor:
    parts = [s.part(i, local=False) for i in range(len(s.plan))]
    guider = WindowedGuider(s.model, s.positive, s.negative, cfg, parts, s.progress, None, s.state, s.kv_specs)
    s.state["window"] = None
    return guider.sample(s.noise, s.latent_image, sampler, sigmas, denoise_mask=s.noise_mask, callback=None,
                         disable_pbar=s.disable_pbar, seed=seed)


def _sequential(s: Setup, seed: int, cfg: float, sampler, sigmas, carry_state: bool) -> torch.Tensor:
    import comfy.model_management

    plan, out = s.plan, None
    carry = Carry() if carry_state else None
    kv_prev = _boundary_kv.KVStore()
    for i, w in enumerate(plan.windows):
        comfy.model_management.throw_exception_if_processing_interrupted()
        sl = slice(w.start, w.end)
        part = s.part(i, local=True)
        if carry is not None:
            pos, alpha = plan.carried(i)
            nxt = plan.carried(i + 1)[0] if i + 1 < len(plan) else []
            carry.start(pos, alpha, [plan.windows[i + 1].start - w.start + p for p in nxt])
        kv = None
        if s.kv_specs is not None:
            kv_next = _boundary_kv.KVStore()
            kv = [dict(s.kv_specs[i], read_store=kv_prev, write_store=kv_next)]
        s.state["window"] = i
        guider = WindowedGuider(s.model, part.conds["positive"], part.conds["negative"], cfg, [part], s.progress,
                                carry, s.state, kv)
        mask = slice_frames(s.noise_mask, sl, s.total) if s.noise_mask is not None else None
        res = guider.sample(s.noise[sl], s.latent_image[sl], sampler, sigmas, denoise_mask=mask, callback=None,
                            disable_pbar=s.disable_pbar, seed=seed)
        res = res.to(comfy.model_management.intermediate_device())
        if out is None:
            out = torch.zeros((s.total,) + tuple(res.shape[1:]), dtype=res.dtype, device=res.device)
        out[sl] += plan.weights[i].to(res).reshape((-1,) + (1,) * (res.dim() - 1)) * res
        if carry is not None:
            carry.hand_over()
        if kv is not None:
            kv_prev = kv_next  # only the boundary frames of the window just finished are kept
        del res, guider
    return out


def chunked_sample(model, positive, negative, latent: dict, seed: int, cfg: float, sampler, sigmas,
                   window: int = 8, overlap: int = 4, mode: str = "fused", noise_mode: str = "rescheduled",
                   carry_state: bool = True, blend_mode: str = "ilt", progress: bool = True,
                   boundary_kv: int = 0) -> dict:
    """Sample ``latent`` (``{"samples": [T,C,h,w], ...}``) in overlapping windows. Returns a LATENT."""
    import comfy.model_management

    check_choice(mode, MODES, "mode")
    check_choice(noise_mode, NOISE_MODES, "noise")
    s = _setup(model, positive, negative, latent, seed, sigmas, window, overlap, mode == "fused", noise_mode,
               blend_mode, progress, boundary_kv)
    if mode == "fused":
        out = _fused(s, seed, cfg, sampler, sigmas).to(comfy.model_management.intermediate_device())
    else:  # post: the paper's ILT, windows on their own, final latents fused (Eq. 4)
        out = _sequential(s, seed, cfg, sampler, sigmas, carry_state and mode == "sequential")
    result = latent.copy()
    result.pop("downscale_ratio_spacial", None)
    result["samples"] = out
    return result
