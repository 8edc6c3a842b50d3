"""Argument checks shared by the pipeline modules (the nodes have their own layer, ``nodes/_checks.py``,
for what a user connects). Each raises ``ValueError`` whose message starts with the argument's name
and says what was expected, and returns the checked value. Pure torch, never imports ``comfy``.
"""
from __future__ import annotations

from typing import Any

import torch


def check_unit(value: Any, name: str, what: str = "a value") -> float:
    """``value`` as a float in ``[0, 1]`` (NaN refused); ``what`` describes it in the message."""
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name}: expected {what} in [0, 1], got {value!r}")
    return v


def check_latents(x: Any, name: str = "latent", min_frames: int = 0) -> torch.Tensor:
    """A latent batch ``[frames, C, h, w]`` tensor with at least ``min_frames`` frames."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] < min_frames:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        least = f" with at least {min_frames} frame(s)" if min_frames else ""
        raise ValueError(f"{name}: expected a latent batch [frames, C, h, w]{least}, got {shape}")
    return x
