"""Everything the pack's nodes need to patch a ComfyUI ModelPatcher: the ONE place that installs.

Contracts (other features build on these, keep them stable; CONTRIBUTING.md "Patching contract"):

* ``chunk_layout(extra_options, batch) -> (n_chunks, frames)``: an attention batch is
  ``[n_chunks * frames, tokens, dim]``; with CFG ComfyUI concatenates the cond and the uncond
  batch, one *chunk* each, named by ``extra_options["cond_or_uncond"]``; frames are contiguous
  within a chunk. Cross-frame operations reshape to ``[n_chunks, frames, ...]`` and never mix
  chunks.
* ``frame_index(options, frames) -> list[int]``: absolute frame indices of the frames of ONE chunk.
  A chunker that samples a window of a longer clip puts them in
  ``transformer_options["temporal_restore"]["frame_index"]``; otherwise ``range(frames)``. A list
  of the wrong length is an error (``resolve_frame_index``), for every patch alike.
* ``clone_with_options(model, key, value)``: a ``ModelPatcher.clone()`` with
  ``model_options["transformer_options"]["temporal_restore"][key] = value``; the original
  patcher's dicts are never mutated.
* Installing (on a clone): ``install_post_cfg``, ``install_attn1_patch``,
  ``install_attn1_output_patch``, ``install_attn1_replace``, ``install_wrapper``. Each marks what it
  installs with the feature's key (``fn._temporal_restore = key``) and replaces an earlier
  installation of the same key in place, so installing twice never stacks.
* ``Shared``: base of the objects put into ``model_options`` (shared by ``clone()``, not copied).
* ``fallback_attention(prev, extra_options)``: the attention a replace patch calls for the attention
  itself: a foreign replace patch found on the block, else ComfyUI's ``optimized_attention`` with the
  block's ``attn_precision`` and ``transformer_options`` (when the running ComfyUI accepts them).

Nothing here imports ``comfy`` at module import, so these helpers are cheap to import.
"""
from __future__ import annotations

import functools
import inspect
import logging
from typing import Any, Callable, Mapping

log = logging.getLogger("temporal_restore")

NAMESPACE = "temporal_restore"
MARK = "_temporal_restore"  # attribute naming the feature key of everything the pack installs


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


# ------------------------------------------------------------------------------------------ frame indices
def resolve_frame_index(index, frames: int, name: str = "frame_index") -> list[int]:
    """The one strict frame-index resolver: ``index`` (absolute frame indices, or None) checked against
    the ``frames`` frames it must describe. ``None`` -> ``list(range(frames))``; a list of another
    length raises ValueError naming ``name`` (never a silent fallback to the wrong frames)."""
    frames = int(frames)
    if index is None:
        return list(range(frames))
    idx = [int(i) for i in index]
    if len(idx) != frames:
        raise ValueError(
            f"{name}: expected {frames} absolute frame indices (one per frame of a chunk), got {len(idx)}")
    return idx


def frame_index(extra_options: Mapping[str, Any] | None, frames: int) -> list[int]:
    """Absolute frame indices of the ``frames`` frames of one chunk.

    Reads ``["temporal_restore"]["frame_index"]`` of attention ``extra_options`` or of a
    ``transformer_options`` dict (set by the chunker when the batch is a window of a longer clip);
    ``list(range(frames))`` when absent; ValueError when it has not one entry per frame."""
    return resolve_frame_index(tr_options(extra_options).get("frame_index"), frames)


def model_frame_index(model_options: Mapping[str, Any] | None, frames: int) -> list[int]:
    """:func:`frame_index` of a sampler's ``model_options`` (``extra_args["model_options"]``, a
    post-CFG ``args["model_options"]`` or a ModelPatcher's ``model_options``)."""
    return frame_index((model_options or {}).get("transformer_options"), frames)


# ------------------------------------------------------------------------------------------ options
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


# ------------------------------------------------------------------------------------------ installing
class Shared:
    """Base of hook and settings objects handed to a ModelPatcher: ``clone()`` deep-copies
    ``model_options``, and these are shared (immutable settings, or per-run state every clone must see),
    never copied."""

    def __deepcopy__(self, memo):
        return self


def mark(fn, key: str):
    """Tag ``fn`` as the pack's installation of feature ``key`` (returns ``fn``)."""
    setattr(fn, MARK, key)
    return fn


def is_ours(fn, key: str) -> bool:
    return getattr(fn, MARK, None) == key


