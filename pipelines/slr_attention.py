"""SLR temporal attention (ZVRD §"SLR Temporal Attention", Eq. 4-7, Table 5 SLTA).

Replaces the self-attention (attn1) of the UNet *decoder* blocks with two stages:

1. **Cross-neighbour-frame attention (Eq. 5).** Frame ``i`` keeps its query and attends to the
   keys/values of frames ``i-1`` and ``i+1`` concatenated along the tokens:
   ``out_i = softmax(Q_i [K_{i-1} || K_{i+1}]^T / sqrt(d)) [V_{i-1} || V_{i+1}]``.
   A missing neighbour (clip or window end, or a gap in the absolute frame indices) is replaced by
   the frame itself, so a single frame, or identical frames, give exactly stock self-attention.
2. **Self-corrected trajectory attention (Eq. 6-7)**, only at the largest decoder attention
   resolution and only once the sampling progress reaches ``trajectory_start`` (``T_TA`` as a
   fraction of the schedule, see :mod:`.early_stop` for the progress convention). The output
   ``Q^`` of stage 1 is the query; the keys/values are ``K, V`` of the same token's trajectory in
   every *other* frame of the chunk (``[Traj - p]``):
   ``out_i(p) = softmax(Q^_i(p) K[Traj_i(p) - p]^T / sqrt(d)) V[Traj_i(p) - p]``.

Trajectories. For every pair of neighbouring frames (``i -> i-1`` and ``i -> i+1``) each token
``p`` gets one integer displacement, chosen per token among candidates by the lowest *warp error*
of its patch of the x0 estimate (the paper's 8x8 image patch per token, here a
``(2 * patch_radius + 1)^2`` patch of the x0 preview at token resolution, which for SD1.5's largest
decoder attention is one latent pixel = 8x8 image pixels per token):

* flow-based: optical flow computed on the x0 estimate of the *previous* step (see
  :func:`preview_flow`), and/or the FLOW of the input frames if given;
* similarity-based (Eq. 6): ``argmax_q cos(F_i(p), F_j(q))`` on this layer's keys, searched in a
  ``(2 * search_radius + 1)^2`` neighbourhood of ``p`` (a full-frame search is ``O(N^2)`` per pair;
  the local window keeps it ``O(N)``);
* historically best: the displacement chosen at the previous step.

The chosen displacements become the "historically best" candidates of the next step. A token's
trajectory over the whole chunk chains the chosen neighbour displacements (``i -> i-1 -> i-2 ...``
and ``i -> i+1 -> ...``).

x0 to RGB for flow and warp error: the x0 estimate (latent, in the model's sampling space) is
mapped to an RGB preview with the model's linear latent-to-RGB factors (``latent_rgb_factors`` of
ComfyUI's latent formats, the ones its live previews use; SD1.5's are the default here),
``rgb = (x0 . factors + bias + 1) / 2`` clamped to ``[0, 1]``, at latent resolution. It costs one
``C x 3`` matrix product instead of a VAE decode. For the flow the preview is upsampled to at least
32 pixels on its short side (DIS needs some image to work on), estimated with OpenCV DIS and the
flow resampled back to the token grid.

Tensor layout: ``q, k, v [F, N, H*D]`` for ONE chunk (cond or uncond) of ``F`` frames and
``N = h * w`` tokens; the node side splits the CFG batch into chunks.
"""
from __future__ import annotations

import functools
import logging
import math
from typing import Callable, Hashable, Optional, Sequence

import torch
import torch.nn.functional as F

from .checks import check_latents, check_unit
from .early_stop import schedule_progress  # noqa: F401  (re-exported for the node side)
from .flow import FlowField, estimate_flow
from .sw_cfa import sdpa_attention
from .tiling import flow_in_tile

log = logging.getLogger("temporal_restore")

Tensor = torch.Tensor
AttentionFn = Callable[[Tensor, Tensor, Tensor, int], Tensor]

#: SD1.5 latent -> RGB preview factors ``[4, 3]`` (as published in ComfyUI's ``latent_formats.SD15``).
SD15_RGB_FACTORS = ((0.3512, 0.2297, 0.3227),
                    (0.3250, 0.4974, 0.2350),
                    (-0.2829, 0.1762, 0.2721),
                    (-0.2120, -0.2616, -0.7177))


# --------------------------------------------------------------------------------------------
# Stage 1: cross-neighbour-frame attention (Eq. 5)
# --------------------------------------------------------------------------------------------

