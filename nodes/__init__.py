"""ComfyUI-facing side of the pack: V3 node classes and the hooks that patch ModelPatcher.

Every module in this package that defines ``NODES`` (a list of ``io.ComfyNode`` classes) is
collected here, so a feature adds its nodes by adding one module and nothing else.
"""
import importlib
import logging
import pkgutil

from comfy_api.latest import ComfyExtension, io

log = logging.getLogger("temporal_restore")


def collect_nodes() -> list[type[io.ComfyNode]]:
    found: list[type[io.ComfyNode]] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        found.extend(getattr(module, "NODES", []))
    ids = [n.define_schema().node_id for n in found]
    dupes = {i for i in ids if ids.count(i) > 1}
    if dupes:
        raise RuntimeError(f"duplicate node ids in temporal_restore: {sorted(dupes)}")
    return found


class TemporalRestoreExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        nodes = collect_nodes()
        log.info("temporal_restore: %d nodes", len(nodes))
        return nodes
