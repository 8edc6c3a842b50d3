"""Temporal Restore: flicker-free video restoration nodes for ComfyUI.

ComfyUI imports this folder as a package and calls ``comfy_entrypoint``. Nothing here imports
ComfyUI at module import time, so ``pipelines`` stays usable without it.
"""


async def comfy_entrypoint():
    from .nodes import TemporalRestoreExtension
    from .nodes import run_files

    run_files.register()  # the runner's cleanup route (tr_cli)

    return TemporalRestoreExtension()