#: attention-score elements per cross-neighbour attention call (see :func:`cross_neighbour_attention`)
SCORE_BUDGET = 1 << 21


def neighbour_positions(frame_index: Sequence[int]) -> tuple[list[int], list[int]]:
    """Batch positions of each frame's previous and next frame (by absolute index); a frame whose
    neighbour is not in the batch gets its own position."""
    idx = [int(i) for i in frame_index]
    where = {f: j for j, f in enumerate(idx)}
    if len(where) != len(idx):
        raise ValueError(f"frame_index: expected unique absolute frame indices, got {idx}")
    prev = [where.get(f - 1, j) for j, f in enumerate(idx)]
    nxt = [where.get(f + 1, j) for j, f in enumerate(idx)]
    return prev, nxt


def cross_neighbour_attention(q: Tensor, k: Tensor, v: Tensor, heads: int,
                              frame_index: Optional[Sequence[int]] = None,
                              attention: Optional[AttentionFn] = None, chunks: int = 1) -> Tensor:
    """Eq. 5: ``q, k, v [chunks*F, N, H*D] -> [chunks*F, N, H*D]``, the batch holding ``chunks`` CFG
    chunks of the same ``F`` frames one after another; a frame's neighbours come from its own chunk.

    The attention runs on groups of frames whose score matrices total at most ``SCORE_BUDGET``
    elements: with twice the keys, one call over the whole batch leaves the CPU caches and costs
    ~3.5x the stock call instead of 2x (measured with ComfyUI's sub-quadratic attention)."""
    if q.ndim != 3 or k.shape != v.shape or k.shape[0] != q.shape[0]:
        raise ValueError(f"q/k/v: expected [frames, tokens, dim] with equal frames, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if chunks < 1 or q.shape[0] % chunks:
        raise ValueError(f"chunks: expected a divisor of the batch {q.shape[0]}, got {chunks}")
    frames = q.shape[0] // chunks
    idx = list(range(frames)) if frame_index is None else list(frame_index)
    if len(idx) != frames:
        raise ValueError(f"frame_index: expected {frames} indices, got {len(idx)}")
    prev, nxt = neighbour_positions(idx)
    pos = torch.tensor([[c * frames + j for j in prev] + [c * frames + j for j in nxt] for c in range(chunks)],
                       device=k.device)  # [chunks, 2F]
    F_, N, C = k.shape
    # [chunks*F, 2N, C]: the previous frame's tokens, then the next frame's
    kn = k.index_select(0, pos.reshape(-1)).view(chunks, 2, frames, N, C).transpose(1, 2).reshape(F_, 2 * N, C)
    vn = v.index_select(0, pos.reshape(-1)).view(chunks, 2, frames, N, C).transpose(1, 2).reshape(F_, 2 * N, C)
    attn = attention or sdpa_attention
    group = max(1, SCORE_BUDGET // (heads * N * 2 * N))
    if group >= F_:
        return attn(q, kn, vn, heads)
    return torch.cat([attn(q[a:a + group], kn[a:a + group], vn[a:a + group], heads) for a in range(0, F_, group)])


def check_flow_covers(flow: Optional[FlowField], frame_index: Sequence[int]) -> None:
    """ValueError (naming ``flow``) unless ``flow`` has every absolute frame of ``frame_index``."""
    if flow is None:
        return
    idx = [int(i) for i in frame_index]
    if idx and (min(idx) < 0 or max(idx) >= flow.num_frames):
        raise ValueError(f"flow: expected a FLOW covering frames {min(idx)}..{max(idx)} of the latent batch "
                         f"({len(idx)} frames), got a FLOW of {flow.num_frames} frames")


# --------------------------------------------------------------------------------------------
# x0 preview and its flow
# --------------------------------------------------------------------------------------------

def latent_to_rgb(x0: Tensor, factors=None, bias=None, clamp: bool = True) -> Tensor:
    """Linear latent -> RGB preview: ``x0 [T,C,h,w] -> [T,3,h,w]`` (float32), in ``[0,1]`` when
    ``clamp`` (unclamped it stays linear, hence differentiable everywhere, for guidance losses)."""
    check_latents(x0, "x0")
    fac = torch.as_tensor(SD15_RGB_FACTORS if factors is None else factors, dtype=torch.float32,
                          device=x0.device)
    if fac.ndim != 2 or fac.shape != (x0.shape[1], 3):
        raise ValueError(f"factors: expected latent-to-RGB factors [{x0.shape[1]},3], got {tuple(fac.shape)}")
    rgb = torch.einsum("tchw,cr->trhw", x0.float(), fac)
    if bias is not None:
        rgb = rgb + torch.as_tensor(bias, dtype=torch.float32, device=x0.device).view(1, 3, 1, 1)
    rgb = (rgb + 1.0) * 0.5
    return rgb.clamp(0.0, 1.0) if clamp else rgb


def preview_flow(rgb: Tensor, min_side: int = 32, preset: str = "ultrafast") -> FlowField:
    """Optical flow of a preview clip ``rgb [T,3,h,w]`` (0..1), returned on the ``h x w`` grid.

    The preview is upsampled by an integer factor to at least ``min_side`` pixels on its short side,
    DIS flow + forward-backward check are computed there (:func:`.flow.estimate_flow`), and the
    result is resampled to ``h x w`` (vectors scaled)."""
    T, _, h, w = rgb.shape
    s = max(1, math.ceil(min_side / max(1, min(h, w))))
    big = F.interpolate(rgb.float().cpu(), scale_factor=s, mode="bilinear", align_corners=False) if s > 1 else rgb.float().cpu()
    return estimate_flow(big.permute(0, 2, 3, 1).contiguous(), preset=preset, out_size=(h, w))


# --------------------------------------------------------------------------------------------
# Stage 2: self-corrected trajectories (Eq. 6) and trajectory attention (Eq. 7)
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=32)
def _grid(h: int, w: int, device) -> tuple[Tensor, Tensor]:
    """Token coordinates ``(xs, ys)`` ``[h, w]`` (cached: called per offset and candidate; never mutated)."""
    with torch.inference_mode(False):  # a cached inference tensor would be refused later outside inference mode
        ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return xs, ys


def round_displacement(flow: Tensor) -> Tensor:
    """Float displacements ``[P,2,h,w]`` -> integer token displacements that stay inside the frame."""
    P, _, h, w = flow.shape
    xs, ys = _grid(h, w, flow.device)
    tx = (xs + torch.round(flow[:, 0])).clamp(0, w - 1)
    ty = (ys + torch.round(flow[:, 1])).clamp(0, h - 1)
    return torch.stack([tx - xs, ty - ys], 1).long()


def _flat_target(disp: Tensor, ox: int = 0, oy: int = 0) -> Tensor:
    """Flat token index ``[P, h*w]`` of ``p + (ox, oy) + disp(p)`` clamped to the frame."""
    P, _, h, w = disp.shape
    xs, ys = _grid(h, w, disp.device)
    tx = (xs + ox + disp[:, 0]).clamp(0, w - 1)
    ty = (ys + oy + disp[:, 1]).clamp(0, h - 1)
    return (ty * w + tx).reshape(P, h * w)


def similarity_displacement(src: Tensor, tgt: Tensor, h: int, w: int, radius: int) -> Tensor:
    """Eq. 6 similarity-based match: for each token ``p`` of ``src [P,N,C]`` the displacement to the
    most cosine-similar token of ``tgt [P,N,C]`` within ``radius`` tokens. Returns ``[P,2,h,w]`` long.
    Ties go to the smallest displacement (zero first)."""
    P, N, C = src.shape
    if N != h * w:
        raise ValueError(f"features: expected {h}x{w}={h * w} tokens, got {N}")
    s = F.normalize(src.float(), dim=-1).transpose(1, 2).reshape(P, C, h, w)
    # border clamping of p + offset == reading a replicate-padded grid: shifted views, no gathers
    t = F.pad(F.normalize(tgt.float(), dim=-1).transpose(1, 2).reshape(P, C, h, w),
              (radius, radius, radius, radius), mode="replicate")
    offsets = sorted(((dx, dy) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)),
                     key=lambda o: (o[0] ** 2 + o[1] ** 2, o))
    best = torch.full((P, h, w), -float("inf"), device=src.device)
    best_o = torch.zeros(P, h, w, dtype=torch.long, device=src.device)
    prod = torch.empty_like(s)
    for n, (dx, dy) in enumerate(offsets):
        view = t[:, :, radius + dy:radius + dy + h, radius + dx:radius + dx + w]
        sim = torch.mul(s, view, out=prod).sum(1)  # [P,h,w]
        better = sim > best
        best = torch.where(better, sim, best)
        best_o.masked_fill_(better, n)
    off = torch.tensor(offsets, dtype=torch.long, device=src.device)  # [K,2]
    disp = off[best_o].permute(0, 3, 1, 2)  # [P,2,h,w]
    return round_displacement(disp.float())  # clamp into the frame


