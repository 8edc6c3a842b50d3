"""The machinery of TR_TiledSampling: a CALC_COND_BATCH wrapper that runs every model evaluation
per spatial tile and blends the tile predictions (MultiDiffusion Eq. 5, ``pipelines/tiling.py``).

Where it hooks: ComfyUI's ``calc_cond_batch`` (``WrappersMP.CALC_COND_BATCH``) receives the latent
``x_in [frames, C, H, W]`` and the processed conds of one prediction (cond and uncond) *before* the
ControlNet runs. The wrapper calls the rest of the chain once per tile with

* ``x_in`` cropped to the tile (all frames: every temporal patch sees the same tile on every frame),
* each cond's spatial model conds (``CONDNoiseShape``: concat latents, masks) and ``mask`` cropped,
* each ControlNet copied with its hint resized to the full frame exactly as ComfyUI would
  (``common_upscale(..., "center")``) and then cropped to the tile, so the tile's ControlNet sees
  the tile's part of the hint (not the whole hint squeezed into the tile),
* ``transformer_options["temporal_restore"]["tile"]`` = the :class:`~..pipelines.tiling.Tile`, so
  flow-based patches crop full-frame flows to tile coordinates (``tile_of``),
* ``transformer_options["optimized_attention_override"]`` = :func:`bounded_attention`, so attention
  backends that materialise the ``[batch*heads, queries, keys]`` scores run on query slices whose
  scores stay under ``ATTENTION_BYTES`` (see there for why),

and blends the per-tile predictions with the normalised weights. Post-CFG functions (latent warp,
SLR's x0 recorder) still see the full frame, as does the sampler. It composes with the chunker
(``WindowedGuider`` calls ``calc_cond_batch`` per window) and the other wrappers (keyed, under
``temporal_restore.tiled_sampling``). A PREPARE_SAMPLING wrapper sizes the model load for one tile.
"""
from __future__ import annotations

import logging

import torch

from ..pipelines import tiling
from ._patching import NAMESPACE, Shared, clone_with_options, install_wrapper, tr_options
from ._zvrd import run_key

log = logging.getLogger("temporal_restore")

KEY = "tiled_sampling"
TILE = "tile"  # transformer_options["temporal_restore"]["tile"]: the Tile being evaluated
OVERRIDE = "optimized_attention_override"  # ComfyUI's per-call attention hook (comfy.ldm.modules.attention.wrap_attn)
# ComfyUI's attention functions that hold a whole [batch*heads, query chunk, keys] score block in memory, with
# a chunk sized from the FREE SYSTEM memory (sub-quad: up to free/4 per block; split: whole when it fits).
# Memory-efficient kernels (pytorch SDPA, xformers, flash, sage) are left alone.
SCORE_BACKENDS = ("attention_sub_quad", "attention_split", "attention_basic")
ATTENTION_BYTES = 128 << 20  # float32 score block per attention call in a tile (softmax doubles it)


def tile_of(options) -> tiling.Tile | None:
    """The tile a model evaluation runs on (attention ``extra_options`` or ``transformer_options``),
    None when untiled."""
    return tr_options(options).get(TILE)


