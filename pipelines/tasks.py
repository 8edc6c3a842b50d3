"""The restoration tasks and their prompts, in one place (TDM §2.2, Task Prompt Guidance: the ControlNet is
told the task in words, "remove the noise", ...).

Read by the ``TR_TaskPromptControlNet`` node (its ``task`` combo shows ``NODE_LABELS``), by the trainers
(``pipelines.train_tasks`` re-exports these names) and by the evaluation scripts. Pure Python.
"""
from __future__ import annotations

#: task name (``pipelines.degrade``) -> task prompt (TDM §2.2 Task Prompt Guidance)
TASK_PROMPTS = {
    "denoise": "remove the noise",
    "sr_x4": "increase the resolution",
    "derain": "remove the rain",
    "deblur": "remove the blur",
    "jpeg": "remove the compression artifacts",
    "dehaze": "remove the haze",
    "low_light": "brighten the image",
}
DEMO_TASKS = ("denoise", "sr_x4", "derain", "deblur")
#: another task whose prompt is the "wrong task prompt" of the TPG ablation (TDM Table 4, harsher form)
WRONG_TASK = {"denoise": "derain", "sr_x4": "denoise", "derain": "deblur", "deblur": "sr_x4"}

#: task name -> the label of the ``task`` combo of ``TR_TaskPromptControlNet`` (published in saved workflows:
#: never rename a label), in the combo's order
NODE_LABELS = {
    "dehaze": "dehaze",
    "derain": "derain",
    "denoise": "denoise",
    "jpeg": "deblock (MP4 de-compression)",
    "sr_x4": "super-resolution",
    "deblur": "deblur",
    "low_light": "low light",
}