def warp_error(src: Tensor, tgt: Tensor, disp: Tensor, patch_radius: int = 1) -> Tensor:
    """Mean absolute patch error ``[P,h,w]`` of matching each token ``p`` of ``src [P,C,h,w]`` to
    ``p + disp(p)`` in ``tgt [P,C,h,w]``: the ``(2r+1)^2`` patch around ``p`` is compared with the patch
    around its match, both shifted by the same displacement (border-clamped)."""
    P, C, h, w = src.shape
    r = patch_radius
    offsets = [(ox, oy) for oy in range(-r, r + 1) for ox in range(-r, r + 1)]
    # src side: border clamping of p + o == a replicate-padded grid read through shifted views
    pad = F.pad(src, (r, r, r, r), mode="replicate") if r else src
    s = torch.stack([pad[:, :, r + oy:r + oy + h, r + ox:r + ox + w] for ox, oy in offsets], 2)  # [P,C,O,h,w]
    # tgt side: one gather of every offset's clamped target p + disp(p) + o
    xs, ys = _grid(h, w, disp.device)
    o = torch.tensor(offsets, dtype=torch.long, device=disp.device)  # [O,2]
    tx = (xs + disp[:, 0])[:, None] + o[:, 0, None, None]
    ty = (ys + disp[:, 1])[:, None] + o[:, 1, None, None]
    idx = (ty.clamp(0, h - 1) * w + tx.clamp(0, w - 1)).reshape(P, 1, -1)  # [P,1,O*h*w]
    t = tgt.reshape(P, C, h * w).gather(2, idx.expand(P, C, idx.shape[-1]))
    return (s.reshape(P, C, -1) - t).abs().mean(1).reshape(P, len(offsets), h, w).mean(1)


