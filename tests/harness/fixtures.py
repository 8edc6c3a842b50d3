"""pytest fixtures shared by every test file (re-exported by tests/conftest.py)."""
from __future__ import annotations

import os

import pytest

from . import paths

SAMPLE_CLIP = os.path.join(paths.REPO, "samples", "sample_clip.mp4")


def _require_host():
    if not os.path.exists(os.path.join(paths.COMFY_DIR, "main.py")):
        pytest.fail(f"host ComfyUI missing at {paths.COMFY_DIR}: run `bash scripts/setup.sh` first")


@pytest.fixture(scope="session")
def comfy_host():
    """In-process ComfyUI with the pack and the tiny models (one per test session)."""
    _require_host()
    from .inprocess import ComfyHost

    base = paths.base_dir("inprocess")
    host = ComfyHost(base)
    import tiny_models

    tiny_models.register()
    host.tiny = tiny_models.build(os.path.join(base, "models"))
    return host


@pytest.fixture(scope="session")
def tiny(comfy_host):
    """Names and paths of the tiny checkpoint and ControlNet (usable in both harnesses)."""
    return comfy_host.tiny


@pytest.fixture(scope="session")
def server(tiny, request):
    """A real headless ComfyUI on 127.0.0.1 sharing the tiny models; log kept on failure."""
    from .server import ComfyServer

    base = paths.base_dir("server")
    for sub, name in (("checkpoints", tiny["checkpoint"]), ("controlnet", tiny["controlnet"])):
        dst = os.path.join(base, "models", sub, name)
        src = tiny[f"{'checkpoint' if sub == 'checkpoints' else 'controlnet'}_path"]
        if not os.path.exists(dst):
            os.symlink(src, dst)
    srv = ComfyServer(base).start()
    yield srv
    if request.session.testsfailed:
        srv.keep_log("session")
    srv.stop()


@pytest.fixture(scope="session")
def sample_clip():
    if not os.path.exists(SAMPLE_CLIP):
        pytest.fail(f"bundled sample clip missing: {SAMPLE_CLIP}")
    return SAMPLE_CLIP
