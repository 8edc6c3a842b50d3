"""The bundled API workflows as a user's install sees them: comfy-lint (PyPI) finds zero errors against the
node list of a real server that has the models the workflows name (their real file names, here links to the
tiny models) and nothing in its input folder but what the pack itself put there (the sample clips)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from harness import paths
from harness.fixtures import link_models
from harness.server import ComfyServer
from tr_cli import ui_format, workflows

API = workflows.bundled()
LINT = os.path.join(os.path.dirname(sys.executable), "comfy-lint")

pytestmark = pytest.mark.server  # its own server (real model names)


@pytest.fixture(scope="module")
def user_server(tiny_by_family):
    base = paths.base_dir("lint")
    shutil.rmtree(os.path.join(base, "input"))
    os.makedirs(os.path.join(base, "input"))
    for name, (_, directory) in ui_format.MODEL_SOURCES.items():  # each real name -> its family's tiny build
        kind = "checkpoint" if directory == "checkpoints" else "controlnet"
        link_models(base, tiny_by_family[ui_format.MODEL_FAMILIES[name]], {kind: name})
    srv = ComfyServer(base).start()
    yield srv
    srv.stop()


def test_every_workflow_video_input_is_in_the_input_folder(user_server):
    """The input folder started empty: the pack copied its samples there, under the names the workflows use."""
    samples = {open(os.path.join(paths.REPO, "samples", f), "rb").read() for f in os.listdir(os.path.join(paths.REPO, "samples"))
               if f.endswith(".mp4")}
    for name, path in API.items():
        files = [n["inputs"]["file"] for n in workflows.load(path).values() if n["class_type"] == "LoadVideo"]
        assert files, f"{name}: no LoadVideo"
        for f in files:
            got = os.path.join(user_server.base, "input", f)
            assert os.path.isfile(got), f"{name}: its video input {f} is not in ComfyUI's input folder"
            assert open(got, "rb").read() in samples, f"{name}: {f} is not one of the pack's sample clips"


def test_comfy_lint_finds_no_error_in_any_api_workflow(user_server):
    assert os.path.exists(LINT), f"comfy-lint missing beside {sys.executable}: pip install -r requirements-dev.txt"
    files = [API[n] for n in sorted(API)]
    run = subprocess.run([LINT, "--server", user_server.url, "--json", "--color", "never", *files],
                         capture_output=True, text=True, timeout=120)
    report = json.loads(run.stdout)
    assert report["summary"]["files"] == len(files) and not report["unreadable"], report
    errors = [(f["path"], d) for f in report["files"] for d in f["diagnostics"] if d["severity"] == "error"]
    assert not errors, json.dumps(errors, indent=1)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
