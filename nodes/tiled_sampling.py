"""TR_TiledSampling: every model evaluation runs per spatial tile on one grid shared by all frames,
with smoothly blended tile predictions (MultiDiffusion Eq. 5), so HD clips sample at the model's own
resolution in bounded memory. The machinery is in ``_tiled.py``; the algorithm in ``pipelines/tiling.py``.
"""
from __future__ import annotations

from comfy_api.latest import io

from ..pipelines import tiling
from ._checks import latent_factor
from ._tiled import install_tiled_sampling, latent_tile_settings


class TiledSampling(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TR_TiledSampling",
            display_name="Tiled Sampling (Temporal Restore)",
            category="temporal_restore/patches",
            description="Runs the model tile by tile on one grid shared by every frame and blends the tiles with "
                        "smooth weights (MultiDiffusion), so large frames (720p, 1080p) restore in bounded memory "
                        "without seams that move over time. Temporal patches see the same tile on every frame; "
                        "ControlNet hints are cut per tile. Works with KSampler and the pack's samplers.",
            inputs=[
                io.Model.Input("model", tooltip="The model to tile (a patched clone is returned). Put it after the "
                                                 "temporal patches (SW-CFA, SLR, token merge, latent warp)."),
                io.Int.Input("tile_size", default=512, min=64, max=8192, step=8,
                             tooltip="Tile side in image pixels (multiple of 8; SD x4 upscaler: pixels of the low-res frames): the model's own resolution works "
                                     "best (512 for SD1.5). A tile at least as large as the frame means no tiling."),
                io.Int.Input("overlap", default=64, min=0, max=8184, step=8,
                             tooltip="Overlap of neighbouring tiles in image pixels (multiple of 8, below "
                                     "tile_size). Predictions are cross-faded over it; 64-128 hides seams."),
                io.Combo.Input("ramp", options=list(tiling.RAMPS), default="cosine",
                               tooltip="Shape of the cross-fade in the overlaps: cosine (smooth) or linear."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, tile_size=512, overlap=64, ramp="cosine") -> io.NodeOutput:
        tile, ov = latent_tile_settings(tile_size, overlap, latent_factor(model, "TR_TiledSampling"))
        return io.NodeOutput(install_tiled_sampling(model, tile, ov, ramp))


NODES = [TiledSampling]
