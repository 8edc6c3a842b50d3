"""The bundled few-step workflow (workflows/api/fast_restore.json) end to end through a real headless server."""
from __future__ import annotations

import json
import os

import numpy as np

from harness.paths import REPO
import pytest

pytestmark = pytest.mark.server
WORKFLOW = os.path.join(REPO, "workflows", "api", "fast_restore.json")
SAMPLE = os.path.join(REPO, "samples", "sample_clip.mp4")


def _load():
    with open(WORKFLOW) as f:
        return json.load(f)


def _by_title(prompt, title):
    hits = [n for n in prompt.values() if n.get("_meta", {}).get("title") == title]
    assert len(hits) == 1, title
    return hits[0]


def _short_clip(dst, frames=4):
    """The first ``frames`` frames of the bundled sample clip (video re-encoded, audio packets of that span
    copied); a synthetic moving square with no audio if the sample is missing."""
    import av

    with av.open(dst, "w") as out:
        if os.path.exists(SAMPLE):
            with av.open(SAMPLE) as src:
                vs = src.streams.video[0]
                a_in = src.streams.audio[0] if src.streams.audio else None
                v = out.add_stream("mpeg4", rate=vs.average_rate)
                v.width, v.height, v.pix_fmt = vs.width, vs.height, "yuv420p"
                a = out.add_stream_from_template(a_in) if a_in is not None else None
                n = 0
                for fr in src.decode(vs):
                    if n == frames:
                        break
                    for p in v.encode(av.VideoFrame.from_ndarray(fr.to_ndarray(format="rgb24"), format="rgb24")):
                        out.mux(p)
                    n += 1
                for p in v.encode():
                    out.mux(p)
            if a is not None:
                with av.open(SAMPLE) as src:
                    limit = frames / float(src.streams.video[0].average_rate)
                    for p in src.demux(src.streams.audio[0]):
                        if p.dts is None or p.pts is None:
                            continue
                        if float(p.pts * p.time_base) > limit:
                            break
                        p.stream = a
                        out.mux(p)
            return a is not None
        v = out.add_stream("mpeg4", rate=8)
        v.width = v.height = 64
        v.pix_fmt = "yuv420p"
        for i in range(frames):
            img = np.full((64, 64, 3), 40, np.uint8)
            img[12:36, 8 + 4 * i:32 + 4 * i] = 220
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in v.encode():
            out.mux(p)
    return False


def test_workflow_shape():
    prompt = _load()
    types = [n["class_type"] for n in prompt.values()]
    for t in ("LoadVideo", "GetVideoComponents", "VAEEncode", "ControlNetLoader", "TR_DistilledSampler",
              "TR_DistilledSigmas", "TR_RecurrentRestore", "CreateVideo", "TR_SaveVideo"):
        assert t in types, t
    # the restore's own decode (each frame once, reused for the next frame's hint) replaces a VAEDecode
    assert "VAEDecode" not in types
    rr_id = next(k for k, n in prompt.items() if n["class_type"] == "TR_RecurrentRestore")
    assert prompt[rr_id]["inputs"]["decode_images"] is True
    assert next(n for n in prompt.values() if n["class_type"] == "TR_ColorMatch")["inputs"]["restored"] == [rr_id, 2]
    comps = next(k for k, n in prompt.items() if n["class_type"] == "GetVideoComponents")
    create = next(n for n in prompt.values() if n["class_type"] == "CreateVideo")
    assert create["inputs"]["audio"] == [comps, 1] and create["inputs"]["fps"] == [comps, 2]
    rr = next(n for n in prompt.values() if n["class_type"] == "TR_RecurrentRestore")["inputs"]
    sig = next(n for n in prompt.values() if n["class_type"] == "TR_DistilledSigmas")["inputs"]
    assert rr["strength"] > 0 and sig["steps"] == 4 and sig["denoise"] < 1
    share = next(k for k, n in prompt.items() if n["class_type"] == "TR_NoiseShare")
    wrap = next(k for k, n in prompt.items() if n["class_type"] == "TR_NoiseShareSampler")
    assert rr["noise"] == [share, 0] and rr["sampler"] == [wrap, 0]
    # the real files users download; runs substitute the tiny models (as tr_cli --checkpoint / --controlnet do)
    assert _by_title(prompt, "Checkpoint")["inputs"]["ckpt_name"] == "v1-5-pruned-emaonly-fp16.safetensors"
    assert _by_title(prompt, "ControlNet")["inputs"]["control_net_name"] == "control_v11f1e_sd15_tile_fp16.safetensors"
    _by_title(prompt, "Input video")
    _by_title(prompt, "Output video")


def test_fast_restore_runs_end_to_end(server, tiny):
    import av

    prompt = _load()
    name = "tr_fast_restore_clip.mp4"
    has_audio = _short_clip(os.path.join(server.base, "input", name), frames=3)
    _by_title(prompt, "Input video")["inputs"]["file"] = name
    _by_title(prompt, "Checkpoint")["inputs"]["ckpt_name"] = tiny["checkpoint"]
    _by_title(prompt, "ControlNet")["inputs"]["control_net_name"] = tiny["controlnet"]
    next(n for n in prompt.values() if n["class_type"] == "TR_DistilledSigmas")["inputs"]["steps"] = 1  # CPU time (the shipped 4 steps are checked above)
    entry = server.run(prompt)
    videos = [f for f in server.output_files(entry) if f.endswith(".mp4")]
    assert videos, server.output_files(entry)
    with av.open(videos[0]) as c:
        vs = c.streams.video[0]
        n = sum(1 for _ in c.decode(vs))
        assert n == 3
        if has_audio:
            assert c.streams.audio, "audio track dropped"
