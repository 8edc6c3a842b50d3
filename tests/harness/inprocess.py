"""In-process ComfyUI: the real node registry and PromptExecutor, without HTTP (boots in seconds).

The pack is loaded by ComfyUI itself from ``<base>/custom_nodes/temporal_restore`` (a symlink to the repo),
exactly as a user's install would load it.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import sys
import uuid

from . import paths


class _StubServer:
    """What PromptExecutor needs of PromptServer: a sink for progress and status messages."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.messages: list[tuple[str, dict]] = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))


class ComfyHost:
    def __init__(self, base: str):
        self.base = base
        if paths.COMFY_DIR not in sys.path:
            sys.path.insert(0, paths.COMFY_DIR)
        import comfy.options  # noqa: F401  (args are parsed from an empty list: set them below)
        from comfy.cli_args import args

        args.cpu = True
        args.base_directory = base
        args.disable_api_nodes = True
        args.database_url = "sqlite:///:memory:"
        import comfy.model_management  # noqa: F401
        # nodes.py puts ComfyUI/comfy first on sys.path; main.py imports the `utils` package before that
        # so comfy/utils.py cannot take its name. Do the same.
        import utils.install_util  # noqa: F401
        import execution
        import folder_paths
        import nodes

        assert folder_paths.base_path == base, "ComfyUI was imported before the harness set its base directory"
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
        self.nodes = nodes
        self.execution = execution
        self.server = _StubServer()
        # "ram_inactive" is read by ComfyUI 0.33+ (RAM-pressure release); older hosts ignore the extra key
        self.executor = execution.PromptExecutor(self.server, cache_type=execution.CacheType.CLASSIC,
                                                   cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
        if paths.PACK_LINK_NAME not in nodes.LOADED_MODULE_DIRS:
            raise RuntimeError(f"the temporal_restore pack did not load from {base}/custom_nodes")

    def node(self, node_id: str):
        return self.nodes.NODE_CLASS_MAPPINGS[node_id]

    def validate(self, prompt: dict):
        return asyncio.run(self.execution.validate_prompt(str(uuid.uuid4()), prompt, None))

    def run(self, prompt: dict, outputs: list[str] | None = None) -> dict:
        """Validate and execute an API-format prompt. Returns {"ui": history outputs, "outputs": {id: tuple}}
        where ``outputs`` holds the cached Python outputs of the requested node ids. Raises on failure with
        ComfyUI's own error text."""
        outputs = list(outputs or [])
        valid = self.validate(prompt)
        if not valid[0] and not (valid[1].get("type") == "prompt_no_outputs" and outputs):
            raise PromptError(f"prompt invalid: {valid[1]} {valid[3]}", valid)
        targets = list(valid[2]) if valid[0] else []
        validated: dict = {}
        for nid in outputs:  # non-output nodes asked for by the test: validate them the same way
            ok, reasons, *_ = asyncio.run(self.execution.validate_inputs("harness", prompt, nid, validated))
            if not ok:
                raise PromptError(f"node {nid} invalid: {reasons}", reasons)
            if nid not in targets:
                targets.append(nid)
        pid = str(uuid.uuid4())
        self.server.messages.clear()
        self.executor.execute(prompt, pid, {}, targets)
        if not self.executor.success:
            errors = [d for e, d in self.executor.status_messages if e == "execution_error"]
            raise PromptError(f"execution failed: {errors}", errors)
        result = {"ui": self.executor.history_result.get("outputs", {}), "outputs": {}}
        for nid in outputs or []:
            cached = self.executor.caches.outputs.get(nid)
            if inspect.isawaitable(cached):  # the cache's get() is a coroutine since ComfyUI 0.33
                cached = asyncio.run(cached)
            # ComfyUI stores each output slot as a list (list-batched execution); unwrap the usual single item
            result["outputs"][nid] = None if cached is None else tuple(
                o[0] if isinstance(o, list) and len(o) == 1 else o for o in cached.outputs)
        return result


class PromptError(RuntimeError):
    def __init__(self, message, details=None):
        super().__init__(message)
        self.details = details


def quiet_logs():
    logging.getLogger().setLevel(logging.WARNING)
