"""Training data and recipe pieces for task-prompt ControlNet fine-tuning (TDM §2.2) and the embedded
demo model. Pure torch/numpy: never imports ``comfy`` (the trainers in ``scripts/`` do).

TDM fine-tunes a ControlNet on *single* (degraded, clean) image pairs, the text prompt naming the task
("remove the noise", "increase the resolution", ...): Task Prompt Guidance. This module provides

* the task list and prompts (re-exported from ``pipelines.tasks``, which the ``TR_TaskPromptControlNet``
  node reads too),
* natural training images from ``skimage.data`` split into train / held-out images
  (the held-out ones are the images of the bundled sample clip),
* seeded random crops ``[N, S, S, 3]`` with scale / flip / colour augmentation,
* degraded inputs at the clean size (``pipelines.degrade``; super-resolution inputs are bicubic
  upsampled back, as the ControlNet hint of a restorer is a full-size image),
* the SD1.x discrete noise schedule in sigma form and the loss of eps-prediction training,
* the architecture spec of the demo model (re-exported from ``pipelines.demo_spec``, which the runtime
  demo loader reads without importing this training module).

Shapes: images are ComfyUI IMAGE batches ``[N, H, W, 3]`` float32 in 0..1; latents ``[N, 4, H/8, W/8]``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from . import degrade as _degrade
from .demo_spec import (DEMO_CLIP_CONFIG, DEMO_UNET_CONFIG, DEMO_VAE_LATENT_CHANNELS,  # noqa: F401 (re-exported)
                        SD15_SCALE_FACTOR)
from .tasks import DEMO_TASKS, TASK_PROMPTS, WRONG_TASK  # noqa: F401 (re-exported for the trainers)

# skimage.data images bundled with scikit-image (no download). Held out: the sample clip's images.
# "motorcycle_left" / "motorcycle_right" are the two views of skimage.data.stereo_motorcycle() (bundled too).
TRAIN_IMAGES = ("coffee", "chelsea", "immunohistochemistry", "hubble_deep_field", "retina", "colorwheel",
                "camera", "brick", "grass", "gravel", "coins", "moon", "clock", "cell", "page",
                "motorcycle_left", "motorcycle_right")
_STEREO = {"motorcycle_left": 0, "motorcycle_right": 1}
HELDOUT_IMAGES = ("astronaut", "rocket")

# ---------------------------------------------------------------------------------------------- images
def load_image(name: str) -> np.ndarray:
    """``skimage.data.<name>()`` (or a view of ``stereo_motorcycle()``) as float32 RGB ``[H, W, 3]`` in 0..1 (grey images repeated, alpha dropped)."""
    try:
        from skimage import data
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("training images come from scikit-image: pip install scikit-image") from e
    img = np.asarray(data.stereo_motorcycle()[_STEREO[name]] if name in _STEREO else getattr(data, name)())
    img = img.astype(np.float32) / (255.0 if img.dtype == np.uint8 else max(float(img.max()), 1e-12))
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    return np.ascontiguousarray(img[..., :3])


def load_images(names) -> list[torch.Tensor]:
    """Images as ``[1, 3, H, W]`` float32 tensors."""
    return [torch.from_numpy(load_image(n)).permute(2, 0, 1)[None] for n in names]


def random_crops(images: list[torch.Tensor], n: int, size: int, seed: int, scale=(0.35, 1.0),
                 augment: bool = True) -> torch.Tensor:
    """``n`` crops ``[n, size, size, 3]`` from ``images`` (``[1, 3, H, W]``): each crop picks an image, a scale
    (the image is resized by a factor in ``scale``, antialiased), a position, and with ``augment`` a
    horizontal flip, a channel permutation (colour variety from few colour images) and a brightness gain."""
    g = torch.Generator().manual_seed(int(seed))
    out = torch.empty(n, 3, size, size)
    for i in range(n):
        img = images[int(torch.randint(len(images), (1,), generator=g))]
        h, w = img.shape[-2:]
        lo = max(scale[0], size / min(h, w))
        s = float(lo + (max(scale[1], lo) - lo) * torch.rand((), generator=g))
        cs = int(math.ceil(size / s))  # source window that maps onto the crop
        y = int(torch.randint(h - cs + 1, (1,), generator=g))
        x = int(torch.randint(w - cs + 1, (1,), generator=g))
        c = img[:, :, y:y + cs, x:x + cs]
        if cs != size:
            c = F.interpolate(c, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        c = c[0]
        if augment:
            if torch.rand((), generator=g) < 0.5:
                c = c.flip(-1)
            c = c[torch.randperm(3, generator=g)]
            c = c * float(0.8 + 0.4 * torch.rand((), generator=g))
        out[i] = c.clamp(0, 1)
    return out.permute(0, 2, 3, 1).contiguous()


def degraded_input(clean: torch.Tensor, task: str, seed: int, strength: float | None = None) -> torch.Tensor:
    """The restorer's input for ``clean [N, H, W, 3]``: ``pipelines.degrade`` at the clean size (x2/x4 SR
    inputs are bicubic-upsampled back to ``H x W``)."""
    d = _degrade.degrade(clean, task, strength=strength, seed=seed)
    if d.shape[1:3] != clean.shape[1:3]:
        d = upsample_bicubic(d, clean.shape[1], clean.shape[2])
    return d


def upsample_bicubic(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bicubic resize of ``[N, h, w, 3]`` to ``[N, height, width, 3]`` (clamped to 0..1)."""
    x = F.interpolate(frames.permute(0, 3, 1, 2), size=(int(height), int(width)), mode="bicubic",
                      align_corners=False)
    return x.clamp(0, 1).permute(0, 2, 3, 1).contiguous()


