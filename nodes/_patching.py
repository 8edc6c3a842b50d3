"""Shared helpers for every Temporal Restore model patch (attention patches, wrappers, chunkers).

Contracts (other features build on these, keep them stable):

* ``chunk_layout(extra_options, batch) -> (n_chunks, frames)``: an attention batch is
  ``[n_chunks * frames, tokens, dim]``; with CFG ComfyUI concatenates the cond and the uncond
  batch, one *chunk* each, named by ``extra_options["cond_or_uncond"]``; frames are contiguous
  within a chunk. Cross-frame operations reshape to ``[n_chunks, frames, ...]`` and never mix
  chunks.
* ``frame_index(extra_options, frames) -> list[int]``: absolute frame indices of the frames of
  ONE chunk. A chunker that samples a window of a longer clip puts them in
  ``transformer_options["temporal_restore"]["frame_index"]``; otherwise ``range(frames)``.
* ``clone_with_options(model, key, value)``: a ``ModelPatcher.clone()`` with
  ``model_options["transformer_options"]["temporal_restore"][key] = value``; the original
  patcher's dicts are never mutated.

Nothing here imports ``comfy`` at module import, so these helpers are cheap to import.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

log = logging.getLogger("temporal_restore")

NAMESPACE = "temporal_restore"


def tr_options(extra_options: Mapping[str, Any] | None) -> dict:
    """The pack's namespace in ``transformer_options`` / attention ``extra_options`` (``{}`` if absent)."""
    if not extra_options:
        return {}
    ns = extra_options.get(NAMESPACE)
    return ns if isinstance(ns, dict) else {}


def chunk_layout(extra_options: Mapping[str, Any] | None, batch: int) -> tuple[int, int]:
    """Split an attention batch of ``batch`` items into ``(n_chunks, frames)``.

    ``n_chunks = len(extra_options["cond_or_uncond"])`` (1 when absent, e.g. a model called outside
    ComfyUI's sampler); ``frames = batch // n_chunks``. Raises ValueError when ``batch`` is not a
    multiple of the number of chunks.
    """
    batch = int(batch)
    if batch <= 0:
        raise ValueError(f"batch: expected a positive number of attention batch items, got {batch}")
    cou = None if extra_options is None else extra_options.get("cond_or_uncond")
    n_chunks = len(cou) if cou else 1
    if batch % n_chunks != 0:
        raise ValueError(
            f"batch: attention batch of {batch} items cannot be split into {n_chunks} "
            f"cond/uncond chunks (cond_or_uncond={list(cou)})")
    return n_chunks, batch // n_chunks


def frame_index(extra_options: Mapping[str, Any] | None, frames: int) -> list[int]:
    """Absolute frame indices of the ``frames`` frames of one chunk.

    Reads ``transformer_options["temporal_restore"]["frame_index"]`` (set by the chunker when the
    batch is a window of a longer clip); falls back to ``list(range(frames))``. Raises ValueError
    when the stored list does not have one entry per frame.
    """
    idx = tr_options(extra_options).get("frame_index")
    if idx is None:
        return list(range(int(frames)))
    idx = [int(i) for i in idx]
    if len(idx) != int(frames):
        raise ValueError(
            f"frame_index: expected {frames} absolute frame indices (one per frame of a chunk), "
            f"got {len(idx)}")
    return idx


def clone_with_options(model, key: str, value: Any):
    """``model.clone()`` with ``transformer_options["temporal_restore"][key] = value``.

    The clone gets fresh ``model_options``, ``transformer_options`` and namespace dicts, so the
    original patcher is untouched whatever ``clone()`` copies. ``value`` itself is stored as given
    (not copied). Setting the same key again replaces it: installing twice never stacks.
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"key: expected a non-empty string, got {key!r}")
    m = model.clone()
    mo = dict(m.model_options)
    to = dict(mo.get("transformer_options", {}))
    ns = dict(to.get(NAMESPACE, {}))
    ns[key] = value
    to[NAMESPACE] = ns
    mo["transformer_options"] = to
    m.model_options = mo
    return m


def get_option(model, key: str, default: Any = None) -> Any:
    """Read ``transformer_options["temporal_restore"][key]`` of a ModelPatcher (``default`` if absent)."""
    to = model.model_options.get("transformer_options", {})
    return to.get(NAMESPACE, {}).get(key, default)