def choose_displacement(src: Tensor, tgt: Tensor, candidates: Sequence[Tensor], patch_radius: int = 1
                        ) -> tuple[Tensor, Tensor]:
    """Per token, the candidate displacement (each ``[P,2,h,w]`` long) with the lowest
    :func:`warp_error` on the x0 previews ``src``/``tgt [P,C,h,w]``. Ties go to the earlier candidate.
    Returns ``(best [P,2,h,w], which [P,h,w])`` (index into ``candidates``)."""
    if not candidates:
        raise ValueError("candidates: expected at least one candidate displacement")
    K, P = len(candidates), src.shape[0]
    stack = torch.stack(candidates)  # [K,P,2,h,w]
    # all candidates in one batch: the per-candidate cost is kernel launches, not arithmetic
    errs = warp_error(src.repeat(K, 1, 1, 1), tgt.repeat(K, 1, 1, 1), stack.flatten(0, 1),
                      patch_radius).reshape(K, P, *src.shape[-2:])
    which = errs.argmin(0)
    best = stack.gather(0, which[None, :, None].expand(1, *stack.shape[1:]))[0]
    return best, which


def chain_trajectories(back: Tensor, fwd: Tensor) -> Tensor:
    """Token trajectories over a chunk of ``T`` frames.

    ``back [T-1, N]``: flat index in frame ``i`` of the match of token ``p`` of frame ``i+1``
    (the ``i+1 -> i`` step); ``fwd [T-1, N]``: index in frame ``i+1`` of the match of token ``p``
    of frame ``i``. Returns ``traj [T, T, N]`` long: ``traj[i, j, p]`` = position in frame ``j`` of the
    trajectory through token ``p`` of frame ``i`` (``traj[i, i] = p``)."""
    T = back.shape[0] + 1
    N = back.shape[1] if T > 1 else fwd.shape[-1]
    ar = torch.arange(N, device=back.device)
    traj = ar.repeat(T, T, 1)
    # one step of the chain advances every trajectory that passes frame j at once
    for j in range(T - 2, -1, -1):   # backward: traj[i, j] = back[j][traj[i, j+1]] for i > j
        traj[j + 1:, j] = back[j][traj[j + 1:, j + 1]]
    for j in range(1, T):            # forward: traj[i, j] = fwd[j-1][traj[i, j-1]] for i < j
        traj[:j, j] = fwd[j - 1][traj[:j, j - 1]]
    return traj


