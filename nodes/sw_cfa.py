"""TR_SWCFAPatch: Sliding-Window Cross-Frame Attention (TDM §2.3, Eq. 7-9) as attn1 replace patches.

Every selected self-attention (attn1) of the UNet keeps its queries and attends to keys/values
averaged over the frames ``i-N .. i+N`` of the same cond/uncond chunk (see ``pipelines/sw_cfa``).

* Installed with ``set_model_attn1_replace`` per block on a ``model.clone()``; the settings are
  also recorded under ``transformer_options["temporal_restore"]["sw_cfa"]``.
* Installing twice replaces (never stacks; ``_patching.install_attn1_replace``). A foreign attn1
  replace patch already on a block is kept and called for the attention itself, with SW-CFA's
  averaged keys/values (``_patching.fallback_attention``).
* The ControlNet's own UNet: ComfyUI runs it without ``transformer_options`` (comfy/cldm), so these
  patches never apply there; the ControlNet sees per-frame attention. Tested in test_tdm_nodes.
* Chunked sampling: windows use the absolute ``frame_index`` of the chunker but only frames present
  in the batch (pipelines/sw_cfa docstring).
"""
from __future__ import annotations

import logging

from comfy_api.latest import io

from ..pipelines import sw_cfa
from ._checks import UNET_FAMILIES, check_family
from ._patching import (Shared, chunk_layout, clone_with_options, fallback_attention, frame_index,
                        install_attn1_replace)

log = logging.getLogger("temporal_restore")

KEY = "sw_cfa"

# SD1.5's blocks holding a self-attention (for reference and tests; the patch reads them off the model)
SD15_ATTN1_BLOCKS = ([("input", i) for i in (1, 2, 4, 5, 7, 8)] + [("middle", 0)]
                     + [("output", i) for i in range(3, 12)])


class SWCFAAttention(Shared):
    """attn1 replace patch ``(q, k, v, extra_options) -> out`` (q, k, v already projected)."""

    def __init__(self, mode: str, radius: int, prev=None):
        self.mode, self.radius, self.prev = mode, int(radius), prev

    def __call__(self, q, k, v, extra_options, *args, **kwargs):
        n_chunks, frames = chunk_layout(extra_options, q.shape[0])
        index = frame_index(extra_options, frames)
        return sw_cfa.sw_cfa_attention(q, k, v, extra_options["n_heads"], n_chunks=n_chunks, mode=self.mode,
                                       radius=self.radius, index=index,
                                       attention=fallback_attention(self.prev, extra_options))


def attn1_blocks(model) -> list[tuple[str, int]]:
    """(block_name, number) of every UNet block holding a transformer whose attn1 is a self-attention,
    read off the model (SD1.5, SD2, SDXL: every transformer; the SD x4 upscaler: only its deepest level
    and the middle, its other levels' attn1 attend to the text, ``disable_self_attentions``). A patch
    keyed by (name, number) applies to every ``transformer_index`` of the block (SDXL: depth 2-10)."""
    from comfy.ldm.modules.attention import BasicTransformerBlock

    unet = model.get_model_object("diffusion_model")
    found = []
    for name, seq in (("input", unet.input_blocks), ("middle", [unet.middle_block]), ("output", unet.output_blocks)):
        for i, blk in enumerate(seq):
            if any(isinstance(m, BasicTransformerBlock) and not m.disable_self_attn for m in blk.modules()):
                found.append((name, i))
    return found


def parse_blocks(spec: str, available: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """``"all"`` or e.g. ``"input:1,2,4; middle:0; output:3-11"`` -> list of (block_name, number).
    Raises ValueError for unknown names, bad numbers or blocks without attention."""
    spec = (spec or "").strip().lower()
    if spec in ("", "all"):
        return list(available)
    out: list[tuple[str, int]] = []
    for part in spec.split(";"):
        part = part.strip()
        if not part:
            continue
        if ":" not in part:
            raise ValueError(f"blocks: expected 'all' or 'name:numbers; ...' (e.g. 'input:1,2; output:3-11'), got {part!r}")
        name, nums = (s.strip() for s in part.split(":", 1))
        if name not in ("input", "middle", "output"):
            raise ValueError(f"blocks: expected block names input/middle/output, got {name!r}")
        numbers = [b[1] for b in available if b[0] == name] if nums in ("", "all", "*") else []
        if not numbers:
            for tok in nums.split(","):
                tok = tok.strip()
                try:
                    if "-" in tok:
                        a, b = (int(x) for x in tok.split("-", 1))
                        numbers.extend(range(a, b + 1))
                    else:
                        numbers.append(int(tok))
                except ValueError:
                    raise ValueError(f"blocks: expected block numbers like '1,2' or '3-11' after {name}:, got {tok!r}") from None
        for n in numbers:
            if (name, n) not in available:
                raise ValueError(f"blocks: {name}:{n} has no self-attention in this model; "
                                 f"available: {available}")
            if (name, n) not in out:
                out.append((name, n))
    if not out:
        raise ValueError("blocks: no block selected")
    return out


def install_sw_cfa(model, mode: str = "sw_cfa", radius: int = 3, blocks: str = "all"):
    """Clone ``model`` and install SW-CFA on the selected attn1 blocks. Returns the clone."""
    if mode not in sw_cfa.MODES:
        raise ValueError(f"mode: expected one of {sw_cfa.MODES}, got {mode!r}")
    if int(radius) < 0:
        raise ValueError(f"radius: expected an integer >= 0, got {radius}")
    check_family(model, UNET_FAMILIES, "TR_SWCFAPatch")
    selected = parse_blocks(blocks, attn1_blocks(model))
    m = clone_with_options(model, KEY, {"mode": mode, "radius": int(radius), "blocks": selected})
    for name, number in selected:
        install_attn1_replace(m, KEY, lambda prev: SWCFAAttention(mode, radius, prev), name, number)
    log.debug("SW-CFA %s N=%d on %d blocks", mode, radius, len(selected))
    return m


class SWCFAPatch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TR_SWCFAPatch",
            display_name="Sliding-Window Cross-Frame Attention (Temporal Restore)",
            category="temporal_restore/attention",
            description="Sliding-window cross-frame attention (TDM): each frame's self-attention uses keys and "
                        "values averaged over its neighbouring frames, so restored frames stay consistent.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to patch (a patched clone is returned; the "
                                                 "input model is left untouched)."),
                io.Combo.Input("mode", options=list(sw_cfa.MODES), default="sw_cfa",
                               tooltip="sw_cfa: average keys/values over frames i-N..i+N (TDM Eq. 8). "
                                       "first_frame: every frame attends to the first frame (Text2Video-Zero). "
                                       "self: stock self-attention."),
                io.Int.Input("radius", default=3, min=0, max=64,
                             tooltip="Window radius N: frames i-N..i+N are averaged (clipped at the clip ends). "
                                     "0 is stock self-attention."),
                io.String.Input("blocks", default="all",
                                tooltip="Which self-attention blocks to patch: 'all', or e.g. "
                                        "'input:1,2,4,5,7,8; middle:0; output:3-11' (numbers of the model's own UNet "
                                        "blocks: these are SD1.5's; SDXL's are input:4,5,7,8; middle:0; output:0-5)."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, mode, radius, blocks) -> io.NodeOutput:
        return io.NodeOutput(install_sw_cfa(model, mode, radius, blocks))


NODES = [SWCFAPatch]