def _replace_marked(items: list, key: str, fn) -> list | None:
    """A new list with the first item marked ``key`` replaced by ``fn`` and later ones dropped; None
    when no item carries ``key``."""
    hits = [i for i, f in enumerate(items) if is_ours(f, key)]
    if not hits:
        return None
    return [fn if i == hits[0] else f for i, f in enumerate(items) if i == hits[0] or not is_ours(f, key)]


def install_post_cfg(model, key: str, fn):
    """``model`` (already a clone) gets ``fn`` as post-CFG function (``set_model_sampler_post_cfg_function``);
    one installed before under ``key`` is replaced in its place. Returns ``model``."""
    mark(fn, key)
    mo = model.model_options
    replaced = _replace_marked(mo.get("sampler_post_cfg_function", []), key, fn)
    if replaced is None:
        model.set_model_sampler_post_cfg_function(fn)
    else:
        mo["sampler_post_cfg_function"] = replaced
    return model


def _install_attn_patch(model, key: str, fn, name: str):
    mark(fn, key)
    to = model.model_options.setdefault("transformer_options", {})
    replaced = _replace_marked(to.get("patches", {}).get(name, []), key, fn)
    if replaced is None:
        model.set_model_patch(fn, name)
    else:
        to["patches"] = {**to["patches"], name: replaced}
    return model


def install_attn1_patch(model, key: str, fn):
    """``set_model_attn1_patch(fn)`` (before self-attention), replacing one installed under ``key``."""
    return _install_attn_patch(model, key, fn, "attn1_patch")


def install_attn1_output_patch(model, key: str, fn):
    """``set_model_attn1_output_patch(fn)`` (after self-attention), replacing one installed under ``key``."""
    return _install_attn_patch(model, key, fn, "attn1_output_patch")


def install_attn1_replace(model, key: str, make: Callable, block_name: str, number: int,
                          transformer_index: int | None = None):
    """``set_model_attn1_replace(make(prev), block_name, number, transformer_index)``.

    ``prev`` is the replace patch already on that block with the pack's own ``key`` patches unwrapped
    (each keeps the one it replaced as ``.prev``): a foreign patch is kept and called by the new one
    (:func:`fallback_attention`), this feature's earlier installation is dropped (never stacks)."""
    block = (block_name, number) if transformer_index is None else (block_name, number, transformer_index)
    replace = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn1", {})
    prev = replace.get(block)
    while is_ours(prev, key):
        prev = prev.prev
    patch = mark(make(prev), key)
    model.set_model_attn1_replace(patch, block_name, number, transformer_index)
    return patch


def install_wrapper(model_options: dict, wrapper_type: str, key: str, fn) -> dict:
    """ComfyUI's keyed wrapper (``comfy.patcher_extension.add_wrapper_with_key``) under
    ``"temporal_restore.<key>"`` in ``model_options``; an earlier one under that key is removed first.
    ``model_options`` must be the caller's own copy (a clone's, or ``create_model_options_clone``): it is
    changed in place. ``fn(executor, *args, **kwargs)`` must call ``executor`` and forward everything
    ComfyUI passes."""
    import comfy.patcher_extension as pe

    full_key = f"{NAMESPACE}.{key}"
    wrappers = model_options.get("transformer_options", {}).get("wrappers", {}).get(wrapper_type, {})
    wrappers.pop(full_key, None)
    pe.add_wrapper_with_key(wrapper_type, full_key, mark(fn, key), model_options, is_model_options=True)
    return model_options


# ------------------------------------------------------------------------------------------ attention
def accepts(fn, name: str) -> bool:
    """Whether ``fn`` takes a keyword argument ``name`` (named or through ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


@functools.lru_cache(maxsize=8)
def _takes_transformer_options(fn) -> bool:
    return accepts(fn, "transformer_options")


def fallback_attention(prev, extra_options: Mapping[str, Any]) -> Callable:
    """``attention(q, k, v, heads) -> out`` for a replace patch: the foreign patch ``prev`` found on the
    block (called as ``prev(q, k, v, extra_options)``), else ComfyUI's ``optimized_attention`` with the
    block's ``attn_precision`` and, when this ComfyUI accepts it, ``transformer_options`` (so attention
    overrides of other packs still apply)."""
    if prev is not None:
        def attention(q, k, v, heads):
            return prev(q, k, v, extra_options)
        return attention
    from comfy.ldm.modules.attention import optimized_attention

    kwargs = {"attn_precision": extra_options.get("attn_precision")}
    if _takes_transformer_options(optimized_attention):
        kwargs["transformer_options"] = extra_options

    def attention(q, k, v, heads):
        return optimized_attention(q, k, v, heads, **kwargs)
    return attention
