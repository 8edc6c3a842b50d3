"""TR_MatchSize: frames back to the exact size of a reference clip (pipelines/size_match.py)."""
from __future__ import annotations

from comfy_api.latest import io

from ..pipelines import size_match
from ._checks import check_frames


class MatchSize(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TR_MatchSize",
            display_name="Match Size (Temporal Restore)",
            category="temporal_restore/io",
            description="Resize (or crop/pad) restored frames to the exact size of the input clip, so sizes "
                        "that are not multiples of 8 or 2 survive a working-scale round trip or a VAE.",
            inputs=[
                io.Image.Input("images", tooltip="Restored frames [T,H,W,3] at whatever size the workflow produced."),
                io.Image.Input("reference", tooltip="Frames whose height and width the output takes (the input clip)."),
                io.Combo.Input("method", options=list(size_match.METHODS), default="area",
                               tooltip="area: pixel averaging (best to shrink; equals ImageScaleBy area x0.5 at an exact "
                                       "half); bicubic / bilinear: resize (antialiased when shrinking); crop_or_pad: centre "
                                       "crop or edge-replicate, no resampling (for sizes a few pixels off)."),
                io.Boolean.Input("to_8bit", default=False, optional=True,
                                 tooltip="Snap the output to the centres of the 8-bit levels, so an 8-bit save that "
                                         "truncates (SaveImage) stores the nearest level, not the one below (what "
                                         "the headless runner uses for its lossless frame save)."),
            ],
            outputs=[io.Image.Output(display_name="images")],
        )

    @classmethod
    def execute(cls, images, reference, method, to_8bit=False, **kwargs) -> io.NodeOutput:
        ref = check_frames(reference, "reference")
        out = size_match.match_size(check_frames(images, "images"), ref.shape[1], ref.shape[2], method)
        return io.NodeOutput(size_match.to_8bit_centres(out) if to_8bit else out)


NODES = [MatchSize]
