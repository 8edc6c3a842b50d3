"""TR_TaskPromptControlNet: TDM's task-prompt-guided ControlNet (§2.2) in one loader node.

Loads a ControlNet (ComfyUI's own ``comfy.controlnet.load_controlnet``), encodes the task prompt
("remove the haze", ...) and an optional negative prompt with the CLIP, and applies the ControlNet
to both with the degraded frames as hint (the same ``set_cond_hint`` path as ControlNetApplyAdvanced).

Per-frame hints: ComfyUI's ControlNet resizes the hint batch and, when its length differs from the
latent batch, takes the first ``frames`` hint images and repeats them per cond/uncond chunk
(``broadcast_image_to``). That is right only when the hint batch is exactly the latent batch. The
ControlNet applied here is frame-aligned instead:

* one hint image: broadcast to every frame (stock behaviour);
* N hint images and no ``frame_index``: N must equal the frames per chunk, hint i drives latent i;
* with ``transformer_options["temporal_restore"]["frame_index"]`` (a chunker sampling a window of
  a longer clip): the hint frames ``image[frame_index]`` are used for the window, so the hint follows
  the same frames as the latents (re-prepared whenever the window changes);
* anything else raises ValueError naming ``image`` rather than silently pairing wrong frames.

The ControlNet file is loaded once and kept in a small pack-level cache (nodes/_model_cache.py,
keyed by path + mtime + size): re-running with another prompt or strength reads no file.

Only this node's ControlNet is aligned; ControlNets chained before it (``previous_controlnet``)
keep the stock behaviour.
"""
from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from ..pipelines import tasks
from ._checks import check_frames
from ._model_cache import load_cached
from ._patching import resolve_frame_index, tr_options

log = logging.getLogger("temporal_restore")

# combo label -> prompt (labels and prompts from pipelines/tasks.py; "custom" takes custom_prompt)
TASK_PROMPTS = {**{label: tasks.TASK_PROMPTS[task] for task, label in tasks.NODE_LABELS.items()}, "custom": None}

_UNSET = object()


class FrameAlignedControlMixin:
    """Mixed in front of the loaded ControlNet's class: hints follow the latent frames."""

    _tr_full_hint = None
    _tr_key = _UNSET

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options=None, *args, **kwargs):
        full = self._tr_full_hint
        if full is not None and full.shape[0] > 1:
            frames = x_noisy.shape[0] // max(int(batched_number), 1)
            idx = tr_options(transformer_options).get("frame_index")
            if idx is not None:
                idx = resolve_frame_index(idx, frames)
                if min(idx) < 0 or max(idx) >= full.shape[0]:
                    raise ValueError(f"image: the ControlNet hint has {full.shape[0]} frames but the sampled window "
                                     f"needs frames {min(idx)}..{max(idx)}; give one hint frame per video frame")
                key = tuple(idx)
            else:
                if full.shape[0] != frames:
                    raise ValueError(f"image: the ControlNet hint has {full.shape[0]} frames but the latent batch has "
                                     f"{frames}; give one hint frame per latent frame (or a single frame)")
                key = None
            if key != self._tr_key:
                self.cond_hint_original = full if key is None else full[list(key)]
                self.cond_hint = None  # re-prepared (resized / preprocessed) for these frames
                self._tr_key = key
        return super().get_control(x_noisy, t, cond, batched_number, transformer_options, *args, **kwargs)

    def cleanup(self):
        super().cleanup()
        self._tr_key = _UNSET

    def copy(self):
        c = super().copy()
        make_frame_aligned(c, self._tr_full_hint)
        return c


_ALIGNED_CLASSES: dict[type, type] = {}


def make_frame_aligned(control, full_hint):
    """Turn a ComfyUI ControlBase instance (after ``set_cond_hint``) into a frame-aligned one."""
    base = type(control)
    if not issubclass(base, FrameAlignedControlMixin):
        cls = _ALIGNED_CLASSES.get(base)
        if cls is None:
            cls = type(f"TRFrameAligned{base.__name__}", (FrameAlignedControlMixin, base), {})
            _ALIGNED_CLASSES[base] = cls
        control.__class__ = cls
    control._tr_full_hint = full_hint
    control.cond_hint_original = full_hint
    control._tr_key = _UNSET
    return control


