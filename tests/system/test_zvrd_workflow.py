"""The bundled ZVRD workflow (workflows/api/zvrd_restore.json) end to end through a real headless server."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np

from harness.paths import REPO
import pytest

pytestmark = pytest.mark.server
WORKFLOW = os.path.join(REPO, "workflows", "api", "zvrd_restore.json")


def _make_clip(path, frames=4, size=64, fps=8):
    import av

    with av.open(path, "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for i in range(frames):
            img = np.zeros((size, size, 3), np.uint8)
            img[:, :, 1] = 30 + 20 * i
            img[12:36, 8 + 4 * i:32 + 4 * i] = 220
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _by_title(prompt, title):
    hits = [n for n in prompt.values() if n.get("_meta", {}).get("title") == title]
    assert len(hits) == 1, title
    return hits[0]


def _load():
    with open(WORKFLOW) as f:
        return json.load(f)


def test_workflow_shape():
    prompt = _load()
    types = {n["class_type"] for n in prompt.values()}
    for t in ("LoadVideo", "GetVideoComponents", "TR_FlowEstimate", "VAEEncode", "ControlNetApplyAdvanced",
              "TR_SLRAttention", "TR_TCGuidance", "TR_NoiseShare", "TR_NoiseShareSampler", "TR_EarlyStop",
              "SamplerCustomAdvanced", "VAEDecode", "CreateVideo", "TR_SaveVideo"):
        assert t in types, t
    create = next(n for n in prompt.values() if n["class_type"] == "CreateVideo")
    comps = next(k for k, n in prompt.items() if n["class_type"] == "GetVideoComponents")
    assert create["inputs"]["audio"] == [comps, 1] and create["inputs"]["fps"] == [comps, 2]
    for title in ("Input video", "Checkpoint", "ControlNet", "Output video"):
        _by_title(prompt, title)


def test_zvrd_workflow_runs_end_to_end(server, tiny):
    prompt = _load()
    clip_name = "tr_zvrd_test_clip.mp4"
    dst = os.path.join(server.base, "input", clip_name)
    sample = os.path.join(REPO, "samples", "sample_clip.mp4")
    if os.path.exists(sample):
        shutil.copyfile(sample, dst)
    else:
        _make_clip(dst)
    _by_title(prompt, "Input video")["inputs"]["file"] = clip_name
    _by_title(prompt, "Checkpoint")["inputs"]["ckpt_name"] = tiny["checkpoint"]
    _by_title(prompt, "ControlNet")["inputs"]["control_net_name"] = tiny["controlnet"]
    for node in prompt.values():  # keep it quick on CPU
        if node["class_type"] == "BasicScheduler":
            node["inputs"]["steps"] = 4
    entry = server.run(prompt)
    files = server.output_files(entry)
    assert any(f.endswith(".mp4") for f in files), files
