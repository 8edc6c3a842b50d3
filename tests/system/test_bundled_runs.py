"""Every bundled API workflow, as shipped (real model names), runs through a real server with the runner
substituting the tiny models of the workflow's family (`tr_cli run --checkpoint --controlnet`; the family read
off the real checkpoint name, tr_cli.workflows.family), as a user with other files would."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness import paths
from harness.fixtures import SAMPLE_CLIP, link_models
from media_clips import excerpt_clip
from tr_cli import workflows

API = workflows.bundled()


@pytest.mark.parametrize("name", sorted(API))
def test_bundled_workflow_runs_with_tiny_models_substituted(name, server, tiny_by_family, tmp_path):
    import av

    prompt = workflows.load(name)
    tiny = tiny_by_family[workflows.family(prompt) or "sd15"]
    link_models(server.base, tiny)
    for node in prompt.values():  # 2 steps, as in the browser test: the CPU budget, not the file's doing
        if isinstance(node["inputs"].get("steps"), int):
            node["inputs"]["steps"] = 2
    wf = tmp_path / f"{name}.json"
    wf.write_text(json.dumps(prompt))
    clip = excerpt_clip(str(tmp_path / "clip.mp4"), SAMPLE_CLIP, frames=4)
    args = ["run", clip, "-w", str(wf), "--server", server.url, "-o", str(tmp_path / "out.mp4"), "--quiet"]
    if workflows.find(prompt, "Checkpoint"):
        args += ["--checkpoint", tiny["checkpoint"]]
    if workflows.find(prompt, "ControlNet"):
        args += ["--controlnet", tiny["controlnet"]]
    p = subprocess.run([sys.executable, "-m", "tr_cli", *args], cwd=paths.REPO, capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, f"{name}: {p.stderr[-3000:]}"
    with av.open(str(tmp_path / "out.mp4")) as f:
        assert sum(1 for _ in f.decode(video=0)) == 4
        stream = f.streams.video[0]
        size = (stream.width, stream.height)
    scale = {"x4_vsr_restore": 8, "sdxl_tile_restore": 4}.get(name, 1)  # x4: the tiny x4's TAESD-shaped VAE is 8x
    assert size == (64 * scale, 48 * scale), f"{name}: output {size}, want the workflow's scale {scale} of 64x48"
