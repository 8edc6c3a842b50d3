"""Temporal-Enhanced 3D VAE decoder (DiffVSR §3.3) built by inflating a 2D image VAE decoder.

Inflation (TE-3DVAE): after every 2D residual block (TAESD ``Block`` or SD-VAE ``ResnetBlock``) a
temporal residual block is inserted (3D residual block: GroupNorm -> SiLU -> Conv3d(k=(3,1,1)) twice,
added to the input), and after every spatial attention (SD-VAE ``AttnBlock``) a temporal attention
layer (per pixel, across the frames of a chunk, with sinusoidal frame positions). Decoders without
spatial attention (TAESD) get one temporal attention after the lowest-resolution residual stage.
The last layer of every temporal module is zero-initialised, so the inflated decoder reproduces the
2D decoder exactly until the temporal layers are trained (``train_step``: L1 + temporal consistency).

Training-free alternative (``share_kv_radius``): the decoder's mid-block spatial attention of frame
``t`` attends to the keys/values of frames ``t-r .. t+r`` of the chunk (r = 0 is the 2D decoder).

Shapes: latents ``z: [T, C, h, w]`` (frames of ONE clip as the batch), images ``[T, 3, H, W]`` in the
decoder's own output range. Chunked decoding (:func:`decode_chunked`) runs overlapping temporal
chunks (the ILT windows of :mod:`.ilt`) and blends the overlaps with the Eq. 4 weights, so memory
is bounded by one chunk. Nothing here imports ComfyUI: blocks are recognised by class name and
attributes (``Block``: conv/skip/fuse; ``ResnetBlock``; ``AttnBlock``: norm/q/k/v/proj_out).
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import check_latents
from . import ilt, tiling

__all__ = ["TemporalResBlock", "TemporalAttention", "inflate_decoder", "TE3DDecoder", "decode_chunked",
           "decode_tiled", "pixel_tiles",
           "temporal_state_dict", "load_temporal_state_dict", "train_step", "temporal_consistency_loss"]

RES_BLOCKS = ("Block", "ResnetBlock")
ATTN_BLOCKS = ("AttnBlock",)


def _groups(c: int) -> int:
    for g in (32, 16, 8, 4, 2, 1):
        if c % g == 0:
            return g
    return 1


class _Frames:
    """Number of frames of the current chunk, shared by all temporal layers of one decoder."""

    def __init__(self):
        self.n = 1


class TemporalResBlock(nn.Module):
    """3D residual block over time: ``x + conv3d(silu(norm(conv3d(silu(norm(x))))))``.

    ``x: [T, C, H, W]`` viewed as ``[1, C, T, H, W]``; kernel ``(k, 1, 1)``, replicate padding in time.
    The second conv is zero-initialised (identity at init)."""

    def __init__(self, channels: int, frames: _Frames, kernel: int = 3):
        super().__init__()
        self.frames = frames
        self.kernel = kernel
        self.norm1 = nn.GroupNorm(_groups(channels), channels)
        self.conv1 = nn.Conv3d(channels, channels, (kernel, 1, 1))
        self.norm2 = nn.GroupNorm(_groups(channels), channels)
        self.conv2 = nn.Conv3d(channels, channels, (kernel, 1, 1))
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def is_identity(self) -> bool:
        """True while the last conv is exactly zero (untrained): the block returns its input."""
        return not (self.conv2.weight.any() or self.conv2.bias.any())

    def _conv(self, conv, h):
        p = self.kernel // 2
        if p:
            h = F.pad(h, (0, 0, 0, 0, p, p), mode="replicate")
        return conv(h)

    def forward(self, x):
        t = self.frames.n
        n, c, hh, ww = x.shape
        if n % t:
            raise ValueError(f"frames: batch {n} is not a multiple of the chunk length {t}")
        h = x.reshape(n // t, t, c, hh, ww).transpose(1, 2)  # [B, C, T, H, W]
        r = h
        r = self._conv(self.conv1, F.silu(self.norm1(r)))
        r = self._conv(self.conv2, F.silu(self.norm2(r)))
        return x + r.transpose(1, 2).reshape(n, c, hh, ww)


def _sinusoid(t: int, dim: int, device, dtype) -> torch.Tensor:
    pos = torch.arange(t, device=device, dtype=torch.float32)[:, None]
    i = torch.arange(dim // 2, device=device, dtype=torch.float32)[None]
    ang = pos / (10000 ** (2 * i / max(dim, 2)))
    pe = torch.zeros(t, dim, device=device)
    pe[:, 0:2 * (dim // 2):2] = torch.sin(ang)
    pe[:, 1:2 * (dim // 2):2] = torch.cos(ang)
    return pe.to(dtype)


class TemporalAttention(nn.Module):
    """Self-attention across the frames of a chunk, independently per pixel; output projection
    zero-initialised. ``x: [T, C, H, W] -> [T, C, H, W]``."""

    def __init__(self, channels: int, frames: _Frames, heads: int = 1):
        super().__init__()
        self.frames = frames
        self.heads = heads if channels % heads == 0 else 1
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def is_identity(self) -> bool:
        """True while the output projection is exactly zero (untrained): the layer returns its input."""
        return not (self.proj.weight.any() or self.proj.bias.any())

    def forward(self, x):
        t = self.frames.n
        n, c, hh, ww = x.shape
        b = n // t
        h = self.norm(x).reshape(b, t, c, hh * ww).permute(0, 3, 1, 2).reshape(b * hh * ww, t, c)
        h = h + _sinusoid(t, c, h.device, h.dtype)[None]
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        d = c // self.heads
        q, k, v = (u.reshape(-1, t, self.heads, d).transpose(1, 2) for u in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(-1, t, c)
        o = self.proj(o).reshape(b, hh * ww, t, c).permute(0, 2, 3, 1).reshape(n, c, hh, ww)
        return x + o


class _WithTemporal(nn.Module):
    """``temporal(inner(x, *args))``; keeps the 2D block's call signature.

    Identity skip: outside training, a temporal layer whose last layer is exactly zero is not run at all,
    so an untrained TE-3D decoder costs what the 2D decoder costs and returns bit-identical images."""

    def __init__(self, inner: nn.Module, temporal: nn.Module):
        super().__init__()
        self.inner = inner
        self.temporal = temporal

    def forward(self, x, *args, **kwargs):
        y = self.inner(x, *args, **kwargs)
        if not self.training and self.temporal.is_identity():
            return y
        return self.temporal(y)


class _SharedKVAttn(nn.Module):
    """SD-VAE ``AttnBlock`` whose keys/values for frame t come from frames ``t-r .. t+r``."""

    def __init__(self, attn: nn.Module, frames: _Frames, radius: int):
        super().__init__()
        self.attn = attn
        self.frames = frames
        self.radius = radius

    def forward(self, x, *args, **kwargs):
        a, t = self.attn, self.frames.n
        n, c, hh, ww = x.shape
        h = a.norm(x)
        q, k, v = (m(h).reshape(n // t, t, c, hh * ww).transpose(2, 3) for m in (a.q, a.k, a.v))  # [B,T,HW,C]
        outs = []
        for i in range(t):
            lo, hi = max(0, i - self.radius), min(t, i + self.radius + 1)
            kk = k[:, lo:hi].reshape(k.shape[0], -1, c)
            vv = v[:, lo:hi].reshape(v.shape[0], -1, c)
            outs.append(F.scaled_dot_product_attention(q[:, i], kk, vv))
        o = torch.stack(outs, 1).transpose(2, 3).reshape(n, c, hh, ww)
        return x + a.proj_out(o)


def _channels(block: nn.Module) -> int:
    for name in ("out_channels", "in_channels"):
        v = getattr(block, name, None)
        if isinstance(v, int):
            return v
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"decoder: cannot infer the channels of {type(block).__name__}")
    return convs[-1].out_channels


def _children(module):
    return list(module.named_children())


def inflate_decoder(decoder: nn.Module, temporal_attention: bool = True, share_kv_radius: int = 0,
                    temporal_res: bool = True) -> tuple[nn.Module, _Frames]:
    """Deep copy of ``decoder`` with temporal layers inserted (see module docstring).

    Returns ``(inflated, frames)``; set ``frames.n`` to the chunk length before calling it.
    ``share_kv_radius > 0`` replaces the mid-block attention by the K/V-sharing one (training-free).
    """
    if share_kv_radius < 0:
        raise ValueError(f"share_kv_radius: expected 0 or more frames, got {share_kv_radius}")
    dec = copy.deepcopy(decoder)
    frames = _Frames()
    found = {"res": 0, "attn": 0}

    def visit(parent, prefix):
        for name, child in _children(parent):
            cls = type(child).__name__
            path = f"{prefix}{name}"
            if cls in RES_BLOCKS and temporal_res:
                setattr(parent, name, _WithTemporal(child, TemporalResBlock(_channels(child), frames)))
                found["res"] += 1
            elif cls in ATTN_BLOCKS:
                inner = child
                if share_kv_radius > 0 and path.startswith("mid."):
                    inner = _SharedKVAttn(child, frames, share_kv_radius)
                if temporal_attention:
                    inner = _WithTemporal(inner, TemporalAttention(child.in_channels, frames))
                if inner is not child:
                    setattr(parent, name, inner)
                found["attn"] += 1
            else:
                visit(child, path + ".")

    visit(dec, "")
    if found["res"] == 0 and temporal_res:
        raise ValueError("decoder: no 2D residual block (TAESD Block / ResnetBlock) found to inflate")
    if temporal_attention and found["attn"] == 0 and isinstance(dec, nn.Sequential):
        # TAESD: no spatial attention; add temporal attention after the lowest-resolution stage
        idx = [i for i, m in enumerate(dec) if type(m).__name__ == "Upsample"]
        if idx:
            i = idx[0] - 1
            dec[i] = _WithTemporal(dec[i], TemporalAttention(_channels(dec[i]), frames))
    return dec, frames


class TE3DDecoder(nn.Module):
    """Temporal decoder: ``forward(z [T, C, h, w]) -> [T, 3, H, W]`` treating the batch as one clip.

    ``pre`` / ``post`` map latents into / images out of the decoder (e.g. TAESD's shift/scale or
    SD-VAE's ``post_quant_conv``); they are applied per frame."""

    def __init__(self, decoder2d: nn.Module, temporal_attention: bool = True, share_kv_radius: int = 0,
                 temporal_res: bool = True, pre: Callable | None = None, post: Callable | None = None):
        super().__init__()
        self.decoder, self._frames = inflate_decoder(decoder2d, temporal_attention, share_kv_radius, temporal_res)
        self.pre = pre
        self.post = post

    def temporal_parameters(self):
        return [p for n, p in self.named_parameters() if _is_temporal(n)]

    def is_identity(self) -> bool:
        """True when every temporal layer is still zero-initialised (no trained weights): the decoder is
        then exactly the 2D decoder (and skips the temporal layers, see ``_WithTemporal``)."""
        return all(m.is_identity() for m in self.modules() if isinstance(m, (TemporalResBlock, TemporalAttention)))

    def forward(self, z):
        check_latents(z, "latent", min_frames=1)
        self._frames.n = int(z.shape[0])
        if self.pre is not None:
            z = self.pre(z)
        out = self.decoder(z)
        if self.post is not None:
            out = self.post(out)
        return out


def _is_temporal(name: str) -> bool:
    return ".temporal." in f".{name}"


def temporal_state_dict(model: TE3DDecoder) -> dict[str, torch.Tensor]:
    """Only the temporal layers' tensors (what training changes; what ``load`` reads)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if _is_temporal(k)}


def load_temporal_state_dict(model: TE3DDecoder, sd: dict[str, torch.Tensor], source: str = "weights") -> None:
    """Load temporal weights; raises ValueError naming ``source`` when keys or shapes do not match."""
    own = {k: v for k, v in model.state_dict().items() if _is_temporal(k)}
    missing = sorted(set(own) - set(sd))
    extra = sorted(set(sd) - set(own))
    if missing or extra:
        raise ValueError(f"{source}: temporal weights do not match this decoder (missing {missing[:3]}, "
                         f"unexpected {extra[:3]})")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(f"{source}: {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
    model.load_state_dict(sd, strict=False)


@torch.no_grad()
def decode_chunked(model: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, chunk: int = 8,
                   overlap: int = 2, out_device="cpu", on_chunk: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Decode ``z [T, C, h, w]`` in overlapping temporal chunks blended with Eq. 4 weights.

    Peak activation memory is that of one ``chunk``-frame decode; ``on_chunk(i, n)`` is called after
    each chunk (progress / interruption)."""
    check_latents(z, "latent", min_frames=1)
    total = int(z.shape[0])
    wins = ilt.plan_windows(total, chunk, overlap)
    weights = ilt.blend_weights(wins, total)
    out = None
    for i, (w, wt) in enumerate(zip(wins, weights)):
        y = model(z[w.start:w.end])
        y = y.to(out_device, torch.float32)
        if out is None:
            out = torch.zeros((total,) + tuple(y.shape[1:]), dtype=torch.float32, device=out_device)
        out[w.start:w.end] += wt.to(y).reshape(-1, 1, 1, 1) * y
        if on_chunk is not None:
            on_chunk(i, len(wins))
    return out


TILE_MARGIN = 8
"""Latent cells decoded around each tile and then dropped (default of :func:`decode_tiled`): the 2D
decoder's convolutions see real context up to this far past the tile, so the kept pixels equal the
untiled decode (measured on the demo TAESD-shaped VAE, 24x24 latent, 8-cell tiles: max pixel error 7.8e-2
without margin, 2.1e-4 at 4 cells, 1.4e-5 at 6, 4.2e-7 at 8)."""


def pixel_tiles(tiles: list[tiling.Tile], scale: int) -> list[tiling.Tile]:
    """The latent ``tiles`` on the decoded image's grid (``scale`` pixels per latent cell)."""
    return [tiling.Tile(t.y * scale, t.x * scale, t.h * scale, t.w * scale, t.height * scale, t.width * scale)
            for t in tiles]


@torch.no_grad()
def decode_tiled(model: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, tile: int, overlap: int,
                 margin: int = TILE_MARGIN, kind: str = "cosine", out_device=None) -> torch.Tensor:
    """Decode ``z [T, C, h, w]`` tile by tile on ONE spatial grid shared by all frames (``pipelines/tiling``);
    each tile is decoded on all ``T`` frames in one call, so the temporal layers see the same region on every
    frame. Returns ``[T, 3, h*s, w*s]`` float32 on ``out_device`` (default ``z``'s device).

    ``tile`` / ``overlap`` / ``margin`` are latent cells. A tile's latent crop is widened by ``margin`` cells
    on each side (clipped to the frame), decoded, and only the tile's own pixels are kept; tiles are blended
    in pixel space with the MultiDiffusion Eq. 5 weights (cosine ramps over ``overlap * s`` pixels, summing to
    one at every pixel). One tile covering the frame is ``model(z)`` itself.

    Exact up to float rounding for decoders without normalisation over space (TAESD's 2D decoder, with or
    without the identity skip) once ``margin`` covers the receptive field that matters. GroupNorms (the
    temporal layers', SD-VAE's) take their statistics over the widened tile instead of the frame, as in
    ComfyUI's tiled VAE decode: close to, not equal to, the untiled decode (measured in
    tests/nodes/test_te3d_weights.py)."""
    check_latents(z, "latent", min_frames=1)
    if int(margin) != margin or margin < 0:
        raise ValueError(f"margin: expected an integer >= 0 latent cells, got {margin!r}")
    out_device = z.device if out_device is None else out_device
    h, w = z.shape[-2:]
    tiles = tiling.tile_grid(h, w, tile, overlap)
    if len(tiles) == 1:
        return model(z).to(out_device, torch.float32)
    crops = [(max(t.y - margin, 0), min(t.y + t.h + margin, h), max(t.x - margin, 0), min(t.x + t.w + margin, w))
             for t in tiles]
    out = weights = px = None
    for i, t in enumerate(tiles):
        y0, y1, x0, x1 = crops[i]
        y = model(z[..., y0:y1, x0:x1])
        s = y.shape[-2] // (y1 - y0)
        if y.shape[-2] != s * (y1 - y0) or y.shape[-1] != s * (x1 - x0):
            raise ValueError(f"model: expected a decode of {y1 - y0}x{x1 - x0} latent cells to be an integer "
                             f"multiple of it, got {tuple(y.shape)}")
        if out is None:
            px = pixel_tiles(tiles, s)
            weights = tiling.blend_weights(px, overlap * s, kind, device=out_device, dtype=torch.float32)
            out = torch.zeros(y.shape[:-2] + (h * s, w * s), dtype=torch.float32, device=out_device)
        core = y[..., (t.y - y0) * s:(t.y - y0 + t.h) * s, (t.x - x0) * s:(t.x - x0 + t.w) * s]
        out[..., px[i].rows, px[i].cols] += weights[i] * core.to(out_device, torch.float32)
    return out


def temporal_consistency_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between consecutive-frame differences of ``pred`` and ``target`` (``[T, C, H, W]``)."""
    if pred.shape[0] < 2:
        return pred.new_zeros(())
    return (torch.diff(pred, dim=0) - torch.diff(target, dim=0)).abs().mean()


def train_step(model: TE3DDecoder, opt: torch.optim.Optimizer, z: torch.Tensor, target: torch.Tensor,
               temporal_weight: float = 1.0) -> dict[str, float]:
    """One optimisation step of the temporal layers: L1 reconstruction + temporal consistency."""
    model.train()
    opt.zero_grad(set_to_none=True)
    pred = model(z)
    l1 = (pred - target).abs().mean()
    tc = temporal_consistency_loss(pred, target)
    loss = l1 + temporal_weight * tc
    loss.backward()
    opt.step()
    return {"loss": float(loss.detach()), "l1": float(l1.detach()), "temporal": float(tc.detach())}


def make_optimizer(model: TE3DDecoder, lr: float = 1e-3) -> torch.optim.Optimizer:
    """Adam on the temporal layers only; the 2D decoder is frozen."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = model.temporal_parameters()
    for p in params:
        p.requires_grad_(True)
    return torch.optim.Adam(params, lr=lr)


def init_like_comfy(module: nn.Module, seed: int = 0) -> None:
    """Deterministic values for every parameter (helper for tests and scripts building decoders from
    classes that skip initialisation)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            elif name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
