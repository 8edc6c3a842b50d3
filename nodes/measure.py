"""The measuring stick as nodes: TR_SyntheticClip (clean clip + true flow), TR_Degrade, TR_VideoMetrics."""
from __future__ import annotations

import logging
import os

from comfy_api.latest import io

from ..pipelines import degrade as degradelib
from ..pipelines import metrics as metricslib
from ..pipelines import synthetic as synthlib
from ._checks import check_finite, check_output_prefix, check_same_frames
from ._types import FLOW

log = logging.getLogger("temporal_restore")

TASK_OPTIONS = sorted(degradelib.TASKS)


def parse_boundaries(text: str, num_frames: int) -> list[int]:
    """"8, 16, 24" -> [8, 16, 24] (frame indices that start a new window)."""
    text = (text or "").strip()
    if not text:
        return []
    try:
        out = sorted({int(v) for v in text.replace(";", ",").replace(" ", ",").split(",") if v.strip()})
    except ValueError as e:
        raise ValueError(f"window_starts: expected comma-separated frame indices like '8, 16', got {text!r}") from e
    if out and (out[0] < 1 or out[-1] > num_frames - 1):
        raise ValueError(f"window_starts: expected frame indices in 1..{num_frames - 1}, got {out}")
    return out


class SyntheticClip(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TR_SyntheticClip",
            display_name="Synthetic Clip (Temporal Restore)",
            category="temporal_restore/measure",
            description="A clean test clip with exact ground truth: a natural photo (scikit-image sample) seen "
                        "by a moving camera (pan/zoom/rotation) with a textured object moving over it. Also "
                        "outputs the true optical flow and occlusions as FLOW.",
            inputs=[
                io.Combo.Input("image", options=list(synthlib.IMAGES), default="astronaut",
                               tooltip="Background photo from scikit-image's sample images."),
                io.Int.Input("frames", default=16, min=2, max=512,
                             tooltip="Number of frames of the clip."),
                io.Int.Input("width", default=128, min=16, max=2048, step=8,
                             tooltip="Frame width in pixels (multiple of 8)."),
                io.Int.Input("height", default=96, min=16, max=2048, step=8,
                             tooltip="Frame height in pixels (multiple of 8)."),
                io.Combo.Input("motion", options=list(synthlib.MOTIONS), default="mixed",
                               tooltip="Camera motion: static, pan, zoom, rotate or mixed (all three, gentler); "
                                       "directions and speeds come from the seed."),
                io.Boolean.Input("moving_object", default=True,
                                 tooltip="Add a textured rectangle translating over the background (creates "
                                         "occlusions and disocclusions)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFF_FFFF,
                             tooltip="Seed for the motion, the object and its texture; same seed, same clip."),
            ],
            outputs=[io.Image.Output(display_name="frames"), FLOW.Output(display_name="true_flow")],
        )

    @classmethod
    def execute(cls, image, frames, width, height, motion, moving_object, seed) -> io.NodeOutput:
        clip = synthlib.make_clip(image, int(frames), int(height), int(width), motion, int(seed),
                                  moving_object=bool(moving_object))
        return io.NodeOutput(clip.frames, clip.flow_field())


