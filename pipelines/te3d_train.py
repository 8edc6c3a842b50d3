"""Training data and held-out measurement for the TE-3D temporal layers (DiffVSR §3.3).

A diffusion restorer that samples frames (or windows) on their own leaves frame-wise inconsistency in the
latents; the temporal layers of :class:`.te3d_vae.TE3DDecoder` are trained to decode such latents into a
consistent clip. Training pairs: latents ``z = E(x) + s * std(E(x)) * n_t`` of a clean synthetic clip ``x``
(:func:`.synthetic.make_clip`: natural photo, known camera motion, a moving object) with independent
Gaussian jitter ``n_t`` per frame, and the clean clip as target (:func:`.te3d_vae.train_step`: L1 +
temporal consistency). Held-out clips use images never seen in training (``HELD_OUT``) and their own seeds.

Shapes: clips ``x [T, 3, H, W]`` in [0, 1]; latents ``[T, C, H/8, W/8]`` in the raw decoder's space
(for TAESD the encoder's output, before ComfyUI's ``vae_scale``/``vae_shift``). Nothing here imports ComfyUI.
"""
from __future__ import annotations

import hashlib
from typing import Callable

import torch

from . import metrics, synthetic

__all__ = ["TRAIN_IMAGES", "HELD_OUT", "decoder_fingerprint", "training_clips", "held_out_clips", "jitter",
           "measure"]

HELD_OUT = ("astronaut", "rocket")  # the demo model's held-out images too (models/demo/README.md)
TRAIN_IMAGES = tuple(i for i in synthetic.IMAGES if i not in HELD_OUT)
MOTIONS = ("pan", "mixed", "zoom", "rotate", "static")


def decoder_fingerprint(decoder: torch.nn.Module) -> str:
    """sha256 of the 2D decoder's tensors rounded to fp16 (stable across fp16/fp32 loading), so shipped
    temporal weights are only used with the decoder they were trained for."""
    h = hashlib.sha256()
    for k, v in sorted(decoder.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return h.hexdigest()


def _clip(image: str, motion: str, seed: int, frames: int, size: int, pool: tuple) -> synthetic.SyntheticClip:
    """The moving object is a crop of another image of the same ``pool`` (no held-out pixels in training)."""
    others = [i for i in pool if i != image]
    return synthetic.make_clip(image, frames=frames, height=size, width=size, motion=motion, seed=seed,
                               object_image=others[seed % len(others)])


def training_clips(count: int, frames: int = 8, size: int = 64, seed: int = 0) -> list[torch.Tensor]:
    """``count`` clips ``[T, 3, size, size]`` from ``TRAIN_IMAGES`` x ``MOTIONS``, deterministic in ``seed``."""
    out = []
    for i in range(count):
        c = _clip(TRAIN_IMAGES[i % len(TRAIN_IMAGES)], MOTIONS[(i // len(TRAIN_IMAGES)) % len(MOTIONS)],
                  seed * 1000 + i, frames, size, TRAIN_IMAGES)
        out.append(c.frames.permute(0, 3, 1, 2).contiguous())
    return out


def held_out_clips(frames: int = 8, size: int = 64, seed: int = 12345) -> list[synthetic.SyntheticClip]:
    """Clips of the ``HELD_OUT`` images (pan and mixed motion), never used in training."""
    return [_clip(img, mot, seed + i, frames, size, HELD_OUT) for i, (img, mot) in
            enumerate((img, mot) for img in HELD_OUT for mot in ("pan", "mixed"))]


def jitter(z: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """``z + strength * std(z) * n``, ``n`` i.i.d. N(0, 1) per frame and element (``z [T, C, h, w]``)."""
    if strength < 0:
        raise ValueError(f"strength: expected a jitter >= 0 (relative to the latent std), got {strength}")
    n = torch.randn(z.shape, generator=generator).to(z)
    return z + strength * z.std() * n


@torch.no_grad()
def measure(encode: Callable, decoders: dict[str, Callable], strength: float = 0.15, frames: int = 8,
            size: int = 64, seed: int = 12345) -> dict[str, dict[str, float]]:
    """Mean PSNR (vs the clean clip), warping error (true flow and occlusion) and flicker of each decoder
    on the held-out clips, latents jittered by ``strength`` (0 = clean latents).

    ``encode(x [T,3,H,W] in [0,1]) -> z``; ``decoders[name](z) -> [T,3,H,W]`` in [0, 1]."""
    rows: dict[str, dict[str, list[float]]] = {n: {"psnr": [], "warping_error": [], "flicker": []} for n in decoders}
    g = torch.Generator().manual_seed(seed)
    for clip in held_out_clips(frames, size, seed):
        x = clip.frames.permute(0, 3, 1, 2)
        z = jitter(encode(x), strength, g)
        for name, dec in decoders.items():
            y = dec(z).float().clamp(0, 1).permute(0, 2, 3, 1)
            r = rows[name]
            r["psnr"].append(metrics.psnr(y, clip.frames))
            r["warping_error"].append(metrics.warping_error(y, clip.flow, clip.occlusion))
            r["flicker"].append(metrics.flicker(y))
    return {n: {k: sum(v) / len(v) for k, v in r.items()} for n, r in rows.items()}
