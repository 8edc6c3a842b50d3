"""Comfy Registry readiness: pyproject metadata complete, runtime deps only, the icon it names is in the repo."""
from __future__ import annotations

import os
import re
import tomllib

from PIL import Image

from harness import paths

REPO_URL = "https://github.com/temporal-restore/comfyui-temporal-restore"
RAW_PREFIX = "https://raw.githubusercontent.com/temporal-restore/comfyui-temporal-restore/main/"


def _pyproject():
    with open(os.path.join(paths.REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_project_and_comfy_metadata_complete():
    data = _pyproject()
    project, comfy = data["project"], data["tool"]["comfy"]
    for key in ("name", "description", "version", "license", "readme"):
        assert project.get(key), f"[project].{key} missing"
    assert project["urls"]["Repository"] == REPO_URL
    for key in ("PublisherId", "DisplayName", "Icon", "requires-comfyui"):
        assert comfy.get(key), f"[tool.comfy].{key} missing"
    assert comfy["requires-comfyui"].startswith(">=")


def test_readme_install_states_the_verified_range():
    """README's Install section names the same ComfyUI range as pyproject's requires-comfyui."""
    low, high = re.fullmatch(r">=([\d.]+),<=([\d.]+)", _pyproject()["tool"]["comfy"]["requires-comfyui"]).groups()
    with open(os.path.join(paths.REPO, "README.md")) as f:
        readme = f.read()
    section = readme[readme.index("## Install"):].split("\n## ", 1)[0]
    assert f"{low} to {high}" in section, section[:400]
    for way in ("ComfyUI-Manager", "comfy node install", "git clone", "requirements.txt"):
        assert way in section, f"README Install lacks {way}"


def test_runtime_dependencies_never_pin_torch():
    deps = _pyproject()["project"]["dependencies"]
    names = [re.match(r"[A-Za-z0-9_.-]+", d.strip()).group().lower() for d in deps]
    assert not set(names) & {"torch", "torchvision", "torchaudio"}, deps


def _requirement_lines(path: str) -> list[str]:
    with open(path) as f:
        lines = [line.split("#", 1)[0].strip() for line in f]
    return [line for line in lines if line]


def test_requirements_txt_equals_pyproject_dependencies():
    """Manager / git-clone installs read requirements.txt, the Registry reads pyproject: same list, no torch."""
    req = _requirement_lines(os.path.join(paths.REPO, "requirements.txt"))
    deps = [d.strip() for d in _pyproject()["project"]["dependencies"]]
    assert sorted(req) == sorted(deps), f"requirements.txt {req} != pyproject dependencies {deps}"
    assert not any(line.startswith("-") for line in req), "requirements.txt holds pip options, not requirements"


def test_icon_is_a_square_png_shipped_in_the_repo():
    icon = _pyproject()["tool"]["comfy"]["Icon"]
    assert icon.startswith(RAW_PREFIX), icon
    path = os.path.join(paths.REPO, icon[len(RAW_PREFIX):])
    assert os.path.isfile(path), f"Icon points at {icon} but {path} is not in the repository"
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width == im.height and im.width <= 400, (im.format, im.size)
