"""Hybrid flow-guided spatial-aware token merging (DiffIR2VR-Zero Sec. 3.3, Eq. 5-8; VidToMe-style).

Before a self-attention layer the frames of a batch are cut into *frame chunks* (consecutive
absolute frames, ``chunk_size`` each) with one keyframe (the merge *target*).  Every token of the
other frames (the *sources*) gets one candidate target token in the keyframe:

* ``"flow"`` (UNet down blocks, Eq. 5-6): the token the optical flow points at, scored by the
  forward-backward confidence ``sigma = exp(-|f_st(p) + f_ts(p + f_st(p))|^2)`` on the token grid;
* ``"cosine"`` (UNet up blocks, Eq. 7): the most similar keyframe token inside a
  ``(2 W + 1)^2`` window around the same position, with cosine similarity weighted by
  ``exp(-floor(|X(i) - X(j)|^2 / R))``; ``W = ceil(sqrt(2 R))`` so matching costs
  ``O(tokens * window)`` (weights beyond the window are below ``e^-2``).

The ``m`` best-scored sources of a chunk are merged into their targets; the chunk becomes one
sequence ``[keyframe tokens, kept source tokens]`` and the attention runs on it (fewer tokens,
cross-frame within the chunk).  After attention every merged source takes its target's output
(replacement unmerging).  Merging is ``"replace"`` by default, as the official code: a merged slot
holds the keyframe token alone and the merged sources are dropped (the paper's appendix found averaging
blurrier); ``"mean"`` averages the keyframe token with the sources merged into it.  Only the two highest
resolutions are merged by default (:func:`merge_level`: token grid downsampled at most 2x from the latent,
never the middle block), as the official code's ``max_downsample = 2``.  Tokens in a padding region (``valid`` mask) are neither sources nor
targets (padding removal), unless a chunk must be shortened to a common length (see
:func:`plan_merge`).

Everything is expressed as one index ``dest [B*N]`` (slot of each input token in the merged batch),
so ``merge`` is a scatter (mean) or a gather of each slot's owner (replace) and ``unmerge`` a gather: the pair is reversible by construction.

Limitations (honest notes):

* The merged chunk is attended jointly (VidToMe-style), so a chunk of F frames costs
  ``(N + (1 - r)(F - 1) N)^2`` instead of ``F N^2``: cheaper than per-frame attention only for
  ``r`` above about 0.6 with 4-frame chunks (bench/bench_token_merge.py).
* No size-weighted ("proportional") attention: ComfyUI's attn1_patch cannot add a logit bias.
  On identical frames merged attention equals per-frame attention exactly at ``r = 1`` and
  approximately below (remaining duplicates get extra weight).
* At ratios that force merging sources without a valid match (padding, matches leaving the
  frame), those are merged into the clamped border target.
* ComfyUI 0.3.75 does not pass ``transformer_options`` to ControlNet models, so ControlNet
  blocks are never merged (deliberately left alone).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from .checks import check_unit
from .flow import fb_confidence, out_of_frame, pixel_grid
from .latent_warp import choose_keyframes

Tensor = torch.Tensor

MATCH_MODES = ("flow", "cosine")
MERGE_MODES = ("replace", "mean")
LEVELS = ("top2", "all", "auto")
#: ``levels="auto"``: fewest tokens per frame at which merging is worth its matching + merge + unmerge.
#: Measured per self-attention layer (projections + SDPA, 8 frames, CFG, chunk 4 / 10, r 0.75, one
#: thread): 16 tokens x 320 ch 1.47x / 1.16x stock (merging costs more than it saves), 64 x 320 0.92x /
#: 0.72x, 64 x 640 0.66x, 256 x 640 0.64x / 0.57x, 1024 x 320 0.81x / 0.88x.
AUTO_MIN_TOKENS = 64
#: ``levels="auto"``: largest :func:`joint_cost` at which a layer still merges. A merged frame chunk is ONE
#: attention sequence (joint attention over the chunk, VidToMe / DiffIR2VR-Zero), quadratic in its length: 8
#: frames of 4096 tokens x 320 ch (SD1.5 at 512 px), one thread, per-frame SDPA 5.4 s; merged at r 0.75 to
#: 11264 tokens 5.1 s + plan / merge / unmerge 0.5 s; at r 0.3 (24167 tokens) 26.3 s; at r 0.06 (the
#: end of Eq. 8's annealing, 31048 tokens) 41.3 s (bench/bench_step_real.py discussion, issue 20). The
#: plan / merge / unmerge cost ~10% of the per-frame attention, hence the margin below 1.
AUTO_MAX_COST = 0.9


def merge_level(block, h: int, w: int, latent_h: int, latent_w: int, levels: str = "top2") -> bool:
    """Whether an attention layer on an ``h x w`` token grid of a ``latent_h x latent_w`` latent in UNet
    ``block`` (ComfyUI's ``("input"|"middle"|"output", n)``) merges tokens.

    ``"top2"`` (official DiffIR2VR-Zero / VidToMe code, ``max_downsample = 2``): only grids downsampled at
    most 2x (SD1.5: the two highest resolutions, 4 of the down and 6 of the up attention layers) and never
    the middle block. ``"all"``: every layer (this pack's earlier behaviour). ``"auto"``: the ``"top2"`` layers
    whose grid has at least :data:`AUTO_MIN_TOKENS` tokens per frame (below that merging costs more than
    the attention it saves; at SD1.5 shapes of 256 px and more ``"auto"`` equals ``"top2"`` here), and
    :func:`plan_merge` skips a layer whose merged joint attention would cost more (``max_cost``)."""
    if levels not in LEVELS:
        raise ValueError(f"levels: expected one of {LEVELS}, got {levels!r}")
    if levels == "all":
        return True
    if levels == "auto" and int(h) * int(w) < AUTO_MIN_TOKENS:
        return False
    if block is not None and block[0] == "middle":
        return False
    downsample = max(-(-int(latent_h) // max(1, int(h))), -(-int(latent_w) // max(1, int(w))))
    return downsample <= 2


# ----------------------------------------------------------------------------------------------
# Eq. 8: merging-ratio annealing
# ----------------------------------------------------------------------------------------------

def merge_ratio(step: float, r: float, i_beg: float, i_end: float, delta: float = 1.0) -> float:
    """Eq. 8: ``r_i = r cos(pi/2 * clamp(delta (i - i_beg) / (i_end - i_beg), 0, 1))``.

    Full ratio ``r`` up to ``i_beg``, cosine decay after it, zero from
    ``i_beg + (i_end - i_beg) / delta`` on.  ``i_end <= i_beg`` means no annealing (``r`` throughout).
    """
    check_unit(r, "ratio")
    if delta <= 0:
        raise ValueError(f"delta: expected > 0, got {delta}")
    if i_end <= i_beg:
        return float(r)
    u = max(min(delta * (step - i_beg) / (i_end - i_beg), 1.0), 0.0)
    val = r * math.cos(math.pi / 2 * u)
    return 0.0 if val < 1e-12 else float(val)


# ----------------------------------------------------------------------------------------------
# Correspondences
# ----------------------------------------------------------------------------------------------

def spatial_window(R: float) -> int:
    """Half-width ``W`` of the matching window for radius parameter ``R`` (token units^2)."""
    return max(1, int(math.ceil(math.sqrt(2.0 * max(R, 0.0)))))


def cosine_matches(src: Tensor, tgt: Tensor, h: int, w: int, R: float = 4.0, valid: Optional[Tensor] = None,
                   window: Optional[int] = None, tile: int = 8) -> tuple[Tensor, Tensor]:
    """Eq. 7 spatial-aware cosine correspondences of source frames to the keyframe.

    ``src [S,N,C]`` tokens of S source frames, ``tgt [N,C]`` keyframe tokens, ``N = h*w`` row-major.
    Returns ``(index [S,N] long, score [S,N])``: the keyframe token within the ``(2W+1)^2`` window
    that maximises ``cos * exp(-floor(d^2 / R))`` and that score.  ``valid [N]`` bool excludes
    padding (never a target; sources there get score ``-inf``).

    Computed per ``tile x tile`` block of source tokens against the block plus a ``W`` halo with one
    batched matmul (``O(N * (tile + 2W)^2 * C)``, matmul-efficient), then masked to the window.
    """
    S, N, C = src.shape
    if N != h * w or tgt.shape != (N, C):
        raise ValueError(f"tokens: expected src [S,{h * w},C] and tgt [{h * w},C], got {tuple(src.shape)} {tuple(tgt.shape)}")
    W = spatial_window(R) if window is None else int(window)
    dev = src.device
    T = max(1, min(int(tile), max(h, w)))
    Hp, Wp = -(-h // T) * T, -(-w // T) * T
    nty, ntx = Hp // T, Wp // T
    dt = torch.float32 if src.dtype in (torch.float16, torch.bfloat16) and dev.type == "cpu" else src.dtype
    s = torch.nn.functional.normalize(src.to(dt), dim=-1).view(S, h, w, C)
    t = torch.nn.functional.normalize(tgt.to(dt), dim=-1).view(h, w, C)
    s = torch.nn.functional.pad(s, (0, 0, 0, Wp - w, 0, Hp - h))
    t = torch.nn.functional.pad(t, (0, 0, W, Wp - w + W, W, Hp - h + W))
    vmask = torch.ones(h, w, dtype=torch.bool, device=dev) if valid is None else valid.view(h, w).to(dev)
    vt = torch.nn.functional.pad(vmask, (W, Wp - w + W, W, Hp - h + W), value=False)
    K1 = T + 2 * W
    # source tiles [nt, S*T*T, C]
    st = s.view(S, nty, T, ntx, T, C).permute(1, 3, 0, 2, 4, 5).reshape(nty * ntx, S * T * T, C)
    # target tiles with halo [nt, C, K1*K1]
    tt = t.unfold(0, K1, T).unfold(1, K1, T)  # [nty, ntx, C, K1, K1]
    tt = tt.reshape(nty * ntx, C, K1 * K1)
    vtt = vt.unfold(0, K1, T).unfold(1, K1, T).reshape(nty * ntx, 1, K1 * K1)
    sim = torch.bmm(st, tt).view(nty * ntx, S, T * T, K1 * K1)
    # spatial weights between a tile position (ty, tx) and a halo position (ky, kx): d = (ky - W - ty, kx - W - tx)
    ty = torch.arange(T, device=dev).view(T, 1, 1, 1)
    tx = torch.arange(T, device=dev).view(1, T, 1, 1)
    ky = torch.arange(K1, device=dev).view(1, 1, K1, 1)
    kx = torch.arange(K1, device=dev).view(1, 1, 1, K1)
    dy, dx = (ky - W - ty).expand(T, T, K1, K1), (kx - W - tx).expand(T, T, K1, K1)
    d2 = (dy * dy + dx * dx).to(dt)
    inwin = (dy.abs() <= W) & (dx.abs() <= W)
    if R > 0:
        wgt = torch.exp(-torch.floor(d2 / R))
    else:
        wgt = (d2 == 0).to(dt)
        inwin = inwin & (d2 == 0)
    wgt = wgt.reshape(1, 1, T * T, K1 * K1).to(sim.dtype)
    ok = inwin.reshape(1, 1, T * T, K1 * K1) & vtt.view(nty * ntx, 1, 1, K1 * K1)
    sim = (sim * wgt).masked_fill(~ok, -math.inf)
    best, arg = sim.max(-1)  # [nt, S, T*T]
    ky_b, kx_b = arg // K1, arg % K1
    tyy = torch.arange(nty, device=dev).view(nty, 1, 1, 1, 1) * T
    txx = torch.arange(ntx, device=dev).view(1, ntx, 1, 1, 1) * T
    gy = (tyy + ky_b.view(nty, ntx, S, T, T) - W).clamp(0, h - 1)
    gx = (txx + kx_b.view(nty, ntx, S, T, T) - W).clamp(0, w - 1)
    index = (gy * w + gx).permute(2, 0, 3, 1, 4).reshape(S, Hp, Wp)[:, :h, :w].reshape(S, N)
    score = best.view(nty, ntx, S, T, T).permute(2, 0, 3, 1, 4).reshape(S, Hp, Wp)[:, :h, :w]
    score = score.float().masked_fill(~vmask.view(1, h, w), -math.inf).reshape(S, N)
    return index, score


def cosine_matches_reference(src: Tensor, tgt: Tensor, h: int, w: int, R: float = 4.0, valid: Optional[Tensor] = None,
                   window: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """Reference (offset loop) implementation of :func:`cosine_matches`; same results, slower.

    ``src [S,N,C]`` tokens of S source frames, ``tgt [N,C]`` keyframe tokens, ``N = h*w`` row-major.
    Returns ``(index [S,N] long, score [S,N])``: the keyframe token within the window that maximises
    ``cos * exp(-floor(d^2 / R))`` and that score.  ``valid [N]`` bool excludes padding (never a
    target; sources there get score ``-inf``).
    """
    S, N, C = src.shape
    if N != h * w or tgt.shape != (N, C):
        raise ValueError(f"tokens: expected src [S,{h * w},C] and tgt [{h * w},C], got {tuple(src.shape)} {tuple(tgt.shape)}")
    W = spatial_window(R) if window is None else int(window)
    f32 = torch.float32
    s = torch.nn.functional.normalize(src.to(f32), dim=-1).transpose(1, 2).reshape(S, C, h, w)
    t = torch.nn.functional.normalize(tgt.to(f32), dim=-1).transpose(0, 1).reshape(C, h, w)
    tpad = torch.nn.functional.pad(t, (W, W, W, W))
    vmask = torch.ones(h, w, dtype=torch.bool, device=src.device) if valid is None else valid.view(h, w).to(src.device)
    vpad = torch.nn.functional.pad(vmask, (W, W, W, W), value=False)
    best = torch.full((S, h, w), -math.inf, device=src.device, dtype=f32)
    best_off = torch.zeros((S, h, w), dtype=torch.long, device=src.device)
    offsets = [(dy, dx) for dy in range(-W, W + 1) for dx in range(-W, W + 1)]
    for k, (dy, dx) in enumerate(offsets):
        tau = math.floor((dy * dy + dx * dx) / R) if R > 0 else (0 if dy == dx == 0 else math.inf)
        if tau == math.inf:
            continue
        wgt = math.exp(-tau)
        tv = tpad[:, W + dy:W + dy + h, W + dx:W + dx + w]
        ok = vpad[W + dy:W + dy + h, W + dx:W + dx + w]
        sim = torch.einsum("schw,chw->shw", s, tv) * wgt
        sim = sim.masked_fill(~ok, -math.inf)
        better = sim > best
        best = torch.where(better, sim, best)
        best_off = torch.where(better, torch.full_like(best_off, k), best_off)
    offs = torch.tensor(offsets, device=src.device, dtype=torch.long)
    dy, dx = offs[best_off, 0], offs[best_off, 1]
    ys = torch.arange(h, device=src.device).view(1, h, 1)
    xs = torch.arange(w, device=src.device).view(1, 1, w)
    ty = (ys + dy).clamp(0, h - 1)
    tx = (xs + dx).clamp(0, w - 1)
    index = (ty * w + tx).view(S, N)
    score = best.masked_fill(~vmask.view(1, h, w), -math.inf).view(S, N)
    return index, score


def flow_matches(f_st: Tensor, f_ts: Tensor, occ: Optional[Tensor] = None,
                 valid: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Eq. 5 flow correspondences of one source frame to the keyframe on the token grid.

    ``f_st [2,h,w]`` source -> keyframe flow, ``f_ts [2,h,w]`` keyframe -> source (token units),
    ``occ [1,h,w]`` optional occlusion of the source tokens.  Returns ``(index [N], score [N])``:
    the nearest keyframe token to ``p + f_st(p)`` and the confidence ``sigma`` (0 when occluded,
    ``-inf`` for padding sources or targets / matches leaving the frame)."""
    _, h, w = f_st.shape
    conf = fb_confidence(f_st[None].float(), f_ts[None].float())[0, 0]
    if occ is not None:
        conf = conf * (1.0 - occ.view(h, w).to(conf))
    pos = pixel_grid(h, w, f_st.device, torch.float32) + f_st.float()
    tx = pos[0].round().long().clamp(0, w - 1)
    ty = pos[1].round().long().clamp(0, h - 1)
    index = (ty * w + tx).view(-1)
    score = conf.view(-1).clone()
    bad = out_of_frame(f_st[None].float())[0, 0].view(-1) > 0
    if valid is not None:
        v = valid.view(-1).to(f_st.device)
        bad = bad | ~v | ~v[index]
    score[bad] = -math.inf
    return index, score


# ----------------------------------------------------------------------------------------------
# Merge plan
# ----------------------------------------------------------------------------------------------

def frame_groups(frame_idx: Sequence[int], chunk_size: int, keyframe_mode: str = "random",
                 seed: int = 0, num_frames: Optional[int] = None) -> list[tuple[int, list[int]]]:
    """Frame chunks of one cond/uncond chunk: ``[(key position, [positions, key first])]`` with
    positions into ``frame_idx``; chunks are ``abs_index // chunk_size`` (windows agree)."""
    idx = [int(i) for i in frame_idx]
    keys = choose_keyframes(idx, chunk_size, keyframe_mode, seed, num_frames)
    pos = {f: p for p, f in enumerate(idx)}
    out = []
    for b in sorted(keys):
        k = pos[keys[b]]
        members = [p for p, f in enumerate(idx) if f // chunk_size == b and p != k]
        out.append((k, [k] + members))
    return out


def merge_counts(sizes: Sequence[int], n_tokens: int, ratio: float) -> list[int]:
    """Number of merged source tokens per chunk so that every chunk has the same merged length.

    The largest chunk merges ``floor(ratio * (F - 1) * N)`` tokens; the common length
    ``M = F_max N - m_max`` is clamped to ``[N, F_min N]`` and each chunk merges ``F N - M``."""
    if not sizes:
        return []
    fmax, fmin = max(sizes), min(sizes)
    m_big = int(math.floor(ratio * (fmax - 1) * n_tokens))
    M = fmax * n_tokens - m_big
    M = min(max(M, n_tokens), fmin * n_tokens)
    return [f * n_tokens - M for f in sizes]


def joint_cost(sizes: Sequence[int], n_tokens: int, ratio: float, channels: int) -> float:
    """Cost of one self-attention layer on the merged chunks relative to the unmerged per-frame layer.

    A chunk of ``F`` frames merged to ``M`` tokens (:func:`merge_counts`) is one sequence: attention costs
    ``2 M^2 C`` multiply-adds (q k^T and the weighted sum of v) plus ``4 M C^2`` for the q, k, v and output
    projections, against ``F (2 N^2 C + 4 N C^2)`` per-frame. Returns sum over chunks merged / unmerged."""
    counts = merge_counts(sizes, n_tokens, ratio)
    c = int(channels)
    merged = sum(2 * (f * n_tokens - m) ** 2 * c + 4 * (f * n_tokens - m) * c * c for f, m in zip(sizes, counts))
    plain = sum(sizes) * (2 * n_tokens ** 2 * c + 4 * n_tokens * c * c)
    return merged / max(plain, 1)


def build_dest(n_frames: int, key: int, index: Tensor, score: Tensor, m: int, n_tokens: int,
               base: int) -> tuple[Tensor, int]:
    """Slots of the tokens of one frame chunk.

    ``index, score [S,N]`` are the source frames' candidate targets/scores (sources in chunk
    order without the keyframe).  Keyframe tokens take slots ``base + 0..N-1``; the ``m`` best
    sources take their target's slot; the rest get fresh slots after the keyframe's in order.
    Returns ``(dest [S+1, N] long, M)`` with dest row 0 the keyframe."""
    S, N = index.shape
    dev = index.device
    flat_score = score.reshape(-1)
    merged = torch.zeros(S * N, dtype=torch.bool, device=dev)
    if m > 0:
        order = torch.argsort(flat_score, descending=True, stable=True)[:m]
        merged[order] = True
    kept = ~merged
    slots = torch.empty(S * N, dtype=torch.long, device=dev)
    slots[merged] = index.reshape(-1)[merged]
    slots[kept] = n_tokens + torch.arange(int(kept.sum()), device=dev)
    dest = torch.cat([torch.arange(N, device=dev).view(1, N), slots.view(S, N)], 0) + base
    return dest, n_tokens + int(kept.sum())


def make_merge(dest: Tensor, n_groups: int, M: int, merge_mode: str = "mean",
               owner: Optional[Tensor] = None) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """``(merge, unmerge)`` closures for a slot map ``dest [B,N]`` (values in ``[0, n_groups*M)``).

    ``merge(x [B,N,C]) -> [n_groups, M, C]``: ``"mean"`` of the tokens sharing a slot, or ``"replace"``:
    the slot's owner token ``x.reshape(B*N, C)[owner[slot]]`` (``owner [n_groups*M]`` flat token indices:
    the keyframe token where sources were merged into it, otherwise the slot's only token);
    ``unmerge(y [n_groups, M, C]) -> [B,N,C]`` (every token takes its slot's value)."""
    if merge_mode not in MERGE_MODES:
        raise ValueError(f"merge_mode: expected one of {MERGE_MODES}, got {merge_mode!r}")
    if merge_mode == "replace" and (owner is None or owner.shape != (n_groups * M,)):
        raise ValueError(f"owner: replace-merging needs one owner token per slot ({n_groups * M})")
    B, N = dest.shape
    flat = dest.reshape(-1)
    counts = torch.bincount(flat, minlength=n_groups * M).clamp_min(1)
    inv = {}

    def merge(x: Tensor) -> Tensor:
        if merge_mode == "replace":
            return x.reshape(B * N, x.shape[-1]).index_select(0, owner.to(x.device)).view(n_groups, M, x.shape[-1])
        C = x.shape[-1]
        key = (x.device, x.dtype)
        if key not in inv:
            inv[key] = (flat.to(x.device), (1.0 / counts.to(x.device, torch.float32)).to(x.dtype).view(-1, 1))
        idx, w = inv[key]
        out = torch.zeros(n_groups * M, C, device=x.device, dtype=x.dtype)
        out.index_add_(0, idx, x.reshape(B * N, C))
        return (out * w).view(n_groups, M, C)

    def unmerge(y: Tensor) -> Tensor:
        C = y.shape[-1]
        return y.reshape(n_groups * M, C).index_select(0, flat.to(y.device)).view(B, N, C)

    return merge, unmerge


FlowLookup = Callable[[int, int], tuple[Tensor, Tensor, Tensor]]


def plan_merge(x: Tensor, n_chunks: int, h: int, w: int, frame_idx: Sequence[int], ratio: float,
               chunk_size: int = 4, mode: str = "cosine", flow: Optional[FlowLookup] = None, R: float = 4.0,
               keyframe_mode: str = "random", seed: int = 0, valid: Optional[Tensor] = None,
               merge_mode: str = "mean", num_frames: Optional[int] = None, max_cost: Optional[float] = None):
    """Plan token merging for one attention call and return ``(merge, unmerge)`` or ``None``.

    ``x [n_chunks * F, N, C]`` (``N = h*w``, frames contiguous per cond/uncond chunk, never mixed),
    ``frame_idx`` absolute indices of the F frames of a chunk.  ``mode`` ``"flow"`` needs
    ``flow(a, b) -> (f_ab [2,h,w], occ_a [1,h,w], conf)`` on the token grid (absolute indices).
    ``merge_mode``: ``"mean"`` or ``"replace"`` (:func:`make_merge`); ``num_frames`` (clip length) bounds
    the last chunk for the keyframe choice (:func:`latent_warp.choose_keyframes`, shared with latent warping).
    ``max_cost``: return ``None`` when the merged layer would cost more than this share of the unmerged
    one (:func:`joint_cost`; ``levels="auto"`` passes :data:`AUTO_MAX_COST`), so merging runs where it pays.
    Returns ``None`` (no patch: bit-identical) when ``ratio == 0`` or no chunk has two frames.
    """
    if mode not in MATCH_MODES:
        raise ValueError(f"mode: expected one of {MATCH_MODES}, got {mode!r}")
    if ratio <= 0:
        return None
    B, N, C = x.shape
    if N != h * w:
        raise ValueError(f"tokens: {N} tokens do not form a {h}x{w} grid")
    F = B // n_chunks
    groups = frame_groups(frame_idx, chunk_size, keyframe_mode, seed, num_frames)
    if all(len(g[1]) < 2 for g in groups):
        return None
    counts = merge_counts([len(g[1]) for g in groups], N, ratio)
    if max_cost is not None and joint_cost([len(g[1]) for g in groups], N, ratio, C) > max_cost:
        return None
    if mode == "flow" and flow is None:
        raise ValueError("flow: flow-guided matching needs a FLOW (connect TR_FlowEstimate)")
    flow_cache: dict[int, tuple[Tensor, Tensor]] = {}
    dest = torch.empty(B, N, dtype=torch.long, device=x.device)
    slot = 0
    M_common = None
    for c in range(n_chunks):
        for gi, (k, members) in enumerate(groups):
            srcs = members[1:]
            key_item = c * F + k
            if srcs:
                if mode == "flow":
                    if gi not in flow_cache:
                        idx, sc = [], []
                        for p in srcs:
                            f_st, occ, _ = flow(int(frame_idx[p]), int(frame_idx[k]))
                            f_ts, _, _ = flow(int(frame_idx[k]), int(frame_idx[p]))
                            i, s = flow_matches(f_st.to(x.device), f_ts.to(x.device), occ.to(x.device), valid)
                            idx.append(i)
                            sc.append(s)
                        flow_cache[gi] = (torch.stack(idx), torch.stack(sc))
                    index, score = flow_cache[gi]
                else:
                    items = torch.tensor([c * F + p for p in srcs], device=x.device)
                    index, score = cosine_matches(x[items], x[key_item], h, w, R, valid)
            else:
                index = torch.zeros(0, N, dtype=torch.long, device=x.device)
                score = torch.zeros(0, N, device=x.device)
            d, M = build_dest(len(members), k, index, score, counts[gi], N, slot)
            if M_common is None:
                M_common = M
            elif M != M_common:  # pragma: no cover - merge_counts guarantees equal lengths
                raise RuntimeError(f"token merge: unequal merged lengths {M} != {M_common}")
            dest[torch.tensor([c * F + p for p in members], device=x.device)] = d
            slot += M
    n_groups = n_chunks * len(groups)
    owner = None
    if merge_mode == "replace":
        # each slot's owner: the keyframe token where sources were merged into it, else its only token
        flat = dest.reshape(-1)
        is_key = torch.zeros(B, N, dtype=torch.bool, device=x.device)
        is_key[[c * F + k for c in range(n_chunks) for k, _ in groups]] = True
        is_key = is_key.reshape(-1)
        tokens = torch.arange(B * N, device=x.device)
        owner = torch.zeros(n_groups * M_common, dtype=torch.long, device=x.device)
        owner[flat[~is_key]] = tokens[~is_key]
        owner[flat[is_key]] = tokens[is_key]
    return make_merge(dest, n_groups, M_common, merge_mode, owner)


def valid_token_mask(h: int, w: int, latent_h: int, latent_w: int, pad_bottom: int = 0, pad_right: int = 0,
                     pad_top: int = 0, pad_left: int = 0) -> Optional[Tensor]:
    """``[h*w]`` bool mask of tokens outside the padding (padding given in latent pixels of a
    ``latent_h x latent_w`` latent); None when there is no padding."""
    if not (pad_bottom or pad_right or pad_top or pad_left):
        return None
    sy, sx = h / latent_h, w / latent_w
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / sy
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / sx
    vy = (ys >= pad_top) & (ys < latent_h - pad_bottom)
    vx = (xs >= pad_left) & (xs < latent_w - pad_right)
    return (vy.view(h, 1) & vx.view(1, w)).reshape(-1)
