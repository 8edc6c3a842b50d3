"""Layering of the pack's code, read from the sources (no ComfyUI needed): what may import what.

* ``nodes/``: a node module (no leading ``_``) imports ``pipelines`` and ``nodes/_*`` helpers, never
  another node module (shared code belongs in a helper, e.g. conditioning slicing in ``_conditioning``);
* the runtime (``nodes/``) never imports a training module (``pipelines/train_tasks``): the demo loader
  reads the architecture from ``pipelines/demo_spec``;
* ``pipelines/`` never imports ``comfy`` (or ComfyUI's ``folder_paths`` / ``comfy_api``).
"""
from __future__ import annotations

import ast
import os

import pytest

from harness.paths import REPO


def _modules(folder):
    d = os.path.join(REPO, folder)
    return sorted(f[:-3] for f in os.listdir(d) if f.endswith(".py"))


def _imports(folder, mod):
    """(level, module, names) of every import of ``folder/mod.py`` (function-level imports included)."""
    tree = ast.parse(open(os.path.join(REPO, folder, mod + ".py")).read())
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom):
            out.append((n.level, n.module or "", [a.name for a in n.names]))
        elif isinstance(n, ast.Import):
            out.extend((0, a.name, []) for a in n.names)
    return out


def _pack_targets(level, module, names):
    """Pack modules named by a relative import seen from nodes/: ("nodes", x) or ("pipelines", x)."""
    if level == 1:
        return [("nodes", module.split(".")[0])] if module else [("nodes", n) for n in names]
    if level == 2:
        parts = module.split(".") if module else []
        if parts[:1] == ["pipelines"]:
            return [("pipelines", parts[1])] if len(parts) > 1 else [("pipelines", n) for n in names]
    return []


@pytest.mark.parametrize("mod", [m for m in _modules("nodes") if m != "__init__"])
def test_node_modules_import_helpers_and_pipelines_only(mod):
    for imp in _imports("nodes", mod):
        for folder, target in _pack_targets(*imp):
            if folder == "nodes":
                assert target.startswith("_"), f"nodes/{mod}.py imports the node module nodes/{target}.py"
            assert (folder, target) != ("pipelines", "train_tasks"), \
                f"nodes/{mod}.py imports the training module pipelines/train_tasks.py"


def test_pipelines_never_import_comfyui_even_lazily():
    """test_pipelines_standalone imports every module without ComfyUI; this also sees imports inside
    functions, which only run later."""
    bad = [(mod, module) for mod in _modules("pipelines") for level, module, _ in _imports("pipelines", mod)
           if level == 0 and module.split(".")[0] in ("comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes")]
    assert not bad
