"""The pack installed the way ComfyUI-Manager and `git clone` users install it.

A fresh ComfyUI base directory whose custom_nodes holds only a copy of the repo, a fresh virtualenv that
sees ComfyUI's own requirements and nothing else (so no OpenCV, no scikit-image), then
`pip install -r requirements.txt` from PyPI alone (pip config, find-links and local mirrors ignored), a
real server on 127.0.0.1, and /object_info must list every node the pack defines.

ComfyUI's requirements are not reinstalled (torch is 5 GB): the fresh venv gets a .pth file naming a
folder of links to exactly the distributions ComfyUI's requirements.txt pulls in (its transitive closure
in the test's own environment), so nothing the pack asks for can leak in from the developer's venv.
"""
from __future__ import annotations

import glob
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import venv

import pytest
from packaging.requirements import Requirement

from harness import paths
from harness.server import ComfyServer

pytestmark = [pytest.mark.server, pytest.mark.slow]  # its own server and a pip install

PACK_FOLDER = "comfyui-temporal-restore"  # the folder name a git clone / Manager install gives it
NOT_COPIED = {".git", ".venv", ".host", "test-artifacts", "__pycache__", ".pytest_cache", ".hypothesis", "out"}
PIP_TIMEOUT = 900


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(path: str) -> list[Requirement]:
    out = []
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                out.append(Requirement(line))
    return out


def comfy_closure(comfy_requirements: str) -> dict[str, md.Distribution]:
    """Installed distributions ComfyUI's requirements pull in (transitively), by canonical name.
    Requirements the environment lacks (torchaudio where it cannot be had) are left out."""
    todo = [r for r in _requirements(comfy_requirements)] + [Requirement("pip"), Requirement("packaging")]
    found: dict[str, md.Distribution] = {}
    while todo:
        req = todo.pop()
        name = _canon(req.name)
        if name in found:
            continue
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            continue
        found[name] = dist
        for sub in dist.requires or []:
            r = Requirement(sub)
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(r)
    return found


def link_overlay(dists: dict[str, md.Distribution], overlay: str) -> None:
    """One symlink per top-level file or folder of each distribution (its package, its .dist-info)."""
    os.makedirs(overlay)
    for dist in dists.values():
        for f in dist.files or []:
            top = f.parts[0]
            if top in ("..", "__pycache__") or top.endswith(".pth"):
                continue
            src, dst = str(dist.locate_file(top)), os.path.join(overlay, top)
            if os.path.exists(src) and not os.path.lexists(dst):
                os.symlink(src, dst)


def pack_node_ids() -> set[str]:
    """Every node id the pack's sources define (``node_id="TR_..."``), read from the files, not from ComfyUI."""
    ids = set()
    for path in glob.glob(os.path.join(paths.REPO, "nodes", "*.py")):
        with open(path) as f:
            ids.update(re.findall(r'node_id="(TR_\w+)"', f.read()))
    return ids


def _run(cmd: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def test_fresh_install_with_requirements_txt_lists_every_node(monkeypatch):
    root = os.path.join(paths.WORK, "user-install")
    shutil.rmtree(root, ignore_errors=True)
    base = os.path.join(root, "ComfyUI-base")
    for sub in ("custom_nodes", "input", "output", "temp", "user", "models"):
        os.makedirs(os.path.join(base, sub))
    shutil.copytree(paths.REPO, os.path.join(base, "custom_nodes", PACK_FOLDER), symlinks=True,
                    ignore=lambda d, names: [n for n in names if n in NOT_COPIED])

    env_dir = os.path.join(root, "venv")
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = os.path.join(env_dir, "bin", "python")
    site = _run([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], os.environ, 60).stdout.strip()
    dists = comfy_closure(os.path.join(paths.COMFY_DIR, "requirements.txt"))
    assert "torch" in dists and "opencv-python-headless" not in dists, sorted(dists)
    link_overlay(dists, os.path.join(root, "comfyui-needs"))
    with open(os.path.join(site, "comfyui_needs.pth"), "w") as f:
        f.write(os.path.join(root, "comfyui-needs") + "\n")

    # nothing but pip's default index (PyPI): no config file, no PIP_* variables, no local wheels
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PYTHONNOUSERSITE="1")
    before = _run([py, "-c", "import torch, cv2"], env, 120)
    assert before.returncode != 0 and "cv2" in before.stderr, "the fresh venv already has OpenCV: it proves nothing"

    req = os.path.join(base, "custom_nodes", PACK_FOLDER, "requirements.txt")
    pip = _run([py, "-m", "pip", "install", "--isolated", "--disable-pip-version-check", "-r", req], env, PIP_TIMEOUT)
    assert pip.returncode == 0, f"pip install -r requirements.txt failed:\n{pip.stdout[-3000:]}\n{pip.stderr[-3000:]}"
    after = _run([py, "-c", "import cv2, skimage.data; skimage.data.astronaut(); print(cv2.__file__)"], env, 120)
    assert after.returncode == 0 and after.stdout.strip().startswith(site), after.stdout + after.stderr

    for k in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("PYTHONNOUSERSITE", "1")  # the server subprocess inherits os.environ
    srv = ComfyServer(base, python=py, log_dir=root)
    try:
        srv.start(timeout=240)
        info = srv.object_info()
    finally:
        srv.stop()
    expected = pack_node_ids()
    assert len(expected) >= 20, expected
    missing = sorted(expected - set(info))
    assert not missing, f"server does not list pack nodes {missing}; log {srv.log_path}"
    modules = {info[n].get("python_module") for n in expected}
    assert modules == {f"custom_nodes.{PACK_FOLDER}"}, modules
    others = {v.get("python_module") for v in info.values()} - {f"custom_nodes.{PACK_FOLDER}"}
    assert not {m for m in others if str(m).startswith("custom_nodes.")}, others
