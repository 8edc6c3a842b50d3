"""Schema inputs of the keyframe plan that TR_LatentWarp and TR_TokenMerge share (one plan, one definition)."""
from __future__ import annotations

from comfy_api.latest import io

from ..pipelines import latent_warp as lw


def keyframe_plan_inputs(size_name: str, unit: str, size_max: int, other: str) -> list:
    """The keyframe plan inputs (frames per batch, keyframe mode, seed) shared by TR_LatentWarp and
    TR_TokenMerge: with the defaults both pick the same keyframes (one middle keyframe per 10 frames,
    the official DiffIR2VR-Zero code)."""
    return [
        io.Int.Input(size_name, default=lw.DEFAULT_BATCH, min=1, max=size_max,
                     tooltip=f"Frames per {unit}; each {unit} of consecutive frames has one keyframe. 10 with "
                             f"keyframe_mode middle is the official code's plan and the same keyframes as {other} "
                             "with its defaults (one plan for both)."),
        io.Combo.Input("keyframe_mode", options=list(lw.KEYFRAME_MODES), default=lw.DEFAULT_KEYFRAME_MODE,
                       tooltip=f"middle: middle frame of each {unit} (official code). random: seeded random frame "
                               f"per {unit} (paper text). stride: first frame of each {unit}."),
        io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Seed of the random keyframe choice."),
    ]