def trajectory_attention(qhat: Tensor, k: Tensor, v: Tensor, traj: Tensor, heads: int) -> Tensor:
    """Eq. 7 for one chunk: ``qhat, k, v [T,N,H*D]``, ``traj [T,T,N]`` -> ``[T,N,H*D]``.

    Token ``p`` of frame ``i`` attends to ``K, V`` at its trajectory positions in the other ``T-1``
    frames. ``T == 1`` returns ``qhat``."""
    T, N, Cd = qhat.shape
    if T == 1:
        return qhat
    d = Cd // heads
    out = torch.empty_like(qhat)
    scale = 1.0 / math.sqrt(d)
    cdt = torch.float32 if qhat.dtype in (torch.float16, torch.bfloat16) else qhat.dtype
    # frames are processed in groups so the gathered K/V stay under ~max_elems elements: small enough
    # to stay in cache (4x faster than 32M-element groups at 16 frames x 256 tokens, same at SD sizes)
    max_elems = 1 << 19
    group = max(1, min(T, max_elems // max(1, T * N * Cd)))
    frames = torch.arange(T, device=qhat.device)
    kf, vf = k.reshape(T * N, Cd), v.reshape(T * N, Cd)
    for a in range(0, T, group):
        b = min(T, a + group)
        G = b - a
        flat = (traj[a:b] + frames[None, :, None] * N).reshape(-1)          # [G*T*N] rows of k/v
        kt = kf.index_select(0, flat).to(cdt).view(G, T, N, heads, d)       # [G,T,N,h,d]
        vt = vf.index_select(0, flat).to(cdt).view(G, T, N, heads, d)
        qh = qhat[a:b].to(cdt).view(G, 1, N, heads, d)
        s = (kt * qh).sum(-1).mul_(scale)                                   # [G,T,N,h]
        self_mask = frames[None, :] == torch.arange(a, b, device=qhat.device)[:, None]  # [G,T]: [Traj - p]
        s = s.masked_fill(self_mask[:, :, None, None], float("-inf")).softmax(1)
        o = (s.unsqueeze(-1) * vt).sum(1)                                   # [G,N,h,d]
        out[a:b] = o.reshape(G, N, Cd).to(qhat.dtype)
    return out


class TrajectoryTracker:
    """Self-corrected trajectory selection with a per-key memory of the previous best choice.

    ``select(feats, x0_rgb, flows, key)``:
        feats ``[T,N,C]`` (this layer's keys of one chunk), x0_rgb ``[T,3,h,w]`` preview of the
        previous step's x0 on the token grid, ``flows``: list of :class:`FlowField` of the ``T``
        frames on the token grid (flow-based candidates). Returns ``traj [T,T,N]`` and a dict of
        how often each candidate kind won.
    """

    KINDS = ("history", "flow", "similarity")

    def __init__(self, search_radius: int = 3, patch_radius: int = 1, use_similarity: bool = True,
                 use_history: bool = True):
        if search_radius < 0 or patch_radius < 0:
            raise ValueError(f"search_radius/patch_radius: expected >= 0, got {search_radius}/{patch_radius}")
        self.search_radius = int(search_radius)
        self.patch_radius = int(patch_radius)
        self.use_similarity = bool(use_similarity)
        self.use_history = bool(use_history)
        self.history: dict = {}

    def reset(self) -> None:
        self.history.clear()

    def _direction(self, feats, rgb, flows, src_sl, tgt_sl, flow_attr, h, w, key):
        cands, kinds = [], []
        hist = self.history.get(key) if self.use_history else None
        if hist is not None and hist.shape[0] == rgb[src_sl].shape[0] and hist.shape[-2:] == (h, w):
            cands.append(hist.to(rgb.device))
            kinds.append("history")
        for fl in flows:
            cands.append(round_displacement(getattr(fl, flow_attr).to(device=rgb.device, dtype=torch.float32)))
            kinds.append("flow")
        if self.use_similarity or not cands:
            cands.append(similarity_displacement(feats[src_sl], feats[tgt_sl], h, w, self.search_radius))
            kinds.append("similarity")
        best, which = choose_displacement(rgb[src_sl], rgb[tgt_sl], cands, self.patch_radius)
        self.history[key] = best
        counts = {kd: 0 for kd in self.KINDS}
        for n, kd in enumerate(kinds):
            counts[kd] += int((which == n).sum())
        return best, counts

    def select(self, feats: Tensor, x0_rgb: Tensor, flows: Sequence[FlowField], key: Hashable = None
               ) -> tuple[Tensor, dict]:
        T, N, _ = feats.shape
        _, _, h, w = x0_rgb.shape
        if x0_rgb.shape[0] != T or N != h * w:
            raise ValueError(f"x0_rgb: expected [{T},3,h,w] with h*w={N} tokens, got {tuple(x0_rgb.shape)}")
        if T == 1:
            return torch.zeros(1, 1, N, dtype=torch.long, device=feats.device), {}
        rgb = x0_rgb.to(feats.device)
        flows = [f for f in flows if f is not None]
        for f in flows:
            if f.num_frames != T or (f.height, f.width) != (h, w):
                raise ValueError(f"flows: expected FlowFields of {T} frames on {h}x{w}, got {f!r}")
        back, cb = self._direction(feats, rgb, flows, slice(1, T), slice(0, T - 1), "backward", h, w, (key, "back"))
        fwd, cf = self._direction(feats, rgb, flows, slice(0, T - 1), slice(1, T), "forward", h, w, (key, "fwd"))
        back_idx = _flat_target(back)  # [T-1,N]: frame i+1 -> frame i
        fwd_idx = _flat_target(fwd)    # [T-1,N]: frame i -> frame i+1
        counts = {kd: cb.get(kd, 0) + cf.get(kd, 0) for kd in self.KINDS}
        return chain_trajectories(back_idx, fwd_idx), counts


# --------------------------------------------------------------------------------------------
# The whole layer, with per-run state
# --------------------------------------------------------------------------------------------

class SLRAttention:
    """Per-run state and the attention of one chunk (the node side does the CFG chunk split).

    * ``record_x0(x0, frame_key)``: store the x0 estimate ``[T,C,h,w]`` of the current step (called
      after every model evaluation; the *next* step's trajectories use it).
    * ``new_run(run_key)``: forget everything when a new sampling run starts.
    * ``__call__(q, k, v, heads, frame_index, chunk, hw, progress, largest)``: Eq. 5 always; Eq. 6-7
      when ``largest`` (this block is at the largest decoder attention resolution), ``progress >=
      trajectory_start``, ``T > 1`` and an x0 of a previous step is known for these frames.

    ``input_flow`` (optional :class:`FlowField` of the whole clip, e.g. from the degraded frames) adds
    a flow-based candidate; ``x0_flow`` adds the flow computed on the previous step's x0 preview.
    ``strength`` in ``[0,1]`` blends stage 2 in (``1`` = the paper: stage 2 output replaces stage 1).
    """

    def __init__(self, trajectory_start: float = 0.5, strength: float = 1.0, search_radius: int = 3,
                 patch_radius: int = 1, input_flow: Optional[FlowField] = None, x0_flow: bool = True,
                 rgb_factors=None, rgb_bias=None, attention: Optional[AttentionFn] = None,
                 use_similarity: bool = True, use_history: bool = True):
        check_unit(trajectory_start, "trajectory_start", "a fraction of the schedule")
        if not 0.0 <= float(strength) <= 1.0:
            raise ValueError(f"strength: expected a value in [0, 1], got {strength}")
        self.trajectory_start = float(trajectory_start)
        self.strength = float(strength)
        self.input_flow = input_flow
        self.x0_flow = bool(x0_flow)
        self.rgb_factors = rgb_factors
        self.rgb_bias = rgb_bias
        self.attention = attention
        self.tracker = TrajectoryTracker(search_radius, patch_radius, use_similarity, use_history)
        self._run_key = None
        self._x0: dict = {}        # frame_key -> (version, x0 [T,C,h,w])
        self._version = 0
        self._cache: dict = {}     # (frame_key, version, "rgb"/"flow"/"traj", ...) -> value
        self.stats = {kd: 0 for kd in TrajectoryTracker.KINDS}
        self.trajectory_calls = 0

    # -- state ---------------------------------------------------------------------------------
    def new_run(self, run_key: Hashable) -> None:
        if run_key != self._run_key:
            self._run_key = run_key
            self._x0.clear()
            self._cache.clear()
            self.tracker.reset()

    def record_x0(self, x0: Tensor, frame_key: Hashable) -> None:
        self._version += 1
        self._x0[frame_key] = (self._version, x0.detach())
        # drop derived data of older x0 versions of these frames
        self._cache = {k: v for k, v in self._cache.items() if k[0] != frame_key or k[1] == self._version}

    # -- helpers ---------------------------------------------------------------------------------
    def _derived(self, frame_key, frame_index, h, w, region=None):
        ver, x0 = self._x0[frame_key]
        rkey = (frame_key, ver, "rgb", h, w, region)
        if rkey not in self._cache:
            if region is not None and tuple(x0.shape[-2:]) != (region.height, region.width):
                raise ValueError(f"region: expected a tile of the {tuple(x0.shape[-2:])} x0 estimate, got a "
                                 f"{region.height}x{region.width} frame")
            rgb = latent_to_rgb(x0 if region is None else region.crop(x0), self.rgb_factors, self.rgb_bias)
            if rgb.shape[-2:] != (h, w):
                rgb = F.interpolate(rgb, size=(h, w), mode="area" if h <= rgb.shape[-2] else "bilinear")
            self._cache[rkey] = rgb
        flows = []
        if self.x0_flow:
            fkey = (frame_key, ver, "flow")
            if fkey not in self._cache:
                lat = latent_to_rgb(x0, self.rgb_factors, self.rgb_bias)
                self._cache[fkey] = preview_flow(lat) if lat.shape[0] > 1 else None
            fl = self._cache[fkey]
            if fl is not None:  # measured on the full frame, cut to the tile: motion across its border is kept
                flows.append(flow_in_tile(fl, region, h, w))
        if self.input_flow is not None:
            ikey = ("input", tuple(frame_index), h, w, region)
            if ikey not in self._cache:
                self._cache[ikey] = flow_in_tile(self.input_flow.select(list(frame_index)), region, h, w)
            flows.append(self._cache[ikey])
        return ver, self._cache[rkey], flows

    def trajectories(self, k: Tensor, frame_index, chunk, hw, frame_key, region=None) -> Optional[Tensor]:
        """Trajectories ``[T,T,N]`` for this step (computed once per step, chunk and tile, reused by every
        largest-resolution block of the step). ``region``: the tile (``pipelines.tiling.Tile``) the
        tokens cover when sampling is tiled; x0 and flows are cut to it (tile-local coordinates)."""
        if frame_key not in self._x0:
            return None
        h, w = hw
        ver, rgb, flows = self._derived(frame_key, frame_index, h, w, region)
        tkey = (frame_key, ver, "traj", chunk, h, w, region)
        if tkey not in self._cache:
            traj, counts = self.tracker.select(k, rgb, flows, key=(frame_key, chunk, h, w, region))
            for kd, c in counts.items():
                self.stats[kd] += c
            self._cache[tkey] = traj
        return self._cache[tkey]

    # -- the layer -------------------------------------------------------------------------------
    def __call__(self, q: Tensor, k: Tensor, v: Tensor, heads: int, frame_index: Sequence[int],
                 chunk: Hashable, hw: tuple[int, int], progress: float, largest: bool, region=None) -> Tensor:
        """``q, k, v [n*T, N, C]``: ``n`` CFG chunks of the ``T`` frames of ``frame_index``; ``chunk``
        is the chunk's label, or a list of ``n`` labels (trajectories are kept per label). ``region``: the
        tile (``pipelines.tiling.Tile``) of a tiled run, the tokens then cover only that part of the
        recorded full-frame x0."""
        check_flow_covers(self.input_flow, frame_index)
        labels = list(chunk) if isinstance(chunk, list) else [chunk]
        qhat = cross_neighbour_attention(q, k, v, heads, frame_index, self.attention, chunks=len(labels))
        T = len(frame_index)
        if not largest or T < 2 or self.strength == 0.0 or progress < self.trajectory_start:
            return qhat
        frame_key = tuple(int(i) for i in frame_index)
        outs = []
        for c, label in enumerate(labels):
            sl = slice(c * T, (c + 1) * T)
            traj = self.trajectories(k[sl], frame_index, label, hw, frame_key, region)
            if traj is None:
                return qhat
            self.trajectory_calls += 1
            out = trajectory_attention(qhat[sl], k[sl], v[sl], traj, heads)
            if self.strength < 1.0:
                out = qhat[sl] + self.strength * (out - qhat[sl])
            outs.append(out)
        return outs[0] if len(outs) == 1 else torch.cat(outs, 0)
