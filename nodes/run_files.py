"""An HTTP route for the headless runner (tr_cli): delete the files one run put on the server.

ComfyUI has no endpoint that deletes an uploaded input or an output. Every file the runner puts on the
server (the uploaded clip or segments, the restored frames, the metrics) carries the run's random tag in its
name under a ``temporal_restore/`` folder, so ``POST /temporal_restore/cleanup {"tag": "<hex>"}`` removes
exactly those files and nothing else (the tag must be 16+ hex digits; only the pack's folders are searched).
"""
from __future__ import annotations

import logging
import os
import re

log = logging.getLogger("temporal_restore")

SUBFOLDER = "temporal_restore"
_TAG = re.compile(r"^[0-9a-f]{16,64}$")
_registered = False


def remove_tagged(roots: list[str], tag: str) -> int:
    """Delete files whose name contains ``tag`` under ``<root>/temporal_restore`` for each root."""
    if not _TAG.match(tag or ""):
        raise ValueError(f"tag: expected 16 to 64 lowercase hex digits, got {tag!r}")
    removed = 0
    for root in roots:
        top = os.path.join(root, SUBFOLDER)
        for folder, _, files in os.walk(top):
            for name in files:
                if tag in name:
                    os.remove(os.path.join(folder, name))
                    removed += 1
    return removed


def register() -> None:
    """Add the route to ComfyUI's server (once; nothing to do when no server runs, e.g. in-process)."""
    global _registered
    if _registered:
        return
    try:
        import folder_paths
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return
    instance = getattr(PromptServer, "instance", None)
    if instance is None or not hasattr(instance, "routes"):
        return

    @instance.routes.post("/temporal_restore/cleanup")
    async def cleanup(request):
        try:
            tag = (await request.json()).get("tag", "")
            roots = [folder_paths.get_input_directory(), folder_paths.get_output_directory(),
                     folder_paths.get_temp_directory()]
            removed = remove_tagged(roots, tag)
        except ValueError as e:
            return web.json_response({"error": str(e)}, status=400)
        log.debug("cleanup %s: removed %d files", tag, removed)
        return web.json_response({"removed": removed})

    _registered = True