def apply_controlnet(positive, negative, control_net, image: torch.Tensor, strength: float,
                     start_percent: float, end_percent: float, vae=None):
    """ControlNetApplyAdvanced with a frame-aligned ControlNet. ``image`` is IMAGE ``[F, H, W, C]``."""
    check_frames(image, "image")
    if not 0.0 <= start_percent <= end_percent <= 1.0:
        raise ValueError(f"start_percent/end_percent: expected 0 <= start <= end <= 1, got {start_percent}, {end_percent}")
    if strength == 0:
        return positive, negative
    hint = image.movedim(-1, 1)
    cnets = {}
    out = []
    for conditioning in (positive, negative):
        c = []
        for emb, opts in conditioning:
            d = opts.copy()
            prev = d.get("control", None)
            if prev not in cnets:
                cn = control_net.copy().set_cond_hint(hint, strength, (start_percent, end_percent), vae=vae)
                cn.set_previous_controlnet(prev)
                cnets[prev] = make_frame_aligned(cn, hint)
            d["control"] = cnets[prev]
            d["control_apply_to_uncond"] = False
            c.append([emb, d])
        out.append(c)
    return out[0], out[1]


def task_prompt(task: str, custom_prompt: str) -> str:
    if task not in TASK_PROMPTS:
        raise ValueError(f"task: expected one of {list(TASK_PROMPTS)}, got {task!r}")
    text = TASK_PROMPTS[task]
    if text is None:
        text = (custom_prompt or "").strip()
        if not text:
            raise ValueError("custom_prompt: expected a task description (e.g. 'remove the snow') when task is 'custom'")
    return text


class TaskPromptControlNet(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        import folder_paths

        return io.Schema(
            node_id="TR_TaskPromptControlNet",
            display_name="Task-Prompt ControlNet (Temporal Restore)",
            category="temporal_restore/conditioning",
            description="TDM task-prompt-guided ControlNet: loads the restoration ControlNet, encodes the task "
                        "prompt and applies the ControlNet with the degraded frames as per-frame hints.",
            inputs=[
                io.Combo.Input("control_net_name", options=folder_paths.get_filename_list("controlnet"),
                               tooltip="The restoration ControlNet (e.g. TDM's fine-tuned tile ControlNet) from models/controlnet."),
                io.Clip.Input("clip", tooltip="Text encoder used for the task prompt and the negative prompt."),
                io.Image.Input("image", tooltip="The degraded frames used as ControlNet hints: one per latent frame "
                                                "(in the same order), or a single image for all frames."),
                io.Combo.Input("task", options=list(TASK_PROMPTS), default="denoise",
                               tooltip="Restoration task; selects the task prompt ('remove the haze', ...). "
                                       "'custom' uses custom_prompt."),
                io.String.Input("custom_prompt", default="", multiline=False,
                                tooltip="Task prompt used when task is 'custom' (ignored otherwise)."),
                io.String.Input("negative_prompt", default="", multiline=False,
                                tooltip="Negative prompt (empty by default)."),
                io.Float.Input("strength", default=1.0, min=0.0, max=10.0, step=0.01,
                               tooltip="ControlNet strength (0 disables the ControlNet)."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Fraction of the sampling where the ControlNet starts acting."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Fraction of the sampling where the ControlNet stops acting."),
                io.Vae.Input("vae", optional=True,
                             tooltip="Only for ControlNets that need a VAE to encode their hint (not SD1.5 ones)."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive"),
                io.Conditioning.Output(display_name="negative"),
                io.ControlNet.Output(display_name="control_net"),
            ],
        )

    @classmethod
    def execute(cls, control_net_name, clip, image, task, custom_prompt, negative_prompt, strength,
                start_percent, end_percent, vae=None) -> io.NodeOutput:
        import comfy.controlnet
        import folder_paths

        text = task_prompt(task, custom_prompt)
        path = folder_paths.get_full_path("controlnet", control_net_name)
        if path is None:
            raise ValueError(f"control_net_name: no file {control_net_name!r} in ComfyUI's controlnet model folders "
                             f"({', '.join(folder_paths.get_folder_paths('controlnet'))})")
        # cached by path + mtime + size: a changed prompt or setting re-runs this node but reads no file
        control_net = load_cached(path, comfy.controlnet.load_controlnet)
        if control_net is None:
            raise ValueError(f"control_net_name: {control_net_name!r} is not a valid ControlNet file")
        if clip is None:
            raise ValueError("clip: expected a CLIP text encoder (the checkpoint has none)")
        positive = clip.encode_from_tokens_scheduled(clip.tokenize(text))
        negative = clip.encode_from_tokens_scheduled(clip.tokenize(negative_prompt or ""))
        positive, negative = apply_controlnet(positive, negative, control_net, image, strength,
                                              start_percent, end_percent, vae=vae)
        return io.NodeOutput(positive, negative, control_net)


NODES = [TaskPromptControlNet]
