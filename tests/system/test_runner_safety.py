"""The runner never loses or mixes up a user's video, fails early, and tells the truth (issue 16).

Concurrency, odd sizes, media and cleanup go through the real server fixture; signals through a real
runner subprocess (with a local ComfyUI of its own, or the fixture server), synchronised on the server's
/queue and on the runner's output, never on sleeps."""
from __future__ import annotations

import glob
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import psutil
import pytest

from harness import paths
from media_clips import make_clip, read

pytestmark = pytest.mark.server

REPO = paths.REPO


def cli(*args, cwd=REPO, timeout=600, env=None):
    p = subprocess.run([sys.executable, "-m", "tr_cli", *args], cwd=cwd, capture_output=True, text=True,
                       timeout=timeout, env=env)
    return p.returncode, p.stdout, p.stderr


def one_line_error(stderr):
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


def server_files(server) -> set[str]:
    """Every file under the pack's folders of the fixture server (what runs leave behind)."""
    found = set()
    for kind in ("input", "output", "temp"):
        found |= set(glob.glob(os.path.join(server.base, kind, "temporal_restore", "**", "*"), recursive=True))
    return {f for f in found if os.path.isfile(f)}


def queue(url):
    with urllib.request.urlopen(url + "/queue", timeout=10) as r:
        return json.loads(r.read())


