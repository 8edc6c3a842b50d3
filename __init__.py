"""Temporal Restore: flicker-free video restoration nodes for ComfyUI.

ComfyUI imports this folder as a package and calls ``comfy_entrypoint``. Nothing here imports
ComfyUI at module import time, so ``pipelines`` stays usable without it.
"""


async def comfy_entrypoint():
    import folder_paths

    from .nodes import run_files

    from .nodes import TemporalRestoreExtension
    from .nodes._sample_inputs import provide_sample_inputs

    run_files.register()  # the runner's cleanup route (tr_cli)
    provide_sample_inputs(folder_paths.get_input_directory())  # the bundled workflows' video inputs
    return TemporalRestoreExtension()
