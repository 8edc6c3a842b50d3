"""`stream --ray` (tr_cli/ray_workers.py): segments restored by Ray workers equal a one-server run, survive a
killed server and a killed driver, stop on a segment no worker can restore; without Ray, --ray says how to
install it.

One local Ray cluster for the module (2 CPUs, small object store, no dashboard); the runs connect to it by
address. Kills are triggered on observable state (a marker file a worker writes when it holds segment k, the
committed state file), never on a sleep: ``TR_RAY_TEST_HOLD=k:DIR`` makes the first worker given segment k
write ``DIR/hold_k`` and keep it until its server stops answering."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from harness import paths

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_stream import make_clip, read_video, stream_cmd  # noqa: E402

REPO = paths.REPO
SEGMENTING = ["--segment", "5", "--context", "2"]  # 10 frames -> 3 segments: [0, 5), [3, 8), [6, 10)
SETS = ["--set", "ILT chunked sampling.steps=2", "--set", "ILT chunked sampling.window=4",
        "--set", "ILT chunked sampling.overlap=2"]
TIMEOUT = 300


@pytest.fixture(scope="module")
def ray_address():
    import ray  # requirements-dev.txt installs it
    ctx = ray.init(num_cpus=2, object_store_memory=100 * 1024 * 1024, include_dashboard=False,
                   log_to_driver=False)
    yield ctx.address_info["address"]
    ray.shutdown()


def _tiny_server(name: str, tiny):
    from harness.server import ComfyServer

    base = paths.base_dir(name)
    for sub, key in (("checkpoints", "checkpoint"), ("controlnet", "controlnet")):
        dst = os.path.join(base, "models", sub, tiny[key])
        if not os.path.lexists(dst):
            os.symlink(tiny[f"{key}_path"], dst)
    return ComfyServer(base).start()


@pytest.fixture(scope="module")
def second_server(tiny):
    srv = _tiny_server("server-ray", tiny)
    yield srv
    srv.stop()


def _model_args(tiny):
    return [*SEGMENTING, *SETS, "--checkpoint", tiny["checkpoint"], "--controlnet", tiny["controlnet"]]


@pytest.fixture(scope="module")
def clip_and_reference(server, tiny, tmp_path_factory):
    """A 10-frame clip and its one-server (no Ray) restore, lossless."""
    d = tmp_path_factory.mktemp("ray_ref")
    inp, ref = str(d / "in.mkv"), str(d / "ref.mkv")
    make_clip(inp, frames=10)
    res = subprocess.run(stream_cmd(inp, ref, "--server", server.url, *_model_args(tiny)), cwd=REPO,
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr[-3000:]
    frames = read_video(ref)[0]
    assert frames.shape == (10, 32, 32, 3)
    return inp, frames


def _wait_for(path: str, proc, what: str) -> None:
    deadline = time.time() + TIMEOUT
    while not os.path.exists(path):
        if proc.poll() is not None:
            pytest.fail(f"stream exited ({proc.returncode}) before {what}: {proc.stderr.read()[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"{what} did not happen within {TIMEOUT}s")
        time.sleep(0.05)  # polling an observable state, not a synchronisation by delay


def _loud(cmd):
    """The command with progress messages (resume notice, clip progress)."""
    return [c for c in cmd if c != "--quiet"]


def _committed_segments(state_dir: str) -> int:
    try:
        with open(os.path.join(state_dir, "state.json")) as f:
            return json.load(f)["segment"]
    except (OSError, json.JSONDecodeError):
        return 0


@pytest.mark.server
@pytest.mark.slow
def test_ray_two_servers_equal_one_server(ray_address, server, second_server, tiny, clip_and_reference, tmp_path):
    """Two Ray workers on two CPU ComfyUI servers: bit-identical to the one-server run, audio kept, the
    clip progress and the per-worker status shown."""
    inp, ref = clip_and_reference
    out = str(tmp_path / "out.mkv")
    res = subprocess.run(_loud(stream_cmd(inp, out, "--ray", ray_address, "--server", server.url, "--server",
                                          second_server.url, "--status", *_model_args(tiny))),
                         cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr[-3000:]
    frames, has_audio, _ = read_video(out)
    assert frames.shape == ref.shape and np.array_equal(frames, ref)
    assert has_audio
    assert "3/3 segments" in res.stderr and "frames/s on 2 workers" in res.stderr, res.stderr[-3000:]
    assert f"w1 {second_server.url}: idle, " in res.stderr, res.stderr[-3000:]


@pytest.mark.server
@pytest.mark.slow
def test_ray_workers_start_their_own_servers_and_stop_them(ray_address, tmp_path):
    """--workers-per-node 2: each worker starts a CPU ComfyUI (the embedded demo model: no test nodes needed),
    the clip is restored whole, and both servers are gone when the run ends."""
    import re
    import urllib.request

    inp = str(tmp_path / "in.mkv")
    make_clip(inp, frames=6, audio=False)
    out = str(tmp_path / "out.mkv")
    steps = ["--set", "DDIM inversion (source prompt).steps=1", "--set", "DDIM restore (task prompt).steps=1"]
    res = subprocess.run(_loud(stream_cmd(inp, out, "-w", "demo_restore", *steps, "--segment", "4", "--context", "1",
                                          "--ray", ray_address, "--workers-per-node", "2", "--cpu")),
                         cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert read_video(out)[0].shape == (6, 32, 32, 3)
    urls = re.findall(r"w[01] (http://127\.0\.0\.1:\d+)", res.stderr.split("Ray workers:", 1)[-1].splitlines()[0])
    assert len(set(urls)) == 2, res.stderr[-3000:]
    for url in urls:
        with pytest.raises(OSError):
            urllib.request.urlopen(url + "/system_stats", timeout=5)


@pytest.mark.server
@pytest.mark.slow
def test_ray_server_killed_mid_segment_is_retried_elsewhere(ray_address, server, tiny, clip_and_reference, tmp_path):
    """SIGKILL of one worker's server while it holds segment 1: the segment is redone by the other worker,
    the run completes, every frame once and equal to the one-server run."""
    inp, ref = clip_and_reference
    victim = _tiny_server("server-ray-victim", tiny)
    try:
        out = str(tmp_path / "out.mkv")
        env = {**os.environ, "TR_RAY_TEST_HOLD": f"1:{tmp_path}"}
        # the scheduler hands segments 0, 1 to workers w0, w1 in --server order: the victim (w1) gets segment 1
        cmd = stream_cmd(inp, out, "--ray", ray_address, "--server", server.url, "--server", victim.url,
                         *_model_args(tiny))
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for(str(tmp_path / "hold_1"), proc, "a worker held segment 1")
        with open(tmp_path / "hold_1") as f:
            assert f.read() == victim.url
        os.kill(victim.proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err[-3000:]
        assert "segment 1 failed on Ray worker w1" in err, err[-3000:]
        frames, _, _ = read_video(out)
        assert frames.shape == ref.shape and np.array_equal(frames, ref)
        assert not os.path.exists(out + ".stream")
    finally:
        victim.stop()


@pytest.mark.server
@pytest.mark.slow
def test_ray_driver_killed_then_rerun_resumes(ray_address, server, second_server, tiny, clip_and_reference, tmp_path):
    """SIGKILL of the driver once segment 0 is committed and segment 2 is being held: the rerun resumes
    (saved segments reused) and equals the one-server run."""
    inp, ref = clip_and_reference
    out = str(tmp_path / "out.mkv")
    state_dir = out + ".stream"
    cmd = stream_cmd(inp, out, "--ray", ray_address, "--server", server.url, "--server", second_server.url,
                     *_model_args(tiny))
    env = {**os.environ, "TR_RAY_TEST_HOLD": f"2:{tmp_path}"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(str(tmp_path / "hold_2"), proc, "a worker held segment 2")
    deadline = time.time() + TIMEOUT
    while _committed_segments(state_dir) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # polling the committed state
    assert proc.poll() is None and _committed_segments(state_dir) >= 1, "segment 0 was not committed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert not os.path.exists(out)
    res = subprocess.run(_loud(cmd), cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming at segment" in res.stderr
    frames, _, _ = read_video(out)
    assert frames.shape == ref.shape and np.array_equal(frames, ref)


@pytest.mark.slow
def test_ray_segment_failing_on_every_worker_stops_and_keeps_finished(ray_address, tmp_path):
    """Segment 2 fails on both workers: exit 4 naming it, the committed segments kept; a rerun completes
    (passthrough: equal to the input)."""
    inp = str(tmp_path / "in.mkv")
    rgb = make_clip(inp, frames=14, audio=False)
    out = str(tmp_path / "out.mkv")
    cmd = stream_cmd(inp, out, "--backend", "passthrough", *SEGMENTING, "--ray", ray_address, "--workers-per-node", "2")
    res = subprocess.run(cmd, cwd=REPO, env={**os.environ, "TR_RAY_TEST_FAIL": "2"}, capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert res.returncode == 4, res.stderr[-3000:]
    assert "segment 2 failed on every worker" in res.stderr and "failed on purpose" in res.stderr
    assert _committed_segments(out + ".stream") == 2 and not os.path.exists(out)
    res = subprocess.run(_loud(cmd), cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming at segment 2" in res.stderr
    assert np.array_equal(read_video(out)[0], rgb)


def test_without_ray_stream_works_and_ray_flag_says_how_to_install(tmp_path):
    """Ray made unimportable (a module named ray that raises ImportError, first on the path)."""
    shadow = tmp_path / "no_ray"
    shadow.mkdir()
    (shadow / "ray.py").write_text("raise ModuleNotFoundError(\"No module named 'ray'\", name='ray')\n")
    env = {**os.environ, "PYTHONPATH": str(shadow)}
    inp = str(tmp_path / "in.mkv")
    rgb = make_clip(inp, frames=6, audio=False)
    args = ["--backend", "passthrough", *SEGMENTING]
    res = subprocess.run(stream_cmd(inp, str(tmp_path / "a.mkv"), *args, "--ray"), cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "Ray is not installed" in res.stderr and "pip install 'ray>=2.9'" in res.stderr
    res = subprocess.run(stream_cmd(inp, str(tmp_path / "b.mkv"), *args), cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert np.array_equal(read_video(str(tmp_path / "b.mkv"))[0], rgb)
