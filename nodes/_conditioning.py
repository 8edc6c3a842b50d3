"""CONDITIONING restricted to some frames of a clip: what a chunker (TR_ILTChunker) or a frame-by-frame
sampler (TR_RecurrentRestore) hands to each sampler run.

A conditioning entry's tensors, a ControlNet's hint (``cond_hint_original``, ``extra_concat_orig``) and a
noise mask whose batch equals the clip length ``total`` are per-frame and get sliced; batch-1 ones are
shared. ControlNets are copied (never mutated), chained ``previous_controlnet`` included; a ``memo``
shares the copies between positive and negative so a ControlNet used by both stays one object.
"""
from __future__ import annotations

import torch


def slice_frames(v, sl: slice, total: int):
    """``v[sl]`` when ``v`` is a tensor with one entry per frame of a ``total``-frame clip, else ``v``."""
    if torch.is_tensor(v) and v.dim() > 0 and total > 1 and v.shape[0] == total:
        return v[sl]
    return v


def _slice_control(control, sl: slice, total: int, memo: dict):
    if control is None:
        return None
    if id(control) in memo:
        return memo[id(control)]
    c = control.copy()
    c.cond_hint_original = slice_frames(control.cond_hint_original, sl, total)
    c.extra_concat_orig = [slice_frames(e, sl, total) for e in getattr(control, "extra_concat_orig", [])]
    if getattr(control, "previous_controlnet", None) is not None:
        c.previous_controlnet = _slice_control(control.previous_controlnet, sl, total, memo)
    memo[id(control)] = c
    return c


def slice_conditioning(cond, sl: slice, total: int, memo: dict):
    """CONDITIONING restricted to frames ``sl`` of a ``total``-frame clip (per-frame tensors sliced,
    ControlNets copied with their hint sliced; ``memo`` shares copies between positive/negative)."""
    out = []
    for t, d in cond:
        d2 = {}
        for k, v in d.items():
            if k == "control":
                d2[k] = _slice_control(v, sl, total, memo)
            else:
                d2[k] = slice_frames(v, sl, total)
        out.append([slice_frames(t, sl, total), d2])
    return out


def controls_of(conds: dict) -> list:
    """Every ControlNet (chained ones included, each once) of processed conds ``{name: [cond dict]}``."""
    seen = []
    for v in conds.values():
        for c in v:
            ctl = c.get("control")
            while ctl is not None:
                if all(ctl is not s for s in seen):
                    seen.append(ctl)
                ctl = getattr(ctl, "previous_controlnet", None)
    return seen
