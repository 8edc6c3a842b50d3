"""Shared fixtures: the pack as a package, an in-process ComfyUI, a real headless server, tiny models."""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest

# One math thread per process: the suite runs an in-process ComfyUI and a server side by side on a
# 2-core machine, and oversubscribed OpenMP threads spin-wait (a tiny-UNet step went from 0.3 s to 5 s).
# The server subprocesses inherit this. Override with TR_TEST_THREADS.
os.environ["OMP_NUM_THREADS"] = os.environ.get("TR_TEST_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")
PACK = "temporal_restore"


def _register_pack() -> None:
    """Import the repo as the package ``temporal_restore`` without putting the repo on sys.path
    (its ``nodes/`` would shadow ComfyUI's ``nodes`` module)."""
    if PACK in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(PACK, os.path.join(REPO, "__init__.py"),
                                                  submodule_search_locations=[REPO])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = mod
    spec.loader.exec_module(mod)


_register_pack()


def _register_cli() -> None:
    """The headless runner package, importable as ``tr_cli`` (again without the repo on sys.path)."""
    if "tr_cli" in sys.modules:
        return
    spec = importlib.util.spec_from_file_location("tr_cli", os.path.join(REPO, "tr_cli", "__init__.py"),
                                                  submodule_search_locations=[os.path.join(REPO, "tr_cli")])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["tr_cli"] = mod
    spec.loader.exec_module(mod)


_register_cli()
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from harness import fixtures as _fixtures  # noqa: E402  (fixtures defined in tests/harness)

comfy_host = _fixtures.comfy_host
tiny = _fixtures.tiny
tiny_by_family = _fixtures.tiny_by_family
tiny_sd15_loaded = _fixtures.tiny_sd15_loaded
server = _fixtures.server
sample_clip = _fixtures.sample_clip


def pytest_collection_modifyitems(config, items):
    """Every test that uses the real server (directly or through another fixture) is marked ``server``,
    so the fast tier (``-m "not server and not browser and not slow"``) never starts one."""
    for item in items:
        if "server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.server)
