"""TR_FlowEstimate: optical flow of a clip (IMAGE -> FLOW), OpenCV DIS by default, RAFT from a local file."""
from __future__ import annotations

import logging
import os

from comfy_api.latest import io

from ..pipelines import flow as flowlib
from ._types import FLOW
from ._checks import check_choice, check_finite, check_frames

log = logging.getLogger("temporal_restore")

GRIDS = ("latent (1/8)", "half", "full")


def _resolve_weights(path: str) -> str:
    """Absolute path as given, else a file name under ``<models>/optical_flow``."""
    path = (path or "").strip().strip('"')
    if not path or os.path.isabs(path) or os.path.isfile(path):
        return path
    try:
        import folder_paths
        cand = os.path.join(folder_paths.models_dir, "optical_flow", path)
        if os.path.isfile(cand):
            return cand
    except Exception:  # pragma: no cover - folder_paths is always there inside ComfyUI
        pass
    return path


class FlowEstimate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TR_FlowEstimate",
            display_name="Flow Estimate (Temporal Restore)",
            category="temporal_restore/flow",
            description="Forward/backward optical flow between neighbouring frames (and keyframes), with "
                        "forward-backward occlusion masks and confidences, for the temporal patches.",
            inputs=[
                io.Image.Input("images", tooltip="The (low-quality) frames of the clip, [T,H,W,3]; flow is "
                               "estimated on these."),
                io.Combo.Input("backend", options=["dis", "raft"], default="dis",
                               tooltip="dis: OpenCV DIS (no weights, CPU). raft: torchvision RAFT small/large from "
                                       "the weights file below (never downloaded)."),
                io.Combo.Input("dis_preset", options=list(flowlib.DIS_PRESETS), default="medium",
                               tooltip="DIS speed/quality preset (used by the dis backend)."),
                io.String.Input("raft_weights", default="", optional=True,
                                tooltip="RAFT backend only: path of a torchvision RAFT state dict (.pth), or a file "
                                        "name in models/optical_flow."),
                io.Int.Input("keyframe_stride", default=8, min=0, max=1024,
                             tooltip="Also estimate direct flows between keyframes 0, s, 2s, ... (0 = none). Match the "
                                     "latent warp batch size with keyframe_mode 'stride' to use them directly."),
                io.Combo.Input("grid", options=list(GRIDS), default=GRIDS[0],
                               tooltip="Grid the flow is stored on (the patches resample it to the grid they sample "
                                       "on, vectors rescaled). 'latent (1/8)' is the latent grid of an 8x VAE (SD1.5, "
                                       "2.x, SDXL) on the frames it encodes, at 1/64 of full-size memory. SD x4 "
                                       "upscaler: its latent is the low-res frames' own grid: estimate on them with "
                                       "'full' (a coarser flow is upsampled, and the patches log a warning)."),
            ],
            outputs=[FLOW.Output(display_name="flow")],
        )

    @classmethod
    def execute(cls, images, backend="dis", dis_preset="medium", raft_weights="", keyframe_stride=8,
                grid=GRIDS[0]) -> io.NodeOutput:
        check_finite(images, "images")
        import comfy.model_management as mm
        import comfy.utils

        check_frames(images, "images", channels=(3,))
        check_choice(grid, GRIDS, "grid")
        T, H, W, _ = images.shape
        div = {"latent (1/8)": 8, "half": 2, "full": 1}[grid]
        out_size = (max(1, H // div), max(1, W // div))
        raft = None
        if backend == "raft":
            path = _resolve_weights(raft_weights)
            raft = flowlib.RaftEstimator(path, device=mm.get_torch_device())
        keyframes = flowlib.keyframe_indices(T, int(keyframe_stride))
        pbar = comfy.utils.ProgressBar(max(1, 2 * (T - 1)))

        def progress(done, total):
            mm.throw_exception_if_processing_interrupted()
            pbar.update_absolute(done, total)

        field = flowlib.estimate_flow(images.cpu(), backend=backend, keyframes=keyframes, preset=dis_preset,
                                      raft=raft, out_size=out_size, callback=progress)
        log.info("temporal_restore: %r", field)
        return io.NodeOutput(field)


NODES = [FlowEstimate]