def _work_scale(scale) -> int:
    if int(scale) != scale or int(scale) < 1:
        raise ValueError(f"scale: expected an integer >= 1, got {scale!r}")
    return int(scale)


def to_work_scale(frames: torch.Tensor, scale: int) -> torch.Tensor:
    """``frames [N, H, W, 3]`` bicubic-upsampled to the model's working scale ``[N, H*scale, W*scale, 3]``.

    The demo model works on clips upsampled x2 (as DiffBIR / SUPIR upsample small inputs to their model's
    resolution): its tiny x8 VAE reconstructs native-resolution detail at ~23 dB but x2-upsampled detail at
    ~26 dB. Degradations are applied *before* this (at the clip's own resolution), as a user's clip has them."""
    scale = _work_scale(scale)
    if scale == 1:
        return frames
    return upsample_bicubic(frames, frames.shape[1] * scale, frames.shape[2] * scale)


def from_work_scale(frames: torch.Tensor, scale: int) -> torch.Tensor:
    """Inverse of :func:`to_work_scale`: area-average ``[N, H, W, 3]`` down by ``scale``."""
    scale = _work_scale(scale)
    if scale == 1:
        return frames
    x = F.interpolate(frames.permute(0, 3, 1, 2), scale_factor=1 / scale, mode="area")
    return x.permute(0, 2, 3, 1).contiguous()


def task_pairs(clean: torch.Tensor, tasks, seed: int) -> tuple[torch.Tensor, list[str]]:
    """Assign tasks round-robin over ``clean [N, H, W, 3]`` and degrade each crop (its own seed).
    Returns ``(degraded [N, H, W, 3], task_names)``."""
    tasks = list(tasks)
    for t in tasks:
        if t not in TASK_PROMPTS:
            raise ValueError(f"tasks: expected names from {sorted(TASK_PROMPTS)}, got {t!r}")
    names = [tasks[i % len(tasks)] for i in range(clean.shape[0])]
    out = torch.empty_like(clean)
    for t in tasks:
        idx = [i for i, n in enumerate(names) if n == t]
        if not idx:
            continue
        for i in idx:  # per-crop seeds: derain/dehaze draw one pattern per call
            out[i] = degraded_input(clean[i:i + 1], t, seed=seed * 100003 + i)[0]
    return out, names


