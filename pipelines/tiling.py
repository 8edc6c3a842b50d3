"""Spatial tiling shared by every frame of a clip, with smooth blending of tile predictions.

The technique is MultiDiffusion (Bar-Tal, Yariv, Lipman, Dekel, ICML 2023), Eq. 3-5: at each
denoising step the model runs on overlapping crops ``F_i(J_t)`` of the latent and the step's result
is the per-pixel weighted average of the tile predictions,

    Psi(J_t) = sum_i F_i^-1(W_i) * F_i^-1(Phi(F_i(J_t))) / sum_i F_i^-1(W_i)        (Eq. 5)

(the closed-form minimiser of Eq. 3-4). Here ``W_i`` are smooth ramps in the overlaps, normalised
so the weights of all tiles sum to one at every pixel. For video the grid is ONE grid for all
frames and a tile is run on all frames at once (``[frames, C, th, tw]``), so cross-frame operations
inside the model (temporal attention, token merging) see the same region on every frame and tile
borders sit at the same place in every frame (no temporal flicker at seams).

Pure torch; never imports ``comfy``. Sizes are in latent cells.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch
from torch import Tensor

from .flow import FlowField

RAMPS = ("cosine", "linear")

TensorOrList = Union[Tensor, Sequence[Tensor]]


@dataclass(frozen=True)
class Tile:
    """A crop ``[y:y+h, x:x+w]`` of a ``height x width`` latent (the full frame's size)."""
    y: int
    x: int
    h: int
    w: int
    height: int
    width: int

    @property
    def rows(self) -> slice:
        return slice(self.y, self.y + self.h)

    @property
    def cols(self) -> slice:
        return slice(self.x, self.x + self.w)

    def crop(self, t: Tensor) -> Tensor:
        """``t[..., y:y+h, x:x+w]`` (any leading dims)."""
        return t[..., self.rows, self.cols]


def _check_size(value, name: str, minimum: int) -> int:
    v = int(value)
    if v != value or v < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return v


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` along an axis of length ``size``, stride
    ``tile - overlap``; the last tile is snapped to the border (it may overlap its neighbour more).
    ``tile >= size`` gives one tile ``[0]`` (the caller clips the tile to ``size``)."""
    size = _check_size(size, "size", 1)
    tile = _check_size(tile, "tile", 1)
    overlap = _check_size(overlap, "overlap", 0)
    if overlap >= tile:
        raise ValueError(f"overlap: expected fewer cells than the tile ({tile}), got {overlap}")
    if tile >= size:
        return [0]
    stride = tile - overlap
    n = math.ceil((size - tile) / stride) + 1
    return [min(i * stride, size - tile) for i in range(n)]


def tile_grid(height: int, width: int, tile: int | tuple[int, int], overlap: int) -> list[Tile]:
    """Row-major tiles covering a ``height x width`` latent; ``tile`` is a side or ``(th, tw)``,
    clipped to the frame (one tile covering the frame when it is at least the frame's size)."""
    height, width = _check_size(height, "height", 1), _check_size(width, "width", 1)
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    th, tw = _check_size(th, "tile", 1), _check_size(tw, "tile", 1)
    overlap = _check_size(overlap, "overlap", 0)
    th, tw = min(th, height), min(tw, width)
    # an axis the tile spans whole needs no overlap; elsewhere tile_starts refuses overlap >= tile
    return [Tile(y, x, th, tw, height, width)
            for y in tile_starts(height, th, overlap if th < height else 0)
            for x in tile_starts(width, tw, overlap if tw < width else 0)]


def ramp(n: int, kind: str = "cosine", device=None, dtype=torch.float32) -> Tensor:
    """``[n]`` rising weights in (0, 1): ``linear`` (i + 0.5) / n, ``cosine`` 0.5 - 0.5 cos(pi (i + 0.5) / n).
    Strictly positive, so every pixel of a tile keeps some weight and the normalising sum never
    vanishes."""
    if kind not in RAMPS:
        raise ValueError(f"ramp: expected one of {RAMPS}, got {kind!r}")
    t = (torch.arange(n, device=device, dtype=torch.float64) + 0.5) / max(n, 1)
    r = t if kind == "linear" else 0.5 - 0.5 * torch.cos(math.pi * t)
    return r.to(dtype)


def _axis_weight(start: int, length: int, size: int, overlap: int, kind: str, device, dtype) -> Tensor:
    """1-D weight ``[length]`` of a tile: 1 inside, a ramp over ``overlap`` cells on each side that
    has a neighbour (never at the frame border, so border pixels are not down-weighted)."""
    w = torch.ones(length, device=device, dtype=torch.float64)
    n = min(overlap, length // 2)
    if n > 0:
        r = ramp(n, kind, device, torch.float64)
        if start > 0:
            w[:n] = r
        if start + length < size:
            w[length - n:] = torch.minimum(w[length - n:], r.flip(0))
    return w.to(dtype)


def blend_weights(tiles: Sequence[Tile], overlap: int, kind: str = "cosine", device=None,
                  dtype=torch.float32) -> list[Tensor]:
    """Per tile ``[h, w]`` weights ``W_i`` (Eq. 5 numerator weights already divided by the
    denominator): smooth ramps in the overlaps, normalised so that the weights of all tiles sum to
    one at every pixel of the frame. One tile covering the frame gets weight exactly 1."""
    if not tiles:
        raise ValueError("tiles: expected at least one tile")
    H, W = tiles[0].height, tiles[0].width
    raw = [torch.outer(_axis_weight(t.y, t.h, H, overlap, kind, device, torch.float64),
                       _axis_weight(t.x, t.w, W, overlap, kind, device, torch.float64)) for t in tiles]
    total = torch.zeros(H, W, device=device, dtype=torch.float64)
    for t, r in zip(tiles, raw):
        total[t.rows, t.cols] += r
    if bool((total <= 0).any()):
        raise ValueError("tiles: expected tiles covering every cell of the frame")
    return [(r / t.crop(total)).to(dtype) for t, r in zip(tiles, raw)]


def tiled_apply(fn: Callable[[Tensor, Tile], TensorOrList], x: Tensor, tile: int | tuple[int, int],
                overlap: int, kind: str = "cosine") -> TensorOrList:
    """Run ``fn`` per tile on all frames at once and blend (MultiDiffusion Eq. 5).

    ``x [frames, C, H, W]``; ``fn(crop [frames, C, th, tw], tile) -> [frames, C', th, tw]`` or a
    list of such tensors (e.g. the cond and uncond predictions); returns the blended
    ``[frames, C', H, W]`` (or list), on ``x``'s device in the output's dtype. With one tile covering
    the frame this returns ``fn(x, tile)`` unchanged in value (weights exactly 1)."""
    if not isinstance(x, Tensor) or x.ndim < 3:
        raise ValueError(f"x: expected a tensor [frames, C, H, W], got {getattr(x, 'shape', type(x).__name__)}")
    H, W = x.shape[-2:]
    tiles = tile_grid(H, W, tile, overlap)
    weights = None
    out: list[Tensor] | None = None
    single = False
    for i, t in enumerate(tiles):
        res = fn(t.crop(x), t)
        single = isinstance(res, Tensor)
        parts = [res] if single else list(res)
        if weights is None:
            weights = blend_weights(tiles, overlap, kind, device=x.device, dtype=parts[0].dtype)
            out = [p.new_zeros(p.shape[:-2] + (H, W)) for p in parts]
        for o, p in zip(out, parts):
            if tuple(p.shape[-2:]) != (t.h, t.w):
                raise ValueError(f"fn: expected a tile result of size {t.h}x{t.w}, got {tuple(p.shape)}")
            o[..., t.rows, t.cols] += weights[i] * p
    return out[0] if single else out


def border_mask(tiles: Sequence[Tile], band: int, device=None) -> Tensor:
    """``[H, W]`` bool: cells within ``band`` cells of an inner tile edge (a seam), for measuring
    seams against the interior. Frame borders are not seams."""
    H, W = tiles[0].height, tiles[0].width
    m = torch.zeros(H, W, dtype=torch.bool, device=device)
    for t in tiles:
        for edge, inner in ((t.y, t.y > 0), (t.y + t.h, t.y + t.h < H)):
            if inner:
                m[max(edge - band, 0):edge + band, t.cols] = True
        for edge, inner in ((t.x, t.x > 0), (t.x + t.w, t.x + t.w < W)):
            if inner:
                m[t.rows, max(edge - band, 0):edge + band] = True
    return m


def crop_flow(flow: FlowField, tile: Tile) -> FlowField:
    """The part of ``flow`` over ``tile``, in the tile's own coordinates (vectors unchanged: a
    displacement is the same in full-frame and tile cells). ``flow`` is first resampled to the frame's
    latent grid (``tile.height x tile.width``). Flows are measured on full frames, so motion across a
    tile border is the true motion; a vector pointing out of the tile leaves it as it leaves the frame."""
    full = flow.resized(tile.height, tile.width)
    fields = dict(full._fields())
    for k, v in full._tensors().items():
        fields[k] = None if v is None else tile.crop(v)
    fields["height"], fields["width"] = tile.h, tile.w
    return FlowField(**fields)


def flow_in_tile(flow: FlowField, tile: Tile | None, h: int, w: int) -> FlowField:
    """``flow`` on an ``h x w`` grid (e.g. a UNet level's tokens) of ``tile``, or of the whole frame
    when ``tile`` is None."""
    return (flow if tile is None else crop_flow(flow, tile)).resized(h, w)


def tile_padding(tile: Tile | None, bottom: int, right: int) -> tuple[int, int]:
    """Padding cells at the bottom / right of the full frame that fall inside ``tile`` (the tile's
    own bottom / right padding); unchanged when ``tile`` is None."""
    if tile is None:
        return int(bottom), int(right)
    b = min(max(tile.y + tile.h - (tile.height - int(bottom)), 0), tile.h)
    r = min(max(tile.x + tile.w - (tile.width - int(right)), 0), tile.w)
    return b, r
