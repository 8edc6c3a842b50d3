"""Sliding-Window Cross-Frame Attention (SW-CFA), TDM paper §2.3, Eq. 7-9.

Self-attention of frame ``i`` keeps its own query but uses keys and values averaged over the
frames ``i-N .. i+N`` of the same clip (Eq. 8):

    Q = Q_i,   K = mean_{j in W(i)} K_j,   V = mean_{j in W(i)} V_j,
    out_i = softmax(Q K^T / sqrt(d)) V                                          (Eq. 9)

Layout: ``q``, ``k``, ``v`` are ``[chunks * frames, tokens, heads * dim_head]`` (ComfyUI's
attention layout), frames contiguous within a chunk; a chunk is one cond or uncond batch.
Averaging never crosses chunks.

Windows at clip ends (the choice made here): the window is *clipped* to the frames present and
the mean is over the frames actually in the window, ``W(i) = {j : |t_j - t_i| <= N}``, so frame 0
with N=3 averages frames 0..3 (4 frames). With identical frames every window therefore equals the
frame itself, and ``N=0`` is exactly self-attention.

Frame indices: ``index`` (optional, one absolute frame number per frame of a chunk) comes from the
chunker when the batch is a window of a longer clip. Windows are measured on those absolute
numbers (``|t_j - t_i| <= N``) but only frames present in the batch are averaged: frames of the
clip outside the batch are not available, the chunker's overlap between windows provides the
context instead. For the usual contiguous window this is the same as positions within the batch.

Cost: O(frames): a banded averaging matrix applied block by block with one matrix product per
block of 16 frames (reads K/V once, writes once, like a copy); ``[frames, window, tokens, dim]`` is
never built. The attention itself has the stock shape, so SW-CFA costs about what
self-attention costs.

Modes:
    ``"sw_cfa"``       Eq. 8 window mean with radius N.
    ``"first_frame"``  Text2Video-Zero / Eq. 6: K, V of the first frame of the chunk (the frame with
                       the smallest absolute index present in the batch).
    ``"self"``         stock self-attention (same as ``"sw_cfa"`` with N=0).
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

MODES = ("sw_cfa", "first_frame", "self")

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head attention ``[B, Tq, H*D] x [B, Tk, H*D] -> [B, Tq, H*D]`` with torch SDPA
    (what ComfyUI's ``attention_pytorch`` does). Default when no attention function is given."""
    b, tq, c = q.shape
    d = c // heads
    qh = q.reshape(b, tq, heads, d).transpose(1, 2)
    kh = k.reshape(b, k.shape[1], heads, d).transpose(1, 2)
    vh = v.reshape(b, v.shape[1], heads, d).transpose(1, 2)
    out = F.scaled_dot_product_attention(qh, kh, vh)
    return out.transpose(1, 2).reshape(b, tq, c)


def _check_index(index: Sequence[int] | None, frames: int) -> torch.Tensor | None:
    if index is None:
        return None
    idx = torch.as_tensor(list(index), dtype=torch.long)
    if idx.ndim != 1 or idx.numel() != frames:
        raise ValueError(f"index: expected {frames} absolute frame indices (one per frame of a chunk), "
                         f"got {idx.numel()}")
    return idx


