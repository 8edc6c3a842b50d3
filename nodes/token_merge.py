"""TR_TokenMerge: hybrid flow-guided spatial-aware token merging (DiffIR2VR-Zero Sec. 3.3) as an
attn1_patch (merge: the self-attention runs on fewer tokens) + attn1_output_patch (unmerge).

Settings live under ``transformer_options["temporal_restore"]["token_merge"]``; the two module-level
patch functions are added once (marked), so installing twice replaces the settings, never stacks.
"""
from __future__ import annotations

import logging
import threading

from comfy_api.latest import io

from ..pipelines import latent_warp as lw
from ..pipelines import token_merge as tm
from ._patching import (Shared, chunk_layout, clone_with_options, frame_index, install_attn1_output_patch,
                        install_attn1_patch, tr_options)
from ._checks import UNET_FAMILIES, check_family, check_flow, latent_factor
from ._types import FLOW
from ._flow_window import flow_window
from ._tiled import tile_of
from ..pipelines.tiling import tile_padding
from ._keyframe_inputs import keyframe_plan_inputs

log = logging.getLogger("temporal_restore")

KEY = "token_merge"


class TokenMergeConfig(Shared):
    """Immutable settings + caches (flow per token grid, flow-guided plans). Shared, not copied,
    by ``ModelPatcher.clone()``; the merge/unmerge hand-over between the two patches is thread-local."""

    def __init__(self, flow=None, ratio=0.75, chunk_size=lw.DEFAULT_BATCH, keyframe_mode=lw.DEFAULT_KEYFRAME_MODE,
                 seed=0, anneal_start=0.0, anneal_end=1.0, delta=1.0, radius=4.0, down_blocks="flow",
                 up_blocks="cosine", pad_bottom=0, pad_right=0, merge_mode="replace", levels="top2",
                 latent_factor=8):
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio: expected a value in [0,1], got {ratio}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size: expected >= 1, got {chunk_size}")
        for name, v in (("down_blocks", down_blocks), ("up_blocks", up_blocks)):
            if v not in tm.MATCH_MODES:
                raise ValueError(f"{name}: expected one of {tm.MATCH_MODES}, got {v!r}")
        if keyframe_mode not in lw.KEYFRAME_MODES:
            raise ValueError(f"keyframe_mode: expected one of {lw.KEYFRAME_MODES}, got {keyframe_mode!r}")
        if merge_mode not in tm.MERGE_MODES:
            raise ValueError(f"merge_mode: expected one of {tm.MERGE_MODES}, got {merge_mode!r}")
        if levels not in tm.LEVELS:
            raise ValueError(f"levels: expected one of {tm.LEVELS}, got {levels!r}")
        self.merge_mode, self.levels = merge_mode, levels
        if delta <= 0:
            raise ValueError(f"delta: expected > 0, got {delta}")
        self.flow, self.ratio, self.chunk_size = flow, float(ratio), int(chunk_size)
        self.keyframe_mode, self.seed = keyframe_mode, int(seed)
        self.anneal_start, self.anneal_end, self.delta = float(anneal_start), float(anneal_end), float(delta)
        self.radius, self.down_blocks, self.up_blocks = float(radius), down_blocks, up_blocks
        self.pad_bottom, self.pad_right = int(pad_bottom), int(pad_right)
        self.set_latent_factor(latent_factor)
        self._windows, self._plans = {}, {}
        self._lock = threading.Lock()
        self._local = threading.local()

    def set_latent_factor(self, factor: int) -> None:
        """Padding (image pixels) as latent cells at ``factor`` image pixels per cell (nodes/_checks.LATENT_PIXELS
        of the model's family); called before the config is installed on a model."""
        f = int(factor)
        for name, pad in (("pad_bottom", self.pad_bottom), ("pad_right", self.pad_right)):
            if pad % f:  # padding is removed on the latent grid: a partial latent row cannot be
                raise ValueError(f"{name}: expected a multiple of {f} pixels (one latent cell), got {pad}")
        self.pad_cells = (self.pad_bottom // f, self.pad_right // f)  # (bottom, right) on the latent grid

    def ratio_at(self, step: int, n_steps: int) -> float:
        """Eq. 8 with i_beg / i_end given as fractions of the run's steps."""
        return tm.merge_ratio(step, self.ratio, self.anneal_start * n_steps, self.anneal_end * n_steps, self.delta)

    def flow_window(self, idx, h, w, device, tile=None):
        return flow_window(self, idx, h, w, device, tile)

    @property
    def pending(self):
        return getattr(self._local, "pending", None)

    @pending.setter
    def pending(self, value):
        self._local.pending = value


def _token_grid(extra_options, n_tokens):
    shape = extra_options.get("activations_shape")
    if shape is not None and len(shape) == 4 and shape[2] * shape[3] == n_tokens:
        return int(shape[2]), int(shape[3])
    orig = extra_options.get("original_shape")
    if orig is not None and len(orig) == 4:
        H, W = orig[2], orig[3]
        for ds in (1, 2, 4, 8, 16, 32):
            h, w = -(-H // ds), -(-W // ds)
            if h * w == n_tokens:
                return h, w
    return None


def token_merge_attn1_patch(n, context, value, extra_options, *args, **kwargs):
    cfg = tr_options(extra_options).get(KEY)
    if cfg is None:
        return n, context, value
    cfg.pending = None
    if context is not n or value is not n or n.ndim != 3:
        return n, context, value  # not plain self-attention (or already rewritten by another patch)
    step, n_steps = lw.step_index(extra_options.get("sigmas", 0.0), extra_options.get("sample_sigmas"))
    r = cfg.ratio_at(step, n_steps)
    if r <= 0:
        return n, context, value
    B, N, _ = n.shape
    grid = _token_grid(extra_options, N)
    if grid is None:
        return n, context, value
    h, w = grid
    orig = extra_options.get("original_shape") or [B, 4, h, w]
    block = extra_options.get("block") or ("input", 0)
    if not tm.merge_level(block, h, w, orig[2], orig[3], cfg.levels):
        return n, context, value
    n_chunks, frames = chunk_layout(extra_options, B)
    if frames < 2:
        return n, context, value
    idx = frame_index(extra_options, frames)
    tile = tile_of(extra_options)  # TR_TiledSampling: flows and padding in the tile's coordinates
    mode = cfg.up_blocks if block[0] == "output" else cfg.down_blocks
    flow = None
    if mode == "flow":
        if cfg.flow is None:
            mode = "cosine"
        else:
            win, lo = cfg.flow_window(idx, h, w, n.device, tile)

            def flow(a, b, _win=win, _lo=lo):
                return _win.between(a - _lo, b - _lo)
    pad_b, pad_r = tile_padding(tile, *cfg.pad_cells)
    valid = tm.valid_token_mask(h, w, orig[2], orig[3], pad_b, pad_r)
    if valid is not None:
        valid = valid.to(n.device)
    plan_key = None
    if mode == "flow":
        plan_key = (h, w, n_chunks, tuple(idx), round(r, 6), str(n.device), tile)
        plan = cfg._plans.get(plan_key)
    else:
        plan = None
    if plan is None:
        plan = tm.plan_merge(n, n_chunks, h, w, idx, r, chunk_size=cfg.chunk_size, mode=mode, flow=flow,
                             R=cfg.radius, keyframe_mode=cfg.keyframe_mode, seed=cfg.seed, valid=valid,
                             merge_mode=cfg.merge_mode, num_frames=None if cfg.flow is None else cfg.flow.num_frames,
                             max_cost=tm.AUTO_MAX_COST if cfg.levels == "auto" else None)
        if plan_key is not None and plan is not None:
            with cfg._lock:
                if len(cfg._plans) > 64:
                    cfg._plans.clear()
                cfg._plans[plan_key] = plan
    if plan is None:
        return n, context, value
    merge, unmerge = plan
    m = merge(n)
    cfg.pending = (unmerge, m.shape)
    return m, m, m



def token_merge_attn1_output_patch(n, extra_options, *args, **kwargs):
    cfg = tr_options(extra_options).get(KEY)
    if cfg is None:
        return n
    pending, cfg.pending = cfg.pending, None
    if pending is None:
        return n
    unmerge, shape = pending
    if tuple(n.shape[:2]) != tuple(shape[:2]):
        raise RuntimeError(f"token merge: attention output {tuple(n.shape)} does not match the merged tokens "
                           f"{tuple(shape)} (another patch changed the token layout)")
    return unmerge(n)



def install_token_merge(model, cfg: TokenMergeConfig):
    """Clone of ``model`` with the token-merge settings and (once) the two attention patches."""
    m = clone_with_options(model, KEY, cfg)
    if m.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn1"):
        log.warning("temporal_restore: TR_TokenMerge on a model with attn1 replacement patches (e.g. SW-CFA): those "
                    "see the merged token chunks instead of per-frame batches; prefer one of the two")
    install_attn1_patch(m, KEY, token_merge_attn1_patch)
    return install_attn1_output_patch(m, KEY, token_merge_attn1_output_patch)


class TokenMerge(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TR_TokenMerge",
            display_name="Token Merge (Temporal Restore)",
            category="temporal_restore/patches",
            description="Hybrid flow-guided spatial-aware token merging (DiffIR2VR-Zero): before self-attention the "
                        "tokens of each frame chunk are merged into a keyframe (flow matches in down blocks, "
                        "spatially weighted cosine matches in up blocks), attention runs on fewer tokens, and the "
                        "result is copied back (replacement unmerging).",
            inputs=[
                io.Model.Input("model", tooltip="The model to patch (a clone is patched)."),
                FLOW.Input("flow", optional=True,
                           tooltip="Flow of the same clip (TR_FlowEstimate) for flow-guided matching; without it "
                                   "every block uses cosine matching."),
                io.Float.Input("ratio", default=0.75, min=0.0, max=1.0, step=0.01,
                               tooltip="Merge ratio r: share of the non-keyframe tokens of a chunk merged into the "
                                       "keyframe (0 = off, bit-identical to the unpatched model)."),
                *keyframe_plan_inputs("chunk_size", "chunk", 64, "TR_LatentWarp"),
                io.Float.Input("anneal_start", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Eq. 8 i_beg as a fraction of the steps: full ratio until here."),
                io.Float.Input("anneal_end", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Eq. 8 i_end as a fraction of the steps: the ratio has decayed to 0 here "
                                       "(with delta 1). anneal_end <= anneal_start disables annealing."),
                io.Float.Input("delta", default=1.0, min=0.01, max=100.0, step=0.01,
                               tooltip="Eq. 8 annealing speed: larger reaches 0 sooner."),
                io.Float.Input("radius", default=4.0, min=0.0, max=64.0, step=0.5,
                               tooltip="Eq. 7 R (token units squared): uniform-weight radius of spatially weighted "
                                       "cosine matching; also sets the matching window (ceil(sqrt(2R)) tokens)."),
                io.Combo.Input("down_blocks", options=list(tm.MATCH_MODES), default="flow",
                               tooltip="Matching in UNet down (input) blocks (and the middle block with levels all): flow "
                                       "(paper) or cosine."),
                io.Combo.Input("up_blocks", options=list(tm.MATCH_MODES), default="cosine",
                               tooltip="Matching in UNet up (output) blocks: cosine (paper) or flow."),
                io.Int.Input("pad_bottom", default=0, min=0, max=4096, step=8,
                             tooltip="Padding (image pixels) added at the bottom before sampling; those tokens are "
                                     "excluded from matching. Pixels of the frames the latent was made from: 8 per "
                                     "latent row (SD1.5/2.x/SDXL VAE); SD x4 upscaler: the low-res frames, 1 per row."),
                io.Int.Input("pad_right", default=0, min=0, max=4096, step=8,
                             tooltip="Padding (image pixels) added at the right; excluded from matching."),
                io.Combo.Input("merge_mode", options=list(tm.MERGE_MODES), default="replace", optional=True,
                               tooltip="replace: a merged token is the keyframe token alone (official code; the "
                                       "paper's appendix found averaging blurrier). mean: average of the keyframe "
                                       "token and the tokens merged into it (this pack's earlier default)."),
                io.Combo.Input("levels", options=list(tm.LEVELS), default="top2", optional=True,
                               tooltip="top2: merge only at the two highest resolutions, never in the middle block "
                                       "(official code). all: every self-attention layer (earlier default). auto: the top2 "
                                       "layers with at least 64 tokens per frame (merging smaller grids costs more than "
                                       "it saves), and only while the merged chunk's joint attention costs less than "
                                       "per-frame attention (at a low or annealed ratio it costs more: 8 frames at "
                                       "512 px, r 0.3, 4.9x). With "
                                       "replace / top2 / chunk 10 middle the demo model's token-merging row went from "
                                       "PSNR 24.47, warping error 0.0331, flicker 0.0075 to 24.43, 0.0330, 0.0073 "
                                       "(scripts/evaluate.py --groups diffir2vr)."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, flow=None, ratio=0.75, chunk_size=lw.DEFAULT_BATCH, keyframe_mode=lw.DEFAULT_KEYFRAME_MODE,
                seed=0, anneal_start=0.0, anneal_end=1.0, delta=1.0, radius=4.0, down_blocks="flow",
                up_blocks="cosine", merge_mode="replace", levels="top2", pad_bottom=0, pad_right=0) -> io.NodeOutput:
        check_flow(flow, "flow")
        cfg = TokenMergeConfig(flow, ratio, chunk_size, keyframe_mode, seed, anneal_start, anneal_end, delta, radius,
                               down_blocks, up_blocks, pad_bottom, pad_right, merge_mode, levels, latent_factor=1)
        check_family(model, UNET_FAMILIES, "TR_TokenMerge")
        cfg.set_latent_factor(latent_factor(model, "TR_TokenMerge"))  # padding on this family's latent grid
        return io.NodeOutput(install_token_merge(model, cfg))


NODES = [TokenMerge]
