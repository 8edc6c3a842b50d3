"""Input validation shared by the pack's nodes.

Every helper raises ``ValueError`` whose message starts with the input's name and says what was
expected and what was given (CONTRIBUTING: "Errors on bad input"), and returns the validated value so
checks chain: ``images = check_finite(check_frames(images, "images"), "images")``.

Nothing here imports ``comfy`` at module import; ``folder_paths`` / ``comfy.model_sampling`` are
imported inside the helpers that need them.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from ..tr_cli.ui_format import FAMILY_LABELS


def _shape(x: Any):
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def check_frames(t: Any, name: str = "images", min_frames: int = 1, channels=(3, 4)) -> torch.Tensor:
    """A ComfyUI IMAGE batch ``[T, H, W, C]`` (C in ``channels``) of floats with ``T >= min_frames``."""
    if not isinstance(t, torch.Tensor) or t.ndim != 4 or t.shape[-1] not in channels:
        raise ValueError(f"{name}: expected an IMAGE batch [frames, height, width, 3], got {_shape(t)}")
    if not t.is_floating_point():
        raise ValueError(f"{name}: expected float pixel values in 0..1, got dtype {t.dtype}")
    if t.shape[0] < min_frames or t.shape[1] < 1 or t.shape[2] < 1:
        raise ValueError(f"{name}: expected at least {min_frames} frame(s) of at least 1x1 pixels, "
                         f"got {tuple(t.shape)}")
    return t


def check_latent(latent: Any, name: str = "latent", multiple: int | None = None, min_frames: int = 1) -> torch.Tensor:
    """``latent`` is a LATENT dict (or its ``samples`` tensor) of image latents ``[T, C, h, w]``.

    ``multiple``: the frame count must be a multiple of it (e.g. a chunk size). Returns the samples."""
    samples = latent.get("samples") if isinstance(latent, dict) else latent
    if not isinstance(samples, torch.Tensor):
        raise ValueError(f"{name}: expected a LATENT with image latents [frames, C, h, w], got {_shape(samples)}")
    if getattr(samples, "is_nested", False) or samples.ndim != 4:
        shape = "a nested latent" if getattr(samples, "is_nested", False) else tuple(samples.shape)
        raise ValueError(f"{name}: expected image latents [frames, C, h, w], got {shape}")
    if samples.shape[0] < min_frames:
        raise ValueError(f"{name}: expected at least {min_frames} frame(s), got {samples.shape[0]}")
    if multiple and samples.shape[0] % int(multiple):
        raise ValueError(f"{name}: expected a frame count that is a multiple of {multiple}, got {samples.shape[0]}")
    return samples


def check_choice(value: Any, options, name: str) -> Any:
    """``value`` is one of ``options`` (a linked value skips the schema's combo check)."""
    if value not in options:
        raise ValueError(f"{name}: expected one of {list(options)}, got {value!r}")
    return value


def check_flow(flow: Any, name: str = "flow") -> Any:
    """An optional TR_FLOW input: None, or a ``FlowField`` (anything with ``resized``, ``between``,
    ``num_frames``)."""
    if flow is not None and not all(hasattr(flow, a) for a in ("resized", "between", "num_frames")):
        raise ValueError(f"{name}: expected a TR_FLOW (FlowField), got {type(flow).__name__}")
    return flow


def check_finite(t: Any, name: str) -> Any:
    """No NaN / Inf in the tensor ``t`` (or in ``t["samples"]`` for a LATENT dict)."""
    x = t.get("samples") if isinstance(t, dict) else t
    if isinstance(x, torch.Tensor) and x.is_floating_point() and not getattr(x, "is_nested", False):
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            n_nan = int(torch.isnan(x).sum())
            n_inf = int(bad.sum()) - n_nan
            where = sorted({int(i) for i in bad.reshape(bad.shape[0], -1).any(1).nonzero().flatten()}) \
                if x.ndim >= 1 else []
            raise ValueError(f"{name}: expected finite values, got {n_nan} NaN and {n_inf} Inf "
                             f"(frames {where[:8]}{'...' if len(where) > 8 else ''}); check the node that made it")
    return t


def check_same_frames(a: Any, b: Any, names: tuple[str, str]) -> None:
    """``a`` and ``b`` (tensors with frames first, LATENT dicts or FlowFields) cover the same number of frames."""
    def frames(x):
        if isinstance(x, dict):
            x = x.get("samples")
        if hasattr(x, "num_frames"):
            return int(x.num_frames)
        return int(x.shape[0])

    fa, fb = frames(a), frames(b)
    if fa != fb:
        raise ValueError(f"{names[1]}: expected {fa} frames like {names[0]}, got {fb}")


def check_steps(steps: Any, name: str = "steps", minimum: int = 1, maximum: int | None = None) -> int:
    """An integer step count in ``[minimum, maximum]`` (a linked value skips the schema's min/max)."""
    if isinstance(steps, bool) or not isinstance(steps, (int, float)) or int(steps) != steps:
        raise ValueError(f"{name}: expected an integer, got {steps!r}")
    steps = int(steps)
    if steps < minimum or (maximum is not None and steps > maximum):
        hi = "" if maximum is None else f" and <= {maximum}"
        raise ValueError(f"{name}: expected an integer >= {minimum}{hi}, got {steps}")
    return steps


#: the model families the pack knows, by ComfyUI model-config class (``comfy.supported_models``), most
#: specific first (``SD_X4Upscaler`` derives from ``SD20``), with the names used in messages
#: (labels: tr_cli/ui_format, which the runner reads without loading the pack)
FAMILIES = tuple((f, cls_name, FAMILY_LABELS[f]) for f, cls_name in (
    ("sd_x4", "SD_X4Upscaler"), ("sdxl", "SDXL"), ("sd2", "SD20"), ("sd15", "SD15")))
#: every UNet family (ComfyUI's openaimodel UNet: input/middle/output blocks with SpatialTransformers)
UNET_FAMILIES = ("sd15", "sd2", "sdxl", "sd_x4")


def model_family(model: Any) -> str:
    """The family of a MODEL (ModelPatcher) from ComfyUI's model-config class: one of ``UNET_FAMILIES``,
    else the config class name (e.g. ``"Flux"``), so a message can name what it got. Subclasses count
    (fine-tunes, inpainting, test-only tiny configs: the block layout is always read off the UNet)."""
    import comfy.supported_models as sm

    try:
        cfg = model.get_model_object("model_config")
    except Exception as e:  # not a ModelPatcher
        raise ValueError(f"model: expected a diffusion MODEL, got {type(model).__name__}") from e
    for fam, cls_name, _ in FAMILIES:
        cls = getattr(sm, cls_name, None)
        if cls is not None and isinstance(cfg, cls):
            return fam
    return type(cfg).__name__


#: image pixels per cell of the MODEL's input grid, per family, of the frames a latent is made from (not the
#: VAE's ``downscale_ratio``, which TE-3D tiles read: the two differ on the x4 upscaler): the 8x KL VAE of SD1.5 / 2.x /
#: SDXL; the SD x4 upscaler's latent is the low-resolution frames' own grid (SD_4XUpscale_Conditioning builds it
#: at pixels x scale_ratio / 4, scale_ratio 4 being the model's; its VAE then decodes 4x)
LATENT_PIXELS = {"sd15": 8, "sd2": 8, "sdxl": 8, "sd_x4": 1}


def latent_factor(model: Any, node: str) -> int:
    """Image pixels per latent cell for ``model``'s family (``LATENT_PIXELS``), for inputs given in pixels
    (padding, tile sizes); a family the pack has no factor for is refused naming it."""
    fam = model_family(model)
    if fam not in LATENT_PIXELS:
        raise ValueError(f"model: {node} reads pixel sizes on the latent grid of {', '.join(FAMILY_LABELS.values())} "
                         f"models; got a {FAMILY_LABELS.get(fam, fam)} model")
    return LATENT_PIXELS[fam]


def check_family(model: Any, supported, node: str, name: str = "model", discrete: bool = False) -> str:
    """``model``'s family is in ``supported`` (names of ``FAMILIES``); returns the family. The error
    names the node, the family given and the families the node supports. ``discrete``: the model's
    noise schedule must also be a discrete eps / v-prediction one (not EDM, flow or x0 models)."""
    import comfy.model_sampling as cms

    fam = model_family(model)
    want = ", ".join(FAMILY_LABELS.get(f, f) for f in supported)
    if fam not in supported:
        raise ValueError(f"{name}: {node} supports {want} models; got a {FAMILY_LABELS.get(fam, fam)} model")
    ms = model.get_model_object("model_sampling")
    if discrete and (not isinstance(ms, cms.EPS) or isinstance(ms, cms.X0) or not hasattr(ms, "sigmas")
                     or not isinstance(ms, cms.ModelSamplingDiscrete)):
        raise ValueError(f"{name}: {node} supports {want} models with a discrete eps/v-prediction noise "
                         f"schedule; got a {FAMILY_LABELS.get(fam, fam)} model with {type(ms).__name__} sampling")
    return fam


def check_output_prefix(prefix: str, name: str = "filename_prefix") -> str:
    """A ``filename_prefix`` that stays inside ComfyUI's output folder (subfolders allowed)."""
    import folder_paths

    prefix = (prefix or "").strip()
    out_dir = os.path.abspath(folder_paths.get_output_directory())
    target = os.path.abspath(os.path.join(out_dir, os.path.normpath(prefix)))
    if not prefix or os.path.isabs(prefix) or os.path.commonpath((out_dir, target)) != out_dir or target == out_dir:
        raise ValueError(f"{name}: expected a file name prefix inside ComfyUI's output folder (e.g. "
                         f"'temporal_restore/clip'; no absolute path, no '..' leaving the folder), got {prefix!r}")
    return prefix
