"""Interweaved Latent Transition (ILT) and noise rescheduling for long clips (DiffVSR §3.4, Eq. 4).

A clip of ``T`` frames is split into overlapping windows of ``window`` frames with ``overlap``
frames shared by consecutive windows (stride ``s = window - overlap``). The last window is moved
back so that it ends on the last frame (its overlap with the previous window is then larger than
``overlap``); a clip not longer than one window is a single window.

Blending (Eq. 4): in the overlap ``[a, b)`` of windows ``i`` and ``i+1`` (``P = b - a`` frames),
frame ``a + j`` is ``alpha_j * F_i + (1 - alpha_j) * F_{i+1}`` with ``alpha_j = 1 - j / (P - 1)``
(``alpha = 0.5`` when ``P == 1``). :func:`blend_weights` gives per-window weight vectors that
implement this; when ``overlap > window / 2`` a frame can lie in three windows, then each window's
weight is the smaller of its rising and falling Eq. 4 ramps and the weights are renormalised (this
reduces exactly to Eq. 4 whenever a frame lies in at most two windows). Weights always sum to one.

Noise rescheduling (DiffVSR §3.4 / FreeNoise): ``window`` base noise frames are drawn once; each
following window reuses the noise of its overlap frames as they are and fills its new frames with a
random permutation of the noise of the frames it dropped, so every window holds the same ``window``
distinct noise frames, reordered. For ``T <= window`` the result equals ``torch.randn`` of the whole
latent from ``seed`` (what ComfyUI's ``prepare_noise`` draws).

Shapes: latents ``[T, C, H, W]`` (any trailing shape works), weights ``[len(window)]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["Window", "plan_windows", "blend_weights", "blend", "reschedule_noise", "WindowPlan",
           "cut_weights"]


@dataclass(frozen=True)
class Window:
    """Frames ``[start, end)`` of the clip."""
    start: int
    end: int

    @property
    def frames(self) -> list[int]:
        return list(range(self.start, self.end))

    def __len__(self) -> int:
        return self.end - self.start


def _check(total: int, window: int, overlap: int) -> None:
    if int(total) < 1:
        raise ValueError(f"frames: expected a clip of at least 1 frame, got {total}")
    if int(window) < 1:
        raise ValueError(f"window: expected at least 1 frame per window, got {window}")
    if int(overlap) < 0:
        raise ValueError(f"overlap: expected 0 or more frames, got {overlap}")
    if int(overlap) >= int(window):
        raise ValueError(f"overlap: expected fewer frames than the window ({window}), got {overlap}")


def plan_windows(total: int, window: int = 8, overlap: int = 4) -> list[Window]:
    """Overlapping windows covering ``range(total)``.

    Starts at ``0, s, 2s, ...`` (``s = window - overlap``) while a window ends before ``total``;
    the last window is ``[total - window, total)``. ``window >= total`` gives one window.
    Raises ValueError for ``total < 1``, ``window < 1``, ``overlap < 0`` or ``overlap >= window``.
    """
    _check(total, window, overlap)
    total, window, overlap = int(total), int(window), int(overlap)
    if window >= total:
        return [Window(0, total)]
    stride = window - overlap
    out = []
    start = 0
    while start + window < total:
        out.append(Window(start, start + window))
        start += stride
    last = total - window
    if not out or last > out[-1].start:
        out.append(Window(last, total))
    return out


def _ramp(n: int) -> torch.Tensor:
    """``alpha_j = 1 - j / (n - 1)`` for ``j < n`` (Eq. 4); ``[0.5]`` for ``n == 1``."""
    if n == 1:
        return torch.tensor([0.5], dtype=torch.float64)
    return 1.0 - torch.arange(n, dtype=torch.float64) / (n - 1)


def blend_weights(windows: list[Window], total: int | None = None) -> list[torch.Tensor]:
    """Per-window frame weights (float64 ``[len(w)]``) implementing Eq. 4; they sum to 1 per frame."""
    if not windows:
        raise ValueError("windows: expected at least one window")
    total = windows[-1].end if total is None else int(total)
    raw = []
    for i, w in enumerate(windows):
        up = torch.ones(len(w), dtype=torch.float64)
        down = torch.ones(len(w), dtype=torch.float64)
        if i > 0 and windows[i - 1].end > w.start:  # rising ramp over the overlap with the previous
            p = windows[i - 1].end - w.start
            up[:p] = 1.0 - _ramp(p)
        if i + 1 < len(windows) and w.end > windows[i + 1].start:  # falling ramp over the next overlap
            p = w.end - windows[i + 1].start
            down[len(w) - p:] = _ramp(p)
        raw.append(torch.minimum(up, down))
    norm = torch.zeros(total, dtype=torch.float64)
    for w, r in zip(windows, raw):
        norm[w.start:w.end] += r
    if bool((norm <= 0).any()):
        missing = torch.nonzero(norm <= 0).flatten().tolist()
        raise ValueError(f"windows: frames {missing[:8]} are not covered by any window")
    return [r / norm[w.start:w.end] for w, r in zip(windows, raw)]


def cut_weights(windows: list[Window], total: int | None = None) -> list[torch.Tensor]:
    """Hard-cut weights (ablation of Eq. 4): each frame belongs to one window, switching at the
    middle of each overlap. Same format as :func:`blend_weights`."""
    total = windows[-1].end if total is None else int(total)
    owner = torch.full((total,), -1, dtype=torch.long)
    for i, w in enumerate(windows):
        lo = w.start if i == 0 else (w.start + windows[i - 1].end + 1) // 2
        owner[lo:w.end] = i
    return [(owner[w.start:w.end] == i).to(torch.float64) for i, w in enumerate(windows)]


def blend(parts: list[torch.Tensor], windows: list[Window], weights: list[torch.Tensor] | None = None,
          total: int | None = None) -> torch.Tensor:
    """Fuse per-window latents ``parts[i]: [len(windows[i]), ...]`` into ``[T, ...]`` (Eq. 4)."""
    if len(parts) != len(windows):
        raise ValueError(f"parts: expected one tensor per window ({len(windows)}), got {len(parts)}")
    total = windows[-1].end if total is None else int(total)
    weights = blend_weights(windows, total) if weights is None else weights
    out = None
    for p, w, wt in zip(parts, windows, weights):
        if p.shape[0] != len(w):
            raise ValueError(f"parts: window {w.start}-{w.end} expects {len(w)} frames, got {p.shape[0]}")
        if out is None:
            out = torch.zeros((total,) + tuple(p.shape[1:]), dtype=p.dtype, device=p.device)
        wt = wt.to(dtype=p.dtype, device=p.device).reshape((-1,) + (1,) * (p.dim() - 1))
        out[w.start:w.end] += wt * p
    return out


def reschedule_noise(total: int, window: int, overlap: int, frame_shape, seed: int = 0,
                     dtype=torch.float32, windows: list[Window] | None = None) -> torch.Tensor:
    """Rescheduled noise ``[T, *frame_shape]`` (see module docstring). Deterministic in ``seed``."""
    windows = plan_windows(total, window, overlap) if windows is None else windows
    total = windows[-1].end
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    n0 = len(windows[0])
    noise = torch.empty((total,) + tuple(frame_shape), dtype=torch.float32)
    noise[:n0] = torch.randn((n0,) + tuple(frame_shape), generator=g, dtype=torch.float32)
    for prev, cur in zip(windows, windows[1:]):
        fresh = list(range(max(prev.end, cur.start), cur.end))
        dropped = list(range(prev.start, min(cur.start, prev.end)))
        if not fresh:
            continue
        if len(dropped) != len(fresh):  # cannot happen with plan_windows (equal-length windows)
            raise ValueError("windows: noise rescheduling needs windows of equal length")
        perm = torch.randperm(len(dropped), generator=g)[:len(fresh)]
        noise[fresh] = noise[[dropped[int(k)] for k in perm]]
    return noise.to(dtype)


@dataclass
class WindowPlan:
    """Windows, blend weights and the frame indices to publish per window.

    ``blend_mode``: ``"ilt"`` (Eq. 4) or ``"cut"`` (hard switch, ablation).
    """
    total: int
    window: int = 8
    overlap: int = 4
    blend_mode: str = "ilt"
    windows: list[Window] = field(init=False)
    weights: list[torch.Tensor] = field(init=False)

    def __post_init__(self):
        self.windows = plan_windows(self.total, self.window, self.overlap)
        if self.blend_mode == "ilt":
            self.weights = blend_weights(self.windows, self.total)
        elif self.blend_mode == "cut":
            self.weights = cut_weights(self.windows, self.total)
        else:
            raise ValueError(f"blend: expected 'ilt' or 'cut', got {self.blend_mode!r}")

    def __len__(self) -> int:
        return len(self.windows)

    def boundaries(self) -> list[int]:
        """Frame ``b`` such that the seam between windows lies between frames ``b - 1`` and ``b``
        (the middle of each overlap; where a hard cut would switch)."""
        return [(cur.start + prev.end + 1) // 2 for prev, cur in zip(self.windows, self.windows[1:])]

    def carried(self, i: int) -> tuple[list[int], torch.Tensor]:
        """Local positions in window ``i`` shared with window ``i - 1`` and the weight of the
        previous window there (Eq. 4 ``alpha``); empty for the first window."""
        if i == 0:
            return [], torch.zeros(0, dtype=torch.float64)
        prev, cur = self.windows[i - 1], self.windows[i]
        p = max(0, prev.end - cur.start)
        alpha = _ramp(p) if p else torch.zeros(0, dtype=torch.float64)
        return list(range(p)), alpha
