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
            description="Resize (or crop/pad) restored frames to the exact size of the input clip (or a whole multiple of it, "
                        "for super-resolution), so sizes that are not multiples of 8 or 2 survive a working-scale "
                        "round trip or a VAE.",
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
                # last: a new input goes after the old ones, so saved UI workflows keep their widget order
                io.Int.Input("scale", default=1, min=0, max=16, optional=True,
                             tooltip="Output size = reference size x scale. 1: the reference size. 0 (auto): the whole "
                                     "scale the workflow applied, read off the two sizes (nearest integer of their "
                                     "ratio, at least 1), so a 4x super-resolution stays 4x (what the headless "
                                     "runner uses)."),
            ],
            outputs=[io.Image.Output(display_name="images")],
        )

    @classmethod
    def execute(cls, images, reference, method, scale=1, to_8bit=False, **kwargs) -> io.NodeOutput:
        ref = check_frames(reference, "reference")
        images = check_frames(images, "images")
        if isinstance(scale, bool) or not isinstance(scale, int) or not 0 <= scale <= 16:
            raise ValueError(f"scale: expected an integer 0 (auto) to 16, got {scale!r}")
        H, W = ref.shape[1], ref.shape[2]
        s = scale or size_match.output_scale(images.shape[1], images.shape[2], H, W)
        out = size_match.match_size(images, H * s, W * s, method)
        return io.NodeOutput(size_match.to_8bit_centres(out) if to_8bit else out)


NODES = [MatchSize]
