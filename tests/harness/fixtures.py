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
    link_models(base, tiny)
    srv = ComfyServer(base).start()
    yield srv
    if request.session.testsfailed:
        srv.keep_log("session")
    srv.stop()


#: the pack's family names (nodes/_checks.FAMILIES) -> tests/tiny_families.py build; SD1.5 is tests/tiny_models.py
TINY_FAMILY_BUILDS = {"sd2": "sd21v", "sdxl": "sdxl", "sd_x4": "x4"}


def link_models(base: str, info: dict, names: dict | None = None) -> None:
    """Symlink a tiny build's checkpoint (and ControlNet) into ``base``/models under their own names, or under
    ``names`` ({"checkpoint": ..., "controlnet": ...}) when given; a server rescans its folders per request."""
    for kind, sub in (("checkpoint", "checkpoints"), ("controlnet", "controlnet")):
        if kind not in info or (names is not None and kind not in names):
            continue
        dst = os.path.join(base, "models", sub, (names or info)[kind])
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.lexists(dst) and not os.path.exists(dst):
            os.remove(dst)  # a link left dangling by an earlier session's workspace
        if not os.path.lexists(dst):
            os.symlink(info[f"{kind}_path"], dst)


@pytest.fixture(scope="session")
def tiny_by_family(comfy_host, tiny):
    """{family: tiny build} for every family the pack supports ("sd15" is the `tiny` fixture): names and paths
    of each family's tiny checkpoint and ControlNet (none for the x4 upscaler), built once and cached."""
    import tiny_families

    out = {"sd15": tiny}
    for fam, build in TINY_FAMILY_BUILDS.items():
        out[fam] = tiny_families.build(os.path.join(comfy_host.base, "models"), build)
    return out


@pytest.fixture(scope="module")
def tiny_sd15_loaded(comfy_host, tiny):
    """The tiny SD1.5 loaded by ComfyUI's own detection, with two encoded prompts:
    {"model": ModelPatcher, "clip": CLIP, "pos": "a photo", "neg": ""}. Module scope: a module that patches
    the model in place can't leak into another."""
    import comfy.sd

    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(tiny["checkpoint_path"], output_vae=False,
                                                             output_clip=True)
    enc = lambda t: clip.encode_from_tokens_scheduled(clip.tokenize(t))  # noqa: E731
    return {"model": model, "clip": clip, "pos": enc("a photo"), "neg": enc("")}


@pytest.fixture(scope="session")
def sample_clip():
    if not os.path.exists(SAMPLE_CLIP):
        pytest.fail(f"bundled sample clip missing: {SAMPLE_CLIP}")
    return SAMPLE_CLIP
