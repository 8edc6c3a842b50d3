"""The guider of TR_ILTChunker: one sampler run whose every prediction is the Eq. 4 blend of per-window
predictions (DiffVSR §3.4), and the small objects it carries between windows.

``WindowedGuider`` is a ``comfy.samplers.CFGGuider``: ComfyUI's own sampler loop, model loading, hooks
and ControlNet handling run unchanged; only ``predict_noise`` is per window (each window's frames,
conditioning, ``frame_index`` and ``ilt_state`` / ``ilt_kv`` options), and the PREPARE_SAMPLING wrapper
sizes the model load for one window instead of the whole clip. Overrides and the wrapper take and
forward ``*args, **kwargs`` (newer ComfyUI passes more, e.g. ``force_full_load`` / ``force_offload``).
"""
from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field

import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import comfy.sampler_helpers
import comfy.samplers
import torch

from . import _boundary_kv
from ._conditioning import controls_of
from ._patching import NAMESPACE, install_wrapper

STATE_KEY = "ilt_state"  # transformer_options["temporal_restore"]["ilt_state"]: the run's RunState


class RunState(MutableMapping):
    """Per-run state shared by all windows (a mapping, deliberately not a ``dict``: ComfyUI copies
    every nested dict of ``transformer_options`` before each model call, which would cut the link).
    ``"window"`` is the index of the window being sampled in sequential mode (None when fused)."""

    def __init__(self):
        self._d: dict = {}

    def __getitem__(self, k):
        return self._d[k]

    def __setitem__(self, k, v):
        self._d[k] = v

    def __delitem__(self, k):
        del self._d[k]

    def __iter__(self):
        return iter(self._d)

    def __len__(self):
        return len(self._d)


@dataclass
class Part:
    """One window of a guider run: ``sl`` its frames in the sampled latent, ``frames`` their absolute
    indices, ``weight [len]`` its Eq. 4 blend weights, ``conds`` its raw positive/negative."""
    sl: slice
    frames: list
    weight: torch.Tensor
    conds: dict


@dataclass
class Carry:
    """Sequential mode: the previous window's denoised predictions on the frames it shares with the
    current one, per sigma (``prev``), blended into the current predictions at positions ``pos`` with
    weights ``alpha``; the current window records its own at ``next_pos`` for the next (``next``)."""
    prev: dict = field(default_factory=dict)
    next: dict = field(default_factory=dict)
    pos: list = field(default_factory=list)
    alpha: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    next_pos: list = field(default_factory=list)

    def start(self, pos, alpha, next_pos):
        self.pos, self.alpha, self.next_pos, self.next = pos, alpha, next_pos, {}

    def blend(self, d, ts):
        key = round(float(ts.flatten()[0]), 5)
        prev = self.prev.get(key)
        if prev is not None and self.pos:
            a = self.alpha.to(device=d.device, dtype=d.dtype).reshape((-1,) + (1,) * (d.dim() - 1))
            d = d.clone()
            d[self.pos] = a * prev.to(d) + (1 - a) * d[self.pos]
        if self.next_pos:
            self.next[key] = d[self.next_pos].detach().clone()
        return d

    def hand_over(self):
        self.prev, self.next = self.next, {}


class Progress:
    def __init__(self, total: int):
        import comfy.utils

        self.total = max(1, int(total))
        self.done = 0
        self.bar = comfy.utils.ProgressBar(self.total)

    def tick(self):
        self.done += 1
        self.bar.update_absolute(min(self.done, self.total), self.total)


class WindowedGuider(comfy.samplers.CFGGuider):
    """CFGGuider whose prediction is the Eq. 4 blend of the predictions of ``parts`` (:class:`Part`).

    ``carry``: a :class:`Carry` (sequential mode); ``kv_specs``: per part, the ``ilt_kv`` instructions
    of :mod:`._boundary_kv` (None: boundary K/V off)."""

    def __init__(self, model, positive, negative, cfg, parts, progress=None, carry=None, state=None,
                 kv_specs=None):
        super().__init__(model)
        self.set_conds(positive, negative)
        self.set_cfg(cfg)
        self.parts = parts
        self.progress = progress
        self.carry = carry
        self.state = RunState() if state is None else state
        self.kv_specs = kv_specs
        self.window_conds = []
        # ComfyUI sizes the model load (and lowvram offloading) for the whole latent batch; a model
        # call here never holds more than one window, so estimate the memory for one window.
        win = max(p.sl.stop - p.sl.start for p in parts)

        def window_memory(executor, model, noise_shape, *args, **kwargs):
            shape = [min(int(noise_shape[0]), win)] + list(noise_shape[1:])
            return executor(model, shape, *args, **kwargs)

        self.model_options = comfy.model_patcher.create_model_options_clone(self.model_options)
        install_wrapper(self.model_options, comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING, "ilt",
                        window_memory)

    def inner_sample(self, noise, latent_image, device, sampler, sigmas, denoise_mask, callback, disable_pbar,
                     seed, *args, **kwargs):
        li = latent_image
        if li is not None and torch.count_nonzero(li) > 0:
            li = self.inner_model.process_latent_in(li)
        self.window_conds = []
        for p in self.parts:
            conds = {k: [c.copy() for c in comfy.sampler_helpers.convert_cond(v)] for k, v in p.conds.items()}
            dm = None if denoise_mask is None else denoise_mask[p.sl]
            self.window_conds.append(comfy.samplers.process_conds(
                self.inner_model, noise[p.sl], conds, device, None if li is None else li[p.sl], dm, seed))
        try:
            return super().inner_sample(noise, latent_image, device, sampler, sigmas, denoise_mask, callback,
                                        disable_pbar, seed, *args, **kwargs)
        finally:
            for wc in self.window_conds:
                for ctl in controls_of(wc):
                    ctl.cleanup()
            self.window_conds = []

    def _window_options(self, model_options, k: int) -> dict:
        mo = dict(model_options)
        to = dict(mo.get("transformer_options", {}))
        ns = dict(to.get(NAMESPACE, {}))
        ns["frame_index"] = list(self.parts[k].frames)
        ns[STATE_KEY] = self.state
        if self.kv_specs is not None:
            ns[_boundary_kv.KEY] = self.kv_specs[k]
        else:
            ns.pop(_boundary_kv.KEY, None)
        to[NAMESPACE] = ns
        mo["transformer_options"] = to
        return mo

    def predict_noise(self, x, timestep, model_options={}, seed=None, *args, **kwargs):
        out = torch.zeros_like(x)
        per_item = torch.is_tensor(timestep) and timestep.dim() > 0 and timestep.shape[0] == x.shape[0]
        for k, (p, wc) in enumerate(zip(self.parts, self.window_conds)):
            comfy.model_management.throw_exception_if_processing_interrupted()
            ts = timestep[p.sl] if per_item else timestep
            d = comfy.samplers.sampling_function(self.inner_model, x[p.sl], ts, wc.get("negative"),
                                                 wc.get("positive"), self.cfg,
                                                 model_options=self._window_options(model_options, k), seed=seed)
            if self.carry is not None:
                d = self.carry.blend(d, ts)
            w = p.weight.to(device=d.device, dtype=d.dtype).reshape((-1,) + (1,) * (d.dim() - 1))
            out[p.sl] += w * d
            if self.progress is not None:
                self.progress.tick()
        return out
