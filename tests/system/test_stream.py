"""Streaming restore (tr_cli/stream.py): segment by segment, resumable after SIGKILL, audio kept."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction

import numpy as np
import pytest

from harness import paths

pytestmark = pytest.mark.server

REPO = paths.REPO


def make_clip(path: str, frames: int = 14, size: int = 32, audio: bool = True) -> np.ndarray:
    """A clip whose frame i has brightness 10 + 15 * i (order/loss/duplication visible), with a tone."""
    import av

    rgb = np.zeros((frames, size, size, 3), np.uint8)
    for i in range(frames):
        rgb[i] = 10 + 15 * i
        rgb[i, : size // 2, : size // 2, 0] = 255 - 10 * i  # some structure
    with av.open(path, "w") as c:
        vs = c.add_stream("ffv1", rate=Fraction(12))
        vs.width = vs.height = size
        vs.pix_fmt = "bgr0"
        astream = c.add_stream("aac", rate=16000) if audio else None
        for fr in rgb:
            for p in vs.encode(av.VideoFrame.from_ndarray(fr, format="rgb24")):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        if astream is not None:
            n = int(16000 * frames / 12)
            t = np.arange(n) / 16000
            samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
            for i in range(0, n, 1024):
                af = av.AudioFrame.from_ndarray(samples[:, i:i + 1024], format="fltp", layout="mono")
                af.sample_rate = 16000
                af.pts = i
                for p in astream.encode(af):
                    c.mux(p)
            for p in astream.encode():
                c.mux(p)
    return rgb


def read_video(path: str):
    import av

    with av.open(path) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    with av.open(path) as c:
        has_audio = bool(c.streams.audio)
        audio_packets = sum(1 for p in c.demux(audio=0) if p.size) if has_audio else 0
    return frames, has_audio, audio_packets


def stream_cmd(inp, out, *extra):
    return [sys.executable, "-m", "tr_cli", "stream", inp, "-o", out, "--quiet", *extra]


def run_killed_then_resumed(cmd, state_dir, kill_after_segments: int, timeout: float = 240):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state_path = os.path.join(state_dir, "state.json")
    deadline = time.time() + timeout
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        try:
            with open(state_path) as f:
                st = json.load(f)
        except (OSError, json.JSONDecodeError):
            st = None
        if st and st["segment"] >= kill_after_segments and not st["done"]:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            killed_at = st["segment"]
            break
        time.sleep(0.05)
    if killed_at is None:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"stream finished or stalled before it could be killed: {err.decode()[-2000:]}")
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return killed_at


def test_passthrough_stream_keeps_every_frame_once_and_audio(tmp_path):
    inp = str(tmp_path / "in.mkv")
    rgb = make_clip(inp, frames=14)
    out = str(tmp_path / "out.mp4")
    res = subprocess.run(stream_cmd(inp, out, "--backend", "passthrough", "--segment", "5", "--context", "2"),
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    frames, has_audio, packets = read_video(out)
    assert frames.shape == rgb.shape
    # frame order preserved, none lost or duplicated (brightness ramps by 15 per frame; codec is lossy)
    assert np.abs(frames[:, -4:, -4:].astype(float).mean(axis=(1, 2, 3)) - rgb[:, -4:, -4:].mean(axis=(1, 2, 3))).max() < 4
    assert has_audio and packets > 0
    assert not os.path.exists(out + ".stream")  # state removed after success
    assert not [f for f in os.listdir(tmp_path) if ".partial." in f]


def test_passthrough_sigkill_resume_equals_uninterrupted(tmp_path):
    """A lossless (.mkv) output is bit-identical to the uninterrupted run and to the input frames."""
    inp = str(tmp_path / "in.mkv")
    rgb = make_clip(inp, frames=14)
    ref = str(tmp_path / "ref.mkv")
    args = ["--backend", "passthrough", "--segment", "5", "--context", "2"]
    res = subprocess.run(stream_cmd(inp, ref, *args), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = str(tmp_path / "out.mkv")
    killed = run_killed_then_resumed(stream_cmd(inp, out, *args, "--throttle", "1.0"), out + ".stream", 2)
    assert killed >= 2
    a, _, _ = read_video(ref)
    b, has_audio, _ = read_video(out)
    assert a.shape == b.shape == rgb.shape and np.array_equal(a, b) and np.array_equal(b, rgb)
    assert has_audio


def test_bad_arguments_are_reported(tmp_path):
    inp = str(tmp_path / "in.mkv")
    make_clip(inp, frames=4, audio=False)
    res = subprocess.run(stream_cmd(inp, str(tmp_path / "o.mp4"), "--backend", "passthrough", "--segment", "4",
                                    "--context", "2"), cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--context" in res.stderr
    res = subprocess.run(stream_cmd(str(tmp_path / "missing.mp4"), str(tmp_path / "o.mp4")), cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "not found" in res.stderr


def test_server_stream_sigkill_resume_equals_uninterrupted(server, tiny, tmp_path):
    """The real thing: long_clip_restore through a headless ComfyUI, killed mid-way and resumed.

    Lossless .mkv outputs: x264 is not bit-reproducible on 32x32 frames (see tr_cli/stream.py), so an
    MP4 comparison would test the encoder, not the resume."""
    inp = str(tmp_path / "in.mkv")
    make_clip(inp, frames=10)
    sets = ["--set", "ILT chunked sampling.steps=2", "--set", "ILT chunked sampling.window=4",
            "--set", "ILT chunked sampling.overlap=2"]
    args = ["--server", server.url, "--segment", "5", "--context", "2", *sets,
            "--checkpoint", tiny["checkpoint"], "--controlnet", tiny["controlnet"]]  # the workflow names real files
    ref = str(tmp_path / "ref.mkv")
    res = subprocess.run(stream_cmd(inp, ref, *args), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = str(tmp_path / "out.mkv")
    run_killed_then_resumed(stream_cmd(inp, out, *args, "--throttle", "2.0"), out + ".stream", 1, timeout=300)
    a, _, _ = read_video(ref)
    b, has_audio, _ = read_video(out)
    assert a.shape == (10, 32, 32, 3) and b.shape == a.shape
    if not np.array_equal(a, b):
        # tell a resume bug (frames after the kill point differ) from a server that does not reproduce itself
        again = str(tmp_path / "again.mkv")
        subprocess.run(stream_cmd(inp, again, *args), cwd=REPO, capture_output=True, text=True, timeout=300)
        c = read_video(again)[0]
        per_frame = lambda x, y: [int(np.abs(x[i].astype(int) - y[i].astype(int)).max()) for i in range(len(x))]  # noqa: E731
        pytest.fail(f"resumed output differs from the uninterrupted one; max |diff| per frame: {per_frame(a, b)}; "
                    f"a second uninterrupted run vs the first: {per_frame(a, c) if c.shape == a.shape else c.shape}")
    assert has_audio


def test_sigterm_stops_stream_keeps_the_checkpoint_and_resumes(tmp_path):
    """SIGTERM (kill, timeout, CI) behaves like Ctrl-C: exit 143, no output, the committed state kept; a
    rerun resumes and equals the input (lossless). Synchronised on the committed state file."""
    inp = str(tmp_path / "in.mkv")
    rgb = make_clip(inp, frames=14)
    out = str(tmp_path / "out.mkv")
    cmd = stream_cmd(inp, out, "--backend", "passthrough", "--segment", "5", "--context", "2", "--throttle", "2.0")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state_path = os.path.join(out + ".stream", "state.json")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            with open(state_path) as f:
                if json.load(f)["segment"] >= 1:
                    break
        except (OSError, json.JSONDecodeError):
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "interrupted by SIGTERM" in err and not os.path.exists(out) and os.path.exists(state_path)
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert np.array_equal(read_video(out)[0], rgb)
