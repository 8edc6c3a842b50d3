"""TR_DemoModelLoader: the pack's embedded demo model (models/demo/) as MODEL, CLIP, VAE, CONTROL_NET.

A small SD1.5-architecture model trained on the CPU by ``scripts/train_demo_model.py`` (see
``models/demo/README.md``): lets every workflow of the pack run on a fresh machine without downloading a
checkpoint. The objects are built with ComfyUI's own classes from a pack-local SD15 model config
(``nodes/_demo_arch.py``), which is never registered in ``comfy.supported_models.models``.
"""
from __future__ import annotations

import logging
import os

from comfy_api.latest import io

from . import _demo_arch as arch

log = logging.getLogger("temporal_restore")


class DemoModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TR_DemoModelLoader",
            display_name="Load Demo Model (Temporal Restore)",
            category="temporal_restore/loaders",
            description="Loads the pack's embedded demo restorer (small SD1.5-architecture UNet, CLIP with the SD1 "
                        "tokenizer, TAESD-shaped VAE and a task-prompt ControlNet) from models/demo/. It was trained on clips "
                        "upsampled x2 (ImageScaleBy 2 bicubic before VAEEncode and the ControlNet hint, area 0.5 "
                        "after VAEDecode, as the demo_restore workflow does): its tiny VAE loses native-size detail.",
            inputs=[
                io.String.Input("directory", default="", optional=True,
                                tooltip="Folder holding demo_sd15.safetensors and demo_controlnet.safetensors; "
                                        "empty = the pack's models/demo/."),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL"),
                io.Clip.Output(display_name="CLIP"),
                io.Vae.Output(display_name="VAE"),
                io.ControlNet.Output(display_name="CONTROL_NET"),
            ],
        )

    @classmethod
    def execute(cls, directory="") -> io.NodeOutput:
        folder = os.path.abspath(os.path.expanduser(directory.strip())) if directory and directory.strip() else arch.DEMO_DIR
        if not os.path.isdir(folder):
            raise ValueError(f"directory: {folder!r} is not a folder (leave it empty for the pack's models/demo/)")
        try:
            import folder_paths

            emb = folder_paths.get_folder_paths("embeddings")
        except Exception:  # pragma: no cover - outside a ComfyUI process
            emb = None
        model, clip, vae, control = arch.load_demo(folder, embedding_directory=emb)
        log.info("temporal_restore: demo model loaded from %s", folder)
        return io.NodeOutput(model, clip, vae, control)


NODES = [DemoModelLoader]