def prompt_pairs(clean: torch.Tensor, tasks, seed: int, off_task: float = 0.25
                 ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Task Prompt Guidance training triples (TDM §2.2) in which the prompt is needed, not implied by the hint.

    Every crop of ``clean [N, H, W, 3]`` is degraded with a task assigned round-robin (as ``task_pairs``).
    A seeded fraction ``off_task`` of the crops is paired with a prompt that does **not** name its
    degradation (half of them the empty prompt, half another task's prompt) and with the degraded crop
    itself as target: the prompt says what to remove, a degradation it does not name is left as it is.
    The other crops are the usual (degraded, clean, task prompt) pairs. With single-task pairs only, the
    degraded hint already tells which task it is and the prompt is redundant (the model learns to ignore it).

    Returns ``(degraded [N, H, W, 3], target [N, H, W, 3], prompts list[str])``."""
    if not 0.0 <= float(off_task) < 1.0:
        raise ValueError(f"off_task: expected a fraction in [0, 1), got {off_task!r}")
    tasks = list(tasks)
    degraded, names = task_pairs(clean, tasks, seed)
    target = clean.clone()
    prompts = [TASK_PROMPTS[n] for n in names]
    g = torch.Generator().manual_seed(int(seed) * 7919 + 17)
    for i, n in enumerate(names):
        u, v, w = (float(x) for x in torch.rand(3, generator=g))
        if u >= off_task:
            continue
        others = [TASK_PROMPTS[t] for t in tasks if t != n]
        prompts[i] = "" if (v < 0.5 or not others) else others[min(int(w * len(others)), len(others) - 1)]
        target[i] = degraded[i]
    return degraded, target, prompts


# ---------------------------------------------------------------------------------------------- schedule
def sd_sigmas(timesteps: int = 1000, linear_start: float = 0.00085, linear_end: float = 0.012) -> torch.Tensor:
    """SD1.x "scaled linear" discrete schedule as k-diffusion sigmas ``[timesteps]`` (ascending): the same
    values as ComfyUI's ``ModelSamplingDiscrete`` for SD1.5."""
    betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2
    ac = torch.cumprod(1.0 - betas, dim=0)
    return (((1 - ac) / ac) ** 0.5).float()


def sample_timesteps(n: int, gen: torch.Generator, timesteps: int = 1000, focus: int = 0,
                     focus_frac: float = 0.0) -> torch.Tensor:
    """Integer timesteps ``[n]`` (as float, the UNet's ``timesteps`` input): uniform, except that a fraction
    ``focus_frac`` is drawn below ``focus`` (the range an img2img restore at denoise ``focus / timesteps``
    visits). With the defaults, plain uniform (the DDPM objective)."""
    t = torch.randint(0, timesteps, (n,), generator=gen)
    if focus > 0 and focus_frac > 0:
        low = torch.randint(0, int(focus), (n,), generator=gen)
        t = torch.where(torch.rand(n, generator=gen) < focus_frac, low, t)
    return t.float()


def noisy_input(z0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The UNet input of eps-prediction training in ComfyUI's convention: ``x = z0 + sigma * noise`` scaled
    by ``1 / sqrt(1 + sigma^2)`` (``z0`` already multiplied by the latent scale factor)."""
    s = sigma.view(-1, *([1] * (z0.ndim - 1)))
    return (z0 + s * noise) / torch.sqrt(1.0 + s * s)


def eps_loss(eps_pred: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, weighting: str = "eps",
             cap: float = 4.0) -> torch.Tensor:
    """Loss of an eps-prediction model. ``weighting``: "eps" (plain MSE on the noise, the DDPM/ControlNet
    objective) or "x0" (MSE of the implied x0 = x - sigma * eps, i.e. eps error times sigma^2, capped at
    ``cap`` for large sigma; it spends the capacity where the prediction changes the output image)."""
    err = (eps_pred.float() - noise.float()) ** 2
    err = err.flatten(1).mean(1)
    if weighting == "eps":
        return err.mean()
    if weighting == "x0":
        return (err * torch.clamp(sigma.float() ** 2, max=cap)).mean()
    raise ValueError(f"weighting: expected 'eps' or 'x0', got {weighting!r}")


HELDOUT_WINDOWS = {"astronaut": (40, 200), "rocket": (180, 300)}


def heldout_clip(name: str = "astronaut", frames: int = 4, size: int = 64, origin=None, step=(2, 3)) -> torch.Tensor:
    """A small held-out clip ``[frames, size, size, 3]``: a native-resolution window of a held-out image
    panning ``step`` = (dy, dx) pixels per frame from ``origin`` = (y, x) (default ``HELDOUT_WINDOWS``)."""
    if name not in HELDOUT_IMAGES:
        raise ValueError(f"name: expected a held-out image {HELDOUT_IMAGES}, got {name!r}")
    img = torch.from_numpy(load_image(name))
    y, x = HELDOUT_WINDOWS[name] if origin is None else origin
    h, w = img.shape[:2]
    if y + step[0] * (frames - 1) + size > h or x + step[1] * (frames - 1) + size > w:
        raise ValueError(f"origin/step: the window leaves the {h}x{w} image")
    return torch.stack([img[y + step[0] * i:y + step[0] * i + size, x + step[1] * i:x + step[1] * i + size]
                        for i in range(frames)]).contiguous()
