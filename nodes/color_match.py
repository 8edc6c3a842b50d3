"""TR_ColorMatch: colour correction of restored frames towards the restorer's input (pipelines.color)."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..pipelines import color as colorlib
from ._checks import check_finite, check_frames, check_same_frames


class ColorMatch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TR_ColorMatch",
            display_name="ColorMatch (Temporal Restore)",
            category="temporal_restore/postprocess",
            description="Gives restored frames the colour of the reference (the restorer's input), as StableSR / "
                        "SUPIR do: wavelet keeps the restored detail and takes the low frequencies from the "
                        "reference; adain matches each channel's mean and spread. A temporal window smooths the "
                        "correction over neighbouring frames so it does not flicker.",
            inputs=[
                io.Image.Input("restored", tooltip="The restored frames [T,H,W,3] to correct."),
                io.Image.Input("reference", tooltip="The frames whose colour is kept, usually the restorer's input "
                                                    "[T,h,w,3], same frame count; a different size (e.g. the "
                                                    "low-resolution input of super-resolution) is resized to the "
                                                    "restored size (bicubic up, area down)."),
                io.Combo.Input("method", options=list(colorlib.METHODS), default="wavelet",
                               tooltip="wavelet: low-frequency band (5-level a-trous wavelet) from the reference, "
                                       "high-frequency band from the restored frame (StableSR); the best on every "
                                       "measured pipeline. adain: each channel's mean and standard deviation from "
                                       "the reference; it copies the reference's contrast, noise included (3-6 dB "
                                       "PSNR lost on a noisy input). none: pass the restored frames through."),
                io.Int.Input("temporal_window", default=2, min=0, max=64,
                             tooltip="Radius r in frames: the reference's colour (per-channel mean and spread) "
                                     "is averaged over frames t-r..t+r, so flicker in the reference is not copied "
                                     "while each restored frame's own drift is still removed (noisy input: colour flicker "
                                     "a third of per-frame). 0 = per frame: better for a clean input such as a "
                                     "low-resolution clip to upscale, where averaging only lags real colour "
                                     "changes."),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Blend between the restored frames (0) and the fully corrected frames (1)."),
            ],
            outputs=[io.Image.Output(display_name="images")],
        )

    @classmethod
    def execute(cls, restored, reference, method, temporal_window, strength) -> io.NodeOutput:
        restored = check_finite(check_frames(restored, "restored"), "restored")
        reference = check_finite(check_frames(reference, "reference"), "reference")
        check_same_frames(restored, reference, ("restored", "reference"))
        import comfy.model_management as mm
        import comfy.utils

        pbar = comfy.utils.ProgressBar(restored.shape[0])

        def progress(done, total):
            mm.throw_exception_if_processing_interrupted()
            pbar.update_absolute(done, total)

        # ComfyUI IMAGEs may carry an alpha channel: correct RGB, keep alpha as it is
        out = colorlib.color_match(restored[..., :3], reference[..., :3], method, int(temporal_window),
                                   float(strength), callback=progress)
        if restored.shape[-1] == 4:
            out = torch.cat([out, restored[..., 3:]], -1)
        return io.NodeOutput(out)


NODES = [ColorMatch]
