"""The part of a FLOW a patch needs for the frames being sampled, resampled once and cached."""
from __future__ import annotations

import logging

from ..pipelines.tiling import flow_in_tile

log = logging.getLogger("temporal_restore")
CACHE_SIZE = 32
COARSE = 2.0  # a flow grid more than this many times coarser than the sampled grid is worth a warning


def flow_window(holder, idx, h, w, device, tile=None):
    """``holder.flow`` cut to frames ``min(idx)..max(idx)``, on an ``h x w`` grid, on ``device``, and the offset
    to subtract from absolute indices. Long clips: only the window is resampled and moved. ``tile``
    (TR_TiledSampling's :class:`~..pipelines.tiling.Tile`, None when untiled): the full-frame flow is cut
    to the tile first, so the grid is the tile's. ``holder`` has ``flow`` (FlowField), ``_windows`` (dict,
    the cache) and ``_lock``."""
    lo, hi = min(idx), max(idx)
    if hi >= holder.flow.num_frames or lo < 0:
        raise ValueError(f"flow: covers {holder.flow.num_frames} frames but frame index {hi} is being sampled "
                         "(connect the FLOW of the same clip)")
    if max(h / holder.flow.height, w / holder.flow.width) > COARSE and not getattr(holder, "_coarse_warned", False):
        holder._coarse_warned = True  # once per patch: the same flow is resampled for every block and step
        log.warning("temporal_restore: the FLOW grid %dx%d is %.0fx coarser than the %dx%d grid being sampled "
                    "(SD x4 upscaler: its latent is the low-res frames' grid): estimate it with TR_FlowEstimate grid "
                    "'full' on those frames for flow at the latent's own resolution", holder.flow.height,
                    holder.flow.width, max(h / holder.flow.height, w / holder.flow.width), h, w)
    key = (lo, hi, h, w, str(device), tile)
    with holder._lock:
        hit = holder._windows.get(key)
        if hit is None:
            if len(holder._windows) >= CACHE_SIZE:
                holder._windows.pop(next(iter(holder._windows)))
            hit = flow_in_tile(holder.flow.select(list(range(lo, hi + 1))), tile, h, w).to(device=device)
            holder._windows[key] = hit
        return hit, lo
