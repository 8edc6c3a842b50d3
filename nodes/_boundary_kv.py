"""Boundary keys/values between the windows of a chunked run (TR_ILTChunker ``boundary_kv``).

Window ``i`` publishes the attention input (pre-projection hidden states, i.e. what becomes K/V) of
its last exclusive frames just before window ``i + 1`` starts, and window ``i + 1`` appends them to the
keys/values of all its frames at the same sigma, per block and per cond/uncond chunk (never mixed).
Fused mode runs the windows one after the other at each sigma, so only the current sigma is kept;
sequential mode keeps the previous window's boundary frames for every sigma of the schedule (memory:
steps x blocks x frames of hidden states).
"""
from __future__ import annotations

import torch

from ._patching import chunk_layout, frame_index, install_attn1_patch, tr_options

KEY = "ilt_kv"  # transformer_options["temporal_restore"]["ilt_kv"]: this window's instructions


class KVStore:
    """Boundary K/V of one window (an object, not a dict: ComfyUI copies every nested dict of
    ``transformer_options`` before each model call, which would cut the link). ``sigma`` is the
    sigma of the data in fused mode (cleared when it changes)."""

    def __init__(self):
        self.sigma = None
        self.data: dict = {}


def window_specs(plan, frames_kv: int, store, fused: bool = True) -> list[dict]:
    """Per window of ``plan`` (``pipelines.ilt.WindowPlan``): the absolute frames to ``publish`` for the
    next window and to ``read`` from the previous one, and the stores to write and read."""
    specs = []
    for i, w in enumerate(plan.windows):
        read, publish = [], []
        if i > 0:
            m = min(frames_kv, w.start - plan.windows[i - 1].start)
            read = list(range(w.start - m, w.start))
        if i + 1 < len(plan):
            nxt = plan.windows[i + 1].start
            m = min(frames_kv, nxt - w.start)
            publish = list(range(nxt - m, nxt))
        specs.append({"read_store": store, "write_store": store, "publish": publish, "read": read, "fused": fused})
    return specs


def install_boundary_kv(model):
    """A clone of ``model`` with the :class:`BoundaryKV` attn1 patch (inactive without instructions)."""
    return install_attn1_patch(model.clone(), KEY, BoundaryKV())


class BoundaryKV:
    """attn1_patch ``(n, context, value, extra_options) -> (n, context, value)`` carrying the boundary
    frames' self-attention keys/values into the next window.

    Per-window instructions come from ``transformer_options["temporal_restore"]["ilt_kv"]``
    (``{"read_store", "write_store", "publish", "read", "fused"}``); without them the patch does
    nothing. Replacement attention patches placed after this one see keys/values with more tokens
    than queries.
    """

    def __call__(self, n, context, value, extra_options, *args, **kwargs):
        spec = tr_options(extra_options).get(KEY)
        if not spec or (not spec["publish"] and not spec["read"]):
            return n, context, value
        n_chunks, frames = chunk_layout(extra_options, n.shape[0])
        fidx = frame_index(extra_options, frames)
        kinds = list(extra_options.get("cond_or_uncond") or [0])
        sig = extra_options.get("sigmas")
        sig = round(float(sig.flatten()[0]), 5) if torch.is_tensor(sig) else None
        wstore, rstore = spec["write_store"], spec["read_store"]
        if spec["fused"] and wstore.sigma != sig:
            wstore.data.clear()
            wstore.sigma = sig
        block = (tuple(extra_options.get("block") or ()), extra_options.get("block_index", 0))
        ctx = n if context is None else context
        val = ctx if value is None else value
        pos = {f: j for j, f in enumerate(fidx)}
        for f in spec["publish"]:
            if f in pos:
                for c in range(n_chunks):
                    i = c * frames + pos[f]
                    wstore.data[(sig, block, kinds[c], f)] = (ctx[i].detach().clone(), val[i].detach().clone())
        if not spec["read"]:
            return n, context, value
        new_ctx, new_val = [], []
        for c in range(n_chunks):
            got = [rstore.data.get((sig, block, kinds[c], f)) for f in spec["read"]]
            got = [g for g in got if g is not None and g[0].shape[-1] == ctx.shape[-1]]
            sl = slice(c * frames, (c + 1) * frames)
            if not got:
                new_ctx.append(ctx[sl])
                new_val.append(val[sl])
                continue
            ek = torch.cat([g[0] for g in got], 0).to(ctx)[None].expand(frames, -1, -1)
            ev = torch.cat([g[1] for g in got], 0).to(val)[None].expand(frames, -1, -1)
            new_ctx.append(torch.cat([ctx[sl], ek], 1))
            new_val.append(torch.cat([val[sl], ev], 1))
        if len({t.shape[1] for t in new_ctx}) != 1:  # a chunk missed its boundary: keep all as they were
            return n, context, value
        return n, torch.cat(new_ctx, 0), torch.cat(new_val, 0)
