"""The headless runner: exit codes and one-line errors on bad input, and a real run through the server."""
import json
import os
import subprocess
import sys

import pytest

from harness import paths
from harness.server import free_port

pytestmark = pytest.mark.server


def cli(*args, timeout=600):
    p = subprocess.run([sys.executable, "-m", "tr_cli", *args], cwd=paths.REPO, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def one_line_error(stderr):
    lines = [l for l in stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def test_missing_input_file(tmp_path):
    rc, _, err = cli("run", str(tmp_path / "nope.mp4"), "--server", "http://127.0.0.1:9")
    assert rc == 2
    assert "not found" in one_line_error(err)


def test_unreadable_video(tmp_path):
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    rc, _, err = cli("run", str(bad), "--server", "http://127.0.0.1:9")
    assert rc == 2
    assert "not a readable video" in one_line_error(err) or "no decodable" in err


def test_empty_video_file(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    rc, _, err = cli("run", str(empty), "--server", "http://127.0.0.1:9")
    assert rc == 2
    one_line_error(err)


def test_unknown_workflow(sample_clip):
    rc, _, err = cli("run", sample_clip, "-w", "no_such_workflow", "--server", "http://127.0.0.1:9")
    assert rc == 2
    assert "unknown workflow" in one_line_error(err)


def test_server_unreachable(sample_clip):
    rc, _, err = cli("run", sample_clip, "-w", "degrade_measure", "--server", f"http://127.0.0.1:{free_port()}")
    assert rc == 3
    assert "unreachable" in one_line_error(err)


def test_bad_set_syntax(sample_clip, server):
    rc, _, err = cli("run", sample_clip, "-w", "degrade_measure", "--server", server.url, "--set", "nodot")
    assert rc == 2
    assert "--set" in one_line_error(err)


def test_list_shows_bundled_workflows():
    rc, out, _ = cli("list")
    assert rc == 0
    assert "degrade_measure" in out and "Input video" in out


def _frames_and_audio(path):
    import av

    with av.open(path) as c:
        has_audio = bool(c.streams.audio)
        frames = sum(1 for _ in c.decode(video=0))
    return frames, has_audio


def test_run_degrade_measure_through_server(sample_clip, server, tmp_path):
    out = tmp_path / "restored.mp4"
    rc, stdout, err = cli("run", sample_clip, "-w", "degrade_measure", "--server", server.url, "-o", str(out),
                          "--set", "Degrade.seed=5", "--quiet")
    assert rc == 0, err
    frames, has_audio = _frames_and_audio(str(out))
    in_frames, in_audio = _frames_and_audio(sample_clip)
    assert frames == in_frames
    assert has_audio == in_audio
    metrics_path = tmp_path / "restored.metrics.restored_vs_input.json"
    assert metrics_path.exists(), stdout
    metrics = json.loads(metrics_path.read_text())
    assert metrics["psnr"] < 60  # degraded against the clean input: not identical
    assert server.alive()


def test_out_of_range_override_is_one_readable_line(sample_clip, server, tiny):
    rc, _, err = cli("run", sample_clip, "-w", "tdm_restore", "--server", server.url, "--checkpoint", tiny["checkpoint"],
                     "--controlnet", tiny["controlnet"], "--set", "DDIM restore.steps=5000")
    assert rc == 2  # refused by the server's validation, before any compute: bad usage
    line = one_line_error(err)
    assert "TR_DDIMRestore" in line and "'steps'" in line and "bigger than max" in line
