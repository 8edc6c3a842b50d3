"""TR_SaveVideo: SaveVideo that never leaves a truncated file looking finished.

Core SaveVideo encodes straight into the final name, so a restore killed mid-encode leaves a short,
playable-looking file. Here the encoder writes `<name>.partial.<ext>` and the file is renamed only once
the container is closed; a killed run leaves at most a `.partial` file, never a finished-looking one.
"""
import logging
import os

import folder_paths
from comfy.cli_args import args
from comfy_api.latest import Types, io, ui

from ._checks import check_output_prefix

log = logging.getLogger("temporal_restore")


def _metadata(hidden):
    if args.disable_metadata:
        return None
    meta = {}
    if hidden.extra_pnginfo is not None:
        meta.update(hidden.extra_pnginfo)
    if hidden.prompt is not None:
        meta["prompt"] = hidden.prompt
    return meta or None


class SaveVideoAtomic(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TR_SaveVideo",
            display_name="Save Video Atomically (Temporal Restore)",
            category="temporal_restore/io",
            description="Saves a video to the output folder; the file appears under its final name only when complete.",
            inputs=[
                io.Video.Input("video", tooltip="The restored video (e.g. from CreateVideo, with the source audio)."),
                io.String.Input("filename_prefix", default="temporal_restore/restored",
                                tooltip="Prefix of the file in ComfyUI's output folder (subfolders allowed)."),
                io.Combo.Input("format", options=Types.VideoContainer.as_input(), default="auto", tooltip="Container format."),
                io.Combo.Input("codec", options=Types.VideoCodec.as_input(), default="auto", tooltip="Video codec."),
            ],
            outputs=[],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, video, filename_prefix, format, codec) -> io.NodeOutput:
        check_output_prefix(filename_prefix, "filename_prefix")
        width, height = video.get_dimensions()
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory(), width, height)
        ext = Types.VideoContainer.get_extension(format)
        final = f"{filename}_{counter:05}_.{ext}"
        partial = os.path.join(folder, f"{filename}_{counter:05}_.partial.{ext}")
        try:
            video.save_to(partial, format=format, codec=codec, metadata=_metadata(cls.hidden))
            os.replace(partial, os.path.join(folder, final))
        except BaseException:
            if os.path.exists(partial):
                os.remove(partial)
            raise
        log.info("saved %s", os.path.join(folder, final))
        return io.NodeOutput(ui=ui.PreviewVideo([ui.SavedResult(final, subfolder, io.FolderType.output)]))


NODES = [SaveVideoAtomic]