def wait_until(cond, what, timeout=180, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"runner exited ({proc.returncode}) before {what}: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def blocker(tiny, steps=2000):
    """A prompt that keeps the server busy until interrupted (queued prompts wait behind it)."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny["checkpoint"]}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 4}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0],
                                                     "latent_image": ["4", 0], "seed": 7, "steps": steps, "cfg": 1.0,
                                                     "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": "safety/blocker"}},
    }


IDENTITY = ["-w", "degrade_measure", "--set", "Degrade.task=denoise", "--set", "Degrade.strength=0", "--quiet"]


# ------------------------------------------------------------------ nothing lost, nothing mixed up

def test_concurrent_runs_with_same_basename_keep_their_own_clip_and_clean_up(server, tiny, tmp_path):
    """a/clip.mkv and b/clip.mkv queued together on one server: each output is its own clip (before:
    both got b's, the uploads overwrote each other), and nothing either run put on the server remains."""
    clips = {}
    for name, base in (("a", 40), ("b", 200)):
        os.makedirs(tmp_path / name)
        clips[name] = make_clip(str(tmp_path / name / "clip.mkv"), 32, 32, 4, base=base)
    before = server_files(server)
    block = server.submit(blocker(tiny))
    wait_until(lambda: queue(server.url)["queue_running"], "the blocker to run")
    procs = {n: subprocess.Popen([sys.executable, "-m", "tr_cli", "run", str(tmp_path / n / "clip.mkv"), "--server",
                                  server.url, "-o", str(tmp_path / f"{n}.mkv"), *IDENTITY], cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in clips}
    try:
        wait_until(lambda: len(queue(server.url)["queue_pending"]) >= 2, "both runs to queue their prompts")
    finally:
        server.interrupt()
    server.wait(block)
    for n, p in procs.items():
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    for n, rgb in clips.items():
        got = read(str(tmp_path / f"{n}.mkv"))["frames"]
        assert np.array_equal(got, rgb), f"run {n} wrote another clip (mean {got.mean():.0f}, own {rgb.mean():.0f})"
    left = {f for f in server_files(server) - before if "blocker" not in f}
    assert not left, f"runs left files on the server: {sorted(left)}"


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.parametrize("command", ["run", "stream"])
def test_output_equal_to_input_is_refused(command, tmp_path):
    src = str(tmp_path / "clip.mkv")
    make_clip(src)
    before = _digest(src)
    extra = ["--backend", "passthrough"] if command == "stream" else ["--server", "http://127.0.0.1:9"]
    rc, _, err = cli(command, src, "-o", src, *extra)
    assert rc == 2 and "which the run reads" in one_line_error(err)
    assert _digest(src) == before
    if command == "run":
        ref = str(tmp_path / "ref.mkv")
        make_clip(ref)
        rc, _, err = cli("run", src, "--reference", ref, "-o", ref, "--server", "http://127.0.0.1:9")
        assert rc == 2 and "which the run reads" in one_line_error(err)


# ------------------------------------------------------------------ signals

def _children(pid):
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _gone(p: psutil.Process) -> bool:
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_signal_stops_local_server_no_orphan(sig, tiny, sample_clip, tmp_path):
    """SIGTERM/SIGHUP with a local ComfyUI: exit 128+n, no output, the server and its children gone
    (before: SIGTERM killed the runner at once and left ComfyUI running, orphaned)."""
    out = tmp_path / "never.mp4"
    models = os.path.dirname(os.path.dirname(tiny["checkpoint_path"]))
    proc = subprocess.Popen([sys.executable, "-m", "tr_cli", "run", sample_clip, "-w", "tdm_restore", "-o", str(out),
                             "--models-dir", models, "--checkpoint", tiny["checkpoint"], "--controlnet",
                             tiny["controlnet"], "--set", "DDIM restore.steps=1000", "--quiet", "--cpu"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = proc.stderr.readline()
    assert "127.0.0.1:" in line, line + proc.stderr.read()
    url = "http://127.0.0.1:" + line.split("127.0.0.1:")[1].split()[0]

    def running():
        try:
            return bool(queue(url)["queue_running"])
        except OSError:
            return False

    wait_until(running, "the local server to run the prompt", timeout=300, proc=proc)
    spawned = _children(proc.pid)
    assert spawned, "no local server process found"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert "interrupted by" in err and not out.exists()
    psutil.wait_procs(spawned, timeout=30)
    alive = [p.pid for p in spawned if not _gone(p)]
    assert not alive, f"orphaned processes after {sig.name}: {alive}"
    port = url.rsplit(":", 1)[1]
    assert not glob.glob(os.path.join(REPO, ".host", "runner", f"run-{port}-*")), "local server folder left behind"


def test_sigterm_with_server_interrupts_the_prompt_and_removes_the_upload(server, tiny, sample_clip, tmp_path):
    out = tmp_path / "never.mp4"
    before = server_files(server)
    proc = subprocess.Popen([sys.executable, "-m", "tr_cli", "run", sample_clip, "-w", "tdm_restore", "--server",
                             server.url, "-o", str(out), "--checkpoint", tiny["checkpoint"], "--controlnet",
                             tiny["controlnet"], "--set", "DDIM restore.steps=1000", "--quiet"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: queue(server.url)["queue_running"], "the prompt to run", proc=proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert not out.exists()
    q = queue(server.url)
    assert not q["queue_running"] and not q["queue_pending"], q
    assert server_files(server) == before, sorted(server_files(server) - before)
    assert server.alive()


# ------------------------------------------------------------------ fail before the compute

@pytest.mark.parametrize("assignment, expect", [
    ("Degrade.no_such_input=5", "has no input 'no_such_input'"),
    ("Degrade.seed=abc", "expected a whole number"),
    ("Degrade.task=no_task", "is not one of"),
])
def test_bad_set_is_refused_before_running(assignment, expect, server, sample_clip, tmp_path):
    """Before: no_such_input was ignored (exit 0) and a text for a number ended as 'no video output'."""
    rc, _, err = cli("run", sample_clip, "-w", "degrade_measure", "--server", server.url, "-o",
                     str(tmp_path / "o.mp4"), "--set", assignment)
    assert rc == 2 and expect in one_line_error(err)
    assert not (tmp_path / "o.mp4").exists()


def test_missing_model_lists_the_servers_models(server, tiny, sample_clip):
    rc, _, err = cli("run", sample_clip, "-w", "tdm_restore", "--server", server.url, "--checkpoint",
                     "no_such_model.safetensors", "--controlnet", tiny["controlnet"])
    line = one_line_error(err)
    assert rc == 2 and "no_such_model.safetensors" in line and tiny["checkpoint"] in line and "--models-dir" in line


@pytest.mark.parametrize("command", ["run", "stream"])
@pytest.mark.parametrize("name,family", [("x4_vsr_restore", "SD x4 upscaler"), ("sdxl_tile_restore", "SDXL")])
def test_other_family_workflow_without_checkpoint_is_refused_at_once(command, name, family, sample_clip, tmp_path):
    """No --checkpoint, no --models-dir holding the file: refused before a local server starts (one is
    never announced), naming the workflow, its family and the flag."""
    rc, _, err = cli(command, sample_clip, "-w", name, "-o", str(tmp_path / "o.mp4"), timeout=60)
    line = one_line_error(err)
    assert rc == 2 and name in line and f"needs an {family} checkpoint" in line and "--checkpoint" in line, line
    assert "starting a local ComfyUI" not in err and not os.path.exists(str(tmp_path / "o.mp4.stream"))


def test_checkpoint_on_a_workflow_without_one_says_so(sample_clip):
    rc, _, err = cli("run", sample_clip, "-w", "demo_restore", "--checkpoint", "x.safetensors",
                     "--server", "http://127.0.0.1:9")
    line = one_line_error(err)
    assert rc == 2 and "has no checkpoint loader" in line and "--set" not in line


@pytest.mark.parametrize("kind", ["frames", "size"])
def test_incompatible_reference_is_refused(kind, tmp_path):
    src, ref = str(tmp_path / "in.mkv"), str(tmp_path / "ref.mkv")
    make_clip(src, 32, 32, 6)
    make_clip(ref, 32, 32, 4) if kind == "frames" else make_clip(ref, 48, 32, 6)
    rc, _, err = cli("run", src, "--reference", ref, "--server", "http://127.0.0.1:9")
    assert rc == 2 and "expected the clean version of the same clip" in one_line_error(err)


@pytest.mark.parametrize("command", ["run", "stream"])
def test_malformed_server_url_is_one_line(command, tmp_path):
    src = str(tmp_path / "in.mkv")
    make_clip(src)
    rc, _, err = cli(command, src, "-o", str(tmp_path / "o.mkv"), "--server", "notaurl")
    assert rc == 2 and "expected a URL like" in one_line_error(err)


def test_state_dir_that_is_a_file_is_one_line(tmp_path):
    src = str(tmp_path / "in.mkv")
    make_clip(src)
    (tmp_path / "state").write_text("not a folder")
    rc, _, err = cli("stream", src, "-o", str(tmp_path / "o.mkv"), "--backend", "passthrough", "--state-dir",
                     str(tmp_path / "state"))
    assert rc == 2 and "is a file" in one_line_error(err)


def test_local_server_flags_need_a_local_server(tmp_path):
    src = str(tmp_path / "in.mkv")
    make_clip(src)
    rc, _, err = cli("run", src, "--server", "http://127.0.0.1:9", "--lowvram")
    assert rc == 2 and "--lowvram" in one_line_error(err)


# ------------------------------------------------------------------ sizes and media

def test_odd_size_vfr_mono_pcm_comes_back_exact_in_mkv(server, tmp_path):
    """101x77, variable frame rate, mono PCM: .mkv output has the exact size and pixels, the same
    timestamps and the same audio (before: 100x76 / yuv444p, constant rate, stereo at -3 dB)."""
    src = str(tmp_path / "in.mkv")
    rgb = make_clip(src, 101, 77, 6, vfr=True, audio="mono", acodec="pcm_s16le")
    rc, out, err = cli("run", src, "--server", server.url, "-o", str(tmp_path / "o.mkv"), *IDENTITY)
    assert rc == 0, err
    a, b = read(src), read(str(tmp_path / "o.mkv"))
    assert b["container"].startswith("matroska") and b["size"] == (101, 77)
    assert np.array_equal(b["frames"], rgb)
    assert b["times"] == a["times"] and "variable frame rate" in err
    assert (b["audio_codec"], b["channels"]) == ("pcm_s16le", 1) and b["rms"] == pytest.approx(a["rms"], rel=1e-6)


def test_odd_size_mp4_is_yuv420p_padded_and_keeps_mono_level(server, tmp_path):
    src = str(tmp_path / "in.mkv")
    rgb = make_clip(src, 101, 77, 6, audio="mono", acodec="pcm_s16le")
    rc, _, err = cli("run", src, "--server", server.url, "-o", str(tmp_path / "o.mp4"), *IDENTITY)
    assert rc == 0, err
    a, b = read(src), read(str(tmp_path / "o.mp4"))
    assert b["container"].startswith("mov,mp4") and b["pix_fmt"] == "yuv420p" and b["size"] == (102, 78)
    assert "padded to 102x78" in err and ".mkv" in err
    assert np.abs(b["frames"][:, :77, :101].astype(int) - rgb.astype(int)).mean() < 3  # lossy, same picture
    assert b["channels"] == 1 and 20 * np.log10(b["rms"] / a["rms"]) == pytest.approx(0, abs=0.5)


def test_extension_decides_the_container_or_is_refused(server, sample_clip, tmp_path):
    rc, _, err = cli("run", sample_clip, "--server", server.url, "-o", str(tmp_path / "o.avi"), *IDENTITY)
    assert rc == 2 and "extension decides the container" in one_line_error(err)
    rc, _, err = cli("run", sample_clip, "--server", server.url, "-o", str(tmp_path / "x.mkv"), *IDENTITY)
    assert rc == 0, err
    assert read(str(tmp_path / "x.mkv"))["container"].startswith("matroska")  # before: MP4 bytes
    with open(tmp_path / "x.mkv", "rb") as f:
        assert f.read(4) == b"\x1a\x45\xdf\xa3"  # EBML magic


def test_demo_workflow_round_trips_101x77(server, tmp_path):
    """The demo workflow's x2 working scale and its way back give the exact input size (before: 100x76
    and the metrics node refused the shape after all the compute, exit 4)."""
    src = str(tmp_path / "odd.mkv")
    make_clip(src, 101, 77, 2)
    rc, out, err = cli("run", src, "-w", "demo_restore", "--server", server.url, "-o", str(tmp_path / "o.mkv"),
                       "--set", "DDIM inversion (source prompt).steps=2", "--set", "DDIM restore (task prompt).steps=2")
    assert rc == 0, err
    assert read(str(tmp_path / "o.mkv"))["size"] == (101, 77)
    assert "202x154 (working size)" in err  # the cost line: frames x working size x steps
    for name in ("restored_vs_input", "input"):
        report = json.loads((tmp_path / f"o.metrics.{name}.json").read_text())
        assert (report["width"], report["height"]) == (101, 77)
        assert f"metrics {name} (" in out


def test_node_errors_beside_an_accepted_prompt_are_reported_not_dropped(server, sample_clip, tmp_path):
    """A branch the server rejects while the rest validates: ComfyUI queues the rest and lists the errors
    beside the prompt id. Before, the runner dropped them; now the prompt is cancelled and they are named."""
    wf = json.load(open(os.path.join(REPO, "workflows", "api", "degrade_measure.json")))
    # a link of the wrong type: only the server's validation sees it (the runner checks literal values)
    wf["90"] = {"class_type": "ImageInvert", "_meta": {"title": "Side branch"}, "inputs": {"image": ["2", 1]}}
    wf["91"] = {"class_type": "PreviewImage", "inputs": {"images": ["90", 0]}}
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(wf))
    rc, _, err = cli("run", sample_clip, "-w", str(path), "--server", server.url, "-o", str(tmp_path / "o.mp4"),
                     "--quiet")
    line = one_line_error(err)
    assert rc == 2 and "ImageInvert" in line and "'image'" in line
    q = queue(server.url)
    assert not q["queue_running"] and not q["queue_pending"], q
    assert not (tmp_path / "o.mp4").exists()


def test_long_run_warns_with_the_measured_estimate_and_keeps_going(server, tiny, sample_clip, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "tr_cli", "run", sample_clip, "-w", "tdm_restore", "--server",
                             server.url, "-o", str(tmp_path / "o.mp4"), "--checkpoint", tiny["checkpoint"],
                             "--controlnet", tiny["controlnet"], "--set", "DDIM restore.steps=1000",
                             "--warn-after", "0.001"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("warning: at "):
                break
        assert lines and lines[-1].startswith("warning: at "), "".join(lines)
        assert any(ln.startswith("work: 16 frames x 128x96 (working size) x ") and "1000 (DDIM restore)" in ln
                   for ln in lines), "".join(lines)
        assert proc.poll() is None, "the warning must not stop the run"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
    assert proc.returncode == 130


def test_vae_workflow_gives_the_exact_input_size(server, tiny, tmp_path):
    """tdm_restore encodes with a VAE (multiples of 8): the runner routes the restored frames through
    TR_MatchSize, so 101x77 in is 101x77 out."""
    src = str(tmp_path / "odd.mkv")
    make_clip(src, 101, 77, 2)
    rc, _, err = cli("run", src, "-w", "tdm_restore", "--server", server.url, "-o", str(tmp_path / "o.mkv"),
                     "--checkpoint", tiny["checkpoint"], "--controlnet", tiny["controlnet"],
                     "--set", "DDIM inversion.steps=2", "--set", "DDIM restore.steps=2", "--quiet")
    assert rc == 0, err
    assert read(str(tmp_path / "o.mkv"))["size"] == (101, 77)