def bounded_attention(func, q, k, v, heads, *args, prev=None, budget: int | None = None, **kwargs):
    """An ``optimized_attention_override``: ``func(q, k, v, heads, ...)`` on slices of the queries whose
    ``[batch*heads, rows, keys]`` float32 scores fit ``budget`` bytes (default ``ATTENTION_BYTES``),
    concatenated (softmax attention is row-wise, so the slices give the same rows). ``prev`` is an override
    found in the options (called per slice instead of ``func``). Masked calls and memory-efficient backends
    (not in ``SCORE_BACKENDS``) run whole.

    Why: on CPU ComfyUI's default attention (sub-quadratic) sizes its query chunk from the free system memory,
    not from the tokens: a 4096-token tile at 16 frames x cond/uncond took a 4096-row chunk of 1 GB scores
    (+ its softmax), about what the whole 720p frame's attention took with a 2048-row chunk, so tiling saved
    little memory (growth 0.56x untiled at 720p). ``q [b, tokens, heads*d]`` or with ``skip_reshape``
    ``[b, heads, tokens, d]``; the output is split back along its token axis likewise."""
    call = func if prev is None else (lambda *a, **kw: prev(func, *a, **kw))
    name = getattr(func, "__name__", "")
    reshaped = bool(kwargs.get("skip_reshape", False))
    rows, n_bh = (q.shape[-2], q.shape[0] * q.shape[1]) if reshaped else (q.shape[1], q.shape[0] * heads)
    keys = k.shape[-2] if reshaped else k.shape[1]
    step = max(1, int(ATTENTION_BYTES if budget is None else budget) // max(1, n_bh * keys * 4))
    if name not in SCORE_BACKENDS or kwargs.get("mask") is not None or args or rows <= step:
        return call(q, k, v, heads, *args, **kwargs)
    qdim = 2 if reshaped else 1
    odim = 2 if kwargs.get("skip_output_reshape", False) else 1
    outs = [call(q.narrow(qdim, i, min(step, rows - i)), k, v, heads, **kwargs) for i in range(0, rows, step)]
    return torch.cat(outs, dim=odim)


def _pixel_ratio(control) -> int:
    r = int(getattr(control, "compression_ratio", 8))
    vae = getattr(control, "vae", None)
    return r * int(vae.spacial_compression_encode()) if vae is not None else r


def _crop_pixels(img, tile: tiling.Tile, ratio: int, algorithm: str):
    """An image-like ``[B, C, H', W']`` resized to the full frame as ComfyUI's ControlNet would, then cut
    to ``tile``; 1x1 tensors (constant masks) are kept."""
    import comfy.utils

    if not torch.is_tensor(img) or img.ndim < 4 or tuple(img.shape[-2:]) == (1, 1):
        return img
    full = comfy.utils.common_upscale(img, tile.width * ratio, tile.height * ratio, algorithm, "center")
    return full[..., tile.y * ratio:(tile.y + tile.h) * ratio, tile.x * ratio:(tile.x + tile.w) * ratio]


def crop_control(control, tile: tiling.Tile, memo: dict):
    """A copy of ``control`` (chained ControlNets included, each once per ``memo``) whose hint is the
    tile's part of the full-frame hint; run-time state set by ``pre_run`` is carried over."""
    if control is None:
        return None
    if id(control) in memo:
        return memo[id(control)]
    c = control.copy()
    ratio, algo = _pixel_ratio(control), getattr(control, "upscale_algorithm", "nearest-exact")
    c.cond_hint_original = _crop_pixels(control.cond_hint_original, tile, ratio, algo)
    if getattr(control, "_tr_full_hint", None) is not None:  # the pack's frame-aligned ControlNet (task_prompt)
        c._tr_full_hint = _crop_pixels(control._tr_full_hint, tile, ratio, algo)
    c.extra_concat_orig = [_crop_pixels(e, tile, ratio, algo) for e in getattr(control, "extra_concat_orig", [])]
    for attr in ("timestep_range", "model_sampling_current"):  # set by pre_run, not copied by copy()
        if hasattr(control, attr):
            setattr(c, attr, getattr(control, attr))
    if getattr(control, "previous_controlnet", None) is not None:
        c.previous_controlnet = crop_control(control.previous_controlnet, tile, memo)
    memo[id(control)] = c
    return c


def crop_cond(cond: dict, tile: tiling.Tile, size: tuple[int, int], controls) -> dict:
    """One processed cond dict restricted to ``tile`` of a ``size = (H, W)`` latent; ``controls(control)``
    gives the tile's copy of a ControlNet (:func:`crop_control`, cached by the caller)."""
    import comfy.conds

    if "area" in cond:
        raise ValueError("conditioning: area conditioning (ConditioningSetArea) cannot be combined with "
                         "TR_TiledSampling; use a mask (ConditioningSetMask) instead")
    out = dict(cond)
    mc = {}
    for k, v in cond.get("model_conds", {}).items():
        if isinstance(v, comfy.conds.CONDNoiseShape) and tuple(v.cond.shape[-2:]) == size:
            v = v._copy_with(tile.crop(v.cond))
        mc[k] = v
    out["model_conds"] = mc
    mask = cond.get("mask")
    if torch.is_tensor(mask) and tuple(mask.shape[-2:]) == size:
        out["mask"] = tile.crop(mask)
    if cond.get("control") is not None:
        out["control"] = controls(cond["control"])
    return out


class TiledSampling(Shared):
    """Settings (latent units) and the wrappers. ``tile`` side, ``overlap``, ``ramp`` kind.

    Cropped ControlNet copies are cached per run, tile and ControlNet (their resized hint is reused every
    step), at most ``CACHE`` of them: a chunked long clip has a ControlNet per window, and keeping every
    window's copies would hold the whole clip's hints once more."""

    CACHE = 64

    def __init__(self, tile: int, overlap: int, ramp: str = "cosine"):
        if int(tile) < 1:
            raise ValueError(f"tile: expected at least one latent cell, got {tile}")
        if not 0 <= int(overlap) < int(tile):
            raise ValueError(f"overlap: expected 0 <= overlap < tile ({tile}) latent cells, got {overlap}")
        if ramp not in tiling.RAMPS:
            raise ValueError(f"ramp: expected one of {tiling.RAMPS}, got {ramp!r}")
        self.tile, self.overlap, self.ramp = int(tile), int(overlap), ramp
        self._run, self._controls = None, {}  # (tile, id(control)) -> (control, its cropped copy)

    def _cropped_control(self, run, tile, control):
        if run != self._run:
            self.cleanup()
            self._run = run
        key = (tile, id(control))
        hit = self._controls.get(key)
        if hit is None or hit[0] is not control:
            if len(self._controls) >= self.CACHE:
                self._controls.pop(next(iter(self._controls)))[1].cleanup()
            hit = self._controls[key] = (control, crop_control(control, tile, {}))
        return hit[1]

    def cleanup(self):
        for _, copy in self._controls.values():
            copy.cleanup()
        self._controls = {}

    def calc_cond_batch(self, executor, model, conds, x_in, timestep, model_options, *args, **kwargs):
        size = tuple(x_in.shape[-2:])
        to = model_options.get("transformer_options", {})
        key = (run_key(to), size)
        prev = to.get(OVERRIDE)

        def attention(func, *a, **kw):
            return bounded_attention(func, *a, prev=prev, **kw)

        def per_tile(crop, tile):
            controls = lambda control: self._cropped_control(key, tile, control)  # noqa: E731
            tconds = [None if c is None else [crop_cond(d, tile, size, controls) for d in c] for c in conds]
            mo = dict(model_options)
            mo["transformer_options"] = {**to, NAMESPACE: {**tr_options(to), TILE: tile}, OVERRIDE: attention}
            return executor(model, tconds, crop, timestep, mo, *args, **kwargs)

        return tiling.tiled_apply(per_tile, x_in, self.tile, self.overlap, self.ramp)

    def prepare_sampling(self, executor, model, noise_shape, *args, **kwargs):
        """Size the model load for one tile, not the whole frame (like the chunker does for a window)."""
        shape = list(noise_shape)
        if len(shape) >= 4:
            shape[-2], shape[-1] = min(shape[-2], self.tile), min(shape[-1], self.tile)
        return executor(model, shape, *args, **kwargs)


def latent_tile_settings(tile_size, overlap, factor: int = 8, minimum: int = 64, multiple: int = 8,
                         names: tuple[str, str] = ("tile_size", "overlap"), zero_untiled: bool = False) -> tuple[int, int]:
    """The node's pixel inputs as latent cells (``/ factor``, image pixels per cell of the grid being tiled:
    nodes/_checks.LATENT_PIXELS for the model's grid, the VAE's ``downscale_ratio`` for a decoder), checked:
    ``tile_size`` a multiple of ``multiple`` pixels of at least ``minimum``, ``overlap`` a multiple of
    ``multiple`` below ``tile_size``; errors name the inputs by ``names``. ``zero_untiled``: ``tile_size`` 0
    means untiled and gives ``(0, 0)`` (the overlap still checked, so a bad value is not kept silently)."""
    untiled = zero_untiled and tile_size == 0
    for name, v, lo in ((names[0], tile_size, minimum), (names[1], overlap, 0))[1 if untiled else 0:]:
        if int(v) != v or int(v) < lo or int(v) % multiple:
            raise ValueError(f"{name}: expected a multiple of {multiple} pixels of at least {lo} (the latent grid is "
                             f"1/{factor} of the image), got {v!r}")
    if untiled:
        return 0, 0
    if int(overlap) >= int(tile_size):
        raise ValueError(f"{names[1]}: expected fewer pixels than {names[0]} ({tile_size}), got {overlap}")
    return int(tile_size) // factor, int(overlap) // factor


def install_tiled_sampling(model, tile: int, overlap: int, ramp: str = "cosine"):
    """Clone of ``model`` whose every model evaluation runs per tile (latent units). Installing again
    replaces the settings (keyed wrappers)."""
    import comfy.patcher_extension as pe

    holder = TiledSampling(tile, overlap, ramp)
    m = clone_with_options(model, KEY, holder)

    # plain functions (install_wrapper marks what it installs; a bound method takes no attributes)
    def calc_cond_batch(executor, *args, **kwargs):
        return holder.calc_cond_batch(executor, *args, **kwargs)

    def prepare_sampling(executor, *args, **kwargs):
        return holder.prepare_sampling(executor, *args, **kwargs)

    install_wrapper(m.model_options, pe.WrappersMP.CALC_COND_BATCH, KEY, calc_cond_batch)
    install_wrapper(m.model_options, pe.WrappersMP.PREPARE_SAMPLING, KEY, prepare_sampling)
    log.debug("tiled sampling: tile %d, overlap %d latent cells (%s ramps)", tile, overlap, ramp)
    return m