def window_weights(frames: int, radius: int, index: Sequence[int] | None = None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The Eq. 8 averaging matrix ``W`` ``[frames, frames]``: ``W[i, j] = 1 / |W(i)|`` when
    ``|t_j - t_i| <= radius`` (``t`` = absolute frame index, default the position), else 0. Rows sum
    to one; windows are clipped to the frames present. Banded when ``index`` is sorted."""
    if radius < 0:
        raise ValueError(f"radius: expected an integer >= 0, got {radius}")
    idx = _check_index(index, frames)
    t = torch.arange(frames) if idx is None else idx
    inside = ((t[:, None] - t[None, :]).abs() <= int(radius)).to(torch.float64)
    return (inside / inside.sum(dim=1, keepdim=True)).to(dtype)


@functools.lru_cache(maxsize=64)
def _window_plan(frames: int, radius: int, index: tuple | None, block: int):
    """CPU float64 weights and, per block of output rows, the span of input frames it reads."""
    w = window_weights(frames, radius, index, dtype=torch.float64)
    nz = w != 0
    spans = []
    for r0 in range(0, frames, block):
        r1 = min(frames, r0 + block)
        cols = nz[r0:r1].any(dim=0).nonzero().flatten()
        spans.append((r0, r1, int(cols[0]), int(cols[-1]) + 1))
    return w, tuple(spans)


def window_mean(x: torch.Tensor, n_chunks: int, radius: int,
                index: Sequence[int] | None = None, block: int = 16) -> torch.Tensor:
    """Eq. 8 averaging: ``x`` ``[n_chunks * frames, tokens, C]`` -> same shape, each frame replaced by
    the mean of the frames in its clipped window (same chunk only).

    O(frames): the banded averaging matrix (:func:`window_weights`) is applied in blocks of
    ``block`` output frames, each one matrix product ``[block, block + 2N] @ [block + 2N, tokens*C]``
    that reads the needed input frames once and writes its output frames once (memory-bound like a
    copy; no ``[frames, window, ...]`` tensor, no temporaries besides the output).
    """
    if n_chunks < 1 or x.shape[0] % n_chunks != 0:
        raise ValueError(f"n_chunks: expected a positive divisor of the batch ({x.shape[0]}), got {n_chunks}")
    frames = x.shape[0] // n_chunks
    if radius == 0 or frames == 1:
        _check_index(index, frames)
        if radius < 0:
            raise ValueError(f"radius: expected an integer >= 0, got {radius}")
        return x
    w64, spans = _window_plan(frames, int(radius), None if index is None else tuple(int(i) for i in index),
                              max(1, int(block)))
    w = w64.to(device=x.device, dtype=x.dtype)
    xs = x.reshape(n_chunks, frames, -1)
    out = torch.empty_like(xs)
    for r0, r1, c0, c1 in spans:
        wb = w[r0:r1, c0:c1]
        for c in range(n_chunks):
            torch.mm(wb, xs[c, c0:c1], out=out[c, r0:r1])
    return out.reshape(x.shape)


def first_frame(x: torch.Tensor, n_chunks: int, index: Sequence[int] | None = None) -> torch.Tensor:
    """Eq. 6 reference: every frame of a chunk gets the first frame's tensor (the frame with the
    smallest absolute index present). ``[n_chunks * frames, tokens, C]`` -> same shape."""
    if n_chunks < 1 or x.shape[0] % n_chunks != 0:
        raise ValueError(f"n_chunks: expected a positive divisor of the batch ({x.shape[0]}), got {n_chunks}")
    frames = x.shape[0] // n_chunks
    idx = _check_index(index, frames)
    ref = 0 if idx is None else int(torch.argmin(idx))
    xs = x.reshape(n_chunks, frames, *x.shape[1:])
    return xs[:, ref:ref + 1].expand_as(xs).reshape(x.shape)


def cross_frame_kv(k: torch.Tensor, v: torch.Tensor, n_chunks: int, mode: str = "sw_cfa",
                   radius: int = 3, index: Sequence[int] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values for the chosen mode (see module docstring). Shapes are kept."""
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if k.shape[0] != v.shape[0]:
        raise ValueError(f"k/v: expected the same batch size, got {k.shape[0]} and {v.shape[0]}")
    if mode == "self":
        return k, v
    if mode == "first_frame":
        return first_frame(k, n_chunks, index), first_frame(v, n_chunks, index)
    return window_mean(k, n_chunks, radius, index), window_mean(v, n_chunks, radius, index)


def sw_cfa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, n_chunks: int = 1,
                     mode: str = "sw_cfa", radius: int = 3, index: Sequence[int] | None = None,
                     attention: AttentionFn | None = None) -> torch.Tensor:
    """Eq. 9: attention of each frame's queries on window-averaged keys/values.

    q, k, v: ``[n_chunks * frames, tokens, heads * dim_head]`` (frames contiguous per chunk).
    ``attention(q, k, v, heads)`` is pluggable (ComfyUI passes its ``optimized_attention``);
    defaults to :func:`sdpa_attention`. Returns ``[n_chunks * frames, tokens, heads * dim_head]``.
    """
    if q.ndim != 3 or k.ndim != 3 or v.ndim != 3:
        raise ValueError(f"q/k/v: expected [batch, tokens, channels] tensors, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"q/k: expected the same batch size, got {q.shape[0]} and {k.shape[0]}")
    attn = attention or sdpa_attention
    kk, vv = cross_frame_kv(k, v, n_chunks, mode, radius, index)
    if mode == "first_frame":
        kk, vv = kk.contiguous(), vv.contiguous()
    return attn(q, kk, vv, heads)