class Degrade(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        meaning = "; ".join(f"{t}: {degradelib.STRENGTH_MEANING[t]} (default {degradelib.DEFAULT_STRENGTH[t]:g})"
                            for t in TASK_OPTIONS)
        return io.Schema(
            node_id="TR_Degrade",
            display_name="Degrade Clip (Temporal Restore)",
            category="temporal_restore/measure",
            description="Seeded synthetic degradation of a clip (noise, blur, downscale, JPEG, video codec, rain, "
                        "haze, low light) to measure a restorer against the clean original.",
            inputs=[
                io.Image.Input("images", tooltip="Clean frames [T,H,W,3] to degrade."),
                io.Combo.Input("task", options=TASK_OPTIONS, default="denoise",
                               tooltip="Degradation: denoise adds noise, deblur blurs, sr_x2/sr_x4 downscale "
                                       "(smaller output), jpeg / video_codec compress, derain adds rain, dehaze "
                                       "adds haze, low_light darkens with sensor noise."),
                io.Float.Input("strength", default=-1.0, min=-1.0, max=255.0, step=0.1,
                               tooltip="-1 = the task's default. Meaning per task: " + meaning),
                io.Int.Input("seed", default=0, min=0, max=0xFFFF_FFFF,
                             tooltip="Seed of the noise / rain / haze; the same seed gives bit-identical output. "
                                     "Sensor noise is independent across frames."),
            ],
            outputs=[io.Image.Output(display_name="degraded")],
        )

    @classmethod
    def execute(cls, images, task, strength, seed) -> io.NodeOutput:
        s = None if strength is None or float(strength) < 0 else float(strength)
        images = check_finite(degradelib.check_frames(images, "images"), "images")
        out = degradelib.degrade(images, task, s, int(seed))
        return io.NodeOutput(out)


class VideoMetrics(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TR_VideoMetrics",
            display_name="Video Metrics (Temporal Restore)",
            category="temporal_restore/measure",
            description="PSNR / SSIM and colour difference against a reference, warping error, flicker and "
                        "window-seam ratio of a restored clip, as JSON (shown on the node and stored in the history).",
            inputs=[
                io.Image.Input("restored", tooltip="The clip to measure [T,H,W,3]."),
                io.Image.Input("reference", optional=True,
                               tooltip="Clean ground truth, same shape as restored: enables PSNR/SSIM, the "
                                       "colour difference color_delta_e (CIEDE2000 between 1/8-frame block means) "
                                       "and colour flicker color_flicker (frame-to-frame change of the mean "
                                       "L*a*b* colour cast, CIE76 deltaE), and the flow for the warping error is "
                                       "estimated on it (so the restored clip cannot bias it)."),
                io.Image.Input("degraded", optional=True,
                               tooltip="The restorer's input (needs reference): adds psnr_degraded / "
                                       "ssim_degraded as the baseline; smaller inputs are bicubic-upscaled."),
                FLOW.Input("flow", optional=True,
                           tooltip="Flow for the warping error (e.g. TR_SyntheticClip's true_flow, or "
                                   "TR_FlowEstimate); resized to the frames if needed. Default: DIS."),
                io.String.Input("window_starts", default="", optional=True,
                                tooltip="Comma-separated frame indices where a new processing window starts "
                                        "(e.g. '8, 16'): adds seam_ratio = flicker across these cuts / flicker "
                                        "elsewhere (1 = seamless)."),
                io.String.Input("filename_prefix", default="", optional=True,
                                tooltip="If set, also save the metrics as JSON in ComfyUI's output folder under "
                                        "this prefix (listed in the node's outputs). Empty = write nothing."),
            ],
            outputs=[io.String.Output(display_name="metrics_json")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, restored, reference=None, degraded=None, flow=None, window_starts="",
                filename_prefix="") -> io.NodeOutput:
        restored = check_finite(degradelib.check_frames(restored, "restored"), "restored")
        if degraded is not None and reference is None:
            raise ValueError("degraded: needs a reference clip to be compared against; connect reference too")
        if reference is not None:
            check_same_frames(restored, check_finite(degradelib.check_frames(reference, "reference"), "reference"),
                              ("restored", "reference"))
        if degraded is not None:
            check_same_frames(restored, check_finite(degradelib.check_frames(degraded, "degraded"), "degraded"),
                              ("restored", "degraded"))
        if flow is not None and hasattr(flow, "num_frames"):
            check_same_frames(restored, flow, ("restored", "flow"))
        prefix = (filename_prefix or "").strip()
        if prefix:
            check_output_prefix(prefix, "filename_prefix")
        bounds = parse_boundaries(window_starts, restored.shape[0])
        if bounds and len(bounds) >= restored.shape[0] - 1:
            raise ValueError("window_starts: expected some frame pairs that are not window starts")
        import comfy.model_management as mm
        import comfy.utils

        pbar = comfy.utils.ProgressBar(max(1, restored.shape[0] - 1))

        def progress(done, total):
            mm.throw_exception_if_processing_interrupted()
            pbar.update_absolute(done, total)

        mm.throw_exception_if_processing_interrupted()
        m = metricslib.video_metrics(restored, reference=reference, flow=flow, degraded=degraded,
                                     boundaries=bounds or None, callback=progress)
        text = metricslib.metrics_to_json(m)
        ui = {"text": [text]}
        if prefix:
            import folder_paths

            out_dir = folder_paths.get_output_directory()
            folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(
                prefix, out_dir, restored.shape[2], restored.shape[1])
            os.makedirs(folder, exist_ok=True)
            fname = f"{name}_{counter:05}_.json"
            with open(os.path.join(folder, fname), "w", encoding="utf-8") as f:
                f.write(text)
            ui["metrics_files"] = [{"filename": fname, "subfolder": subfolder, "type": "output"}]
            log.info("temporal_restore: metrics saved to %s", os.path.join(folder, fname))
        return io.NodeOutput(text, ui=ui)


NODES = [SyntheticClip, Degrade, VideoMetrics]
