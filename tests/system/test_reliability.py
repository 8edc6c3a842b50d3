"""Reliability through the real server: interrupts leave no state behind, soak has bounded memory and
bit-identical outputs, a killed save never leaves a finished-looking file."""
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import safetensors.torch

from harness import paths

pytestmark = pytest.mark.server


def _graph(tiny, seed=1, steps=3, frames=4, size=32, prefix="soak/latent", swcfa=True):
    model = ["1", 0]
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny["checkpoint"]}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "remove the noise", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": frames}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": prefix}},
    }
    if swcfa:
        g["6"] = {"class_type": "TR_SWCFAPatch", "inputs": {"model": ["1", 0], "mode": "sw_cfa", "radius": 1, "blocks": "all"}}
        model = ["6", 0]
    g["5"] = {"class_type": "KSampler", "inputs": {"model": model, "positive": ["2", 0], "negative": ["3", 0],
                                                     "latent_image": ["4", 0], "seed": seed, "steps": steps, "cfg": 2.0,
                                                     "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    return g


def _latent(server, entry):
    files = [f for f in server.output_files(entry) if f.endswith(".latent")]
    assert files, entry.get("outputs")
    return safetensors.torch.load_file(files[0])["latent_tensor"]


def _wait_running(server, timeout=120, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.get("/queue")["queue_running"]:
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"runner exited ({proc.returncode}) before its prompt ran: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError("prompt never started running")


def test_interrupt_during_sampling_leaves_no_patched_state(server, tiny):
    baseline = _latent(server, server.run(_graph(tiny, seed=11, prefix="intr/base")))
    long_id = server.submit(_graph(tiny, seed=12, steps=400, frames=8, size=64, prefix="intr/long"))
    _wait_running(server)
    time.sleep(1.0)
    server.interrupt()
    entry = server.wait(long_id, timeout=300)
    assert entry["status"]["status_str"] == "error"
    assert any(m[0] == "execution_interrupted" for m in entry["status"]["messages"]), entry["status"]
    assert not entry.get("outputs"), "an interrupted prompt must not present an output"
    again = _latent(server, server.run(_graph(tiny, seed=11, prefix="intr/again")))
    assert (again - baseline).abs().max().item() == 0.0


def test_cli_ctrl_c_interrupts_and_server_keeps_serving(server, tiny, sample_clip, tmp_path):
    out = tmp_path / "never.mp4"
    wf = os.path.join(paths.REPO, "workflows", "api", "tdm_restore.json")
    proc = subprocess.Popen([sys.executable, "-m", "tr_cli", "run", sample_clip, "-w", wf, "--server", server.url,
                             "-o", str(out), "--checkpoint", tiny["checkpoint"], "--controlnet", tiny["controlnet"],
                             "--set", "DDIM restore.steps=1000", "--quiet"],
                            cwd=paths.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_running(server, proc=proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert not out.exists() and not (tmp_path / "never.mp4.part").exists()
    deadline = time.time() + 120
    while server.get("/queue")["queue_running"] and time.time() < deadline:
        time.sleep(0.2)
    entry = server.run(_graph(tiny, seed=3, prefix="intr/after"))
    assert _latent(server, entry).shape[0] == 4


def test_soak_50_prompts_bounded_rss_identical_outputs(server, tiny, record_property):
    proc = psutil.Process(server.proc.pid)
    results = {1: [], 2: []}
    rss = []
    for i in range(50):
        seed = 1 + i % 2  # alternate so the cache never short-cuts the sampler
        entry = server.run(_graph(tiny, seed=seed, steps=2, frames=2, prefix=f"soak/{i:02d}"))
        results[seed].append(_latent(server, entry))
        rss.append(proc.memory_info().rss)
    for seed, outs in results.items():
        for o in outs[1:]:
            assert (o - outs[0]).abs().max().item() == 0.0, f"seed {seed}: outputs differ between identical prompts"
    growth = (rss[49] - rss[4]) / rss[4]
    record_property("rss_growth_5_to_50", growth)
    print(f"\nsoak: RSS prompt 5 {rss[4] / 2**20:.1f} MiB, prompt 50 {rss[49] / 2**20:.1f} MiB, growth {growth * 100:.2f}%")
    assert growth < 0.05, f"RSS grew {growth * 100:.1f}% from prompt 5 to 50"


def test_server_killed_mid_save_leaves_no_finished_looking_file(tiny):
    """SIGKILL a dedicated server while TR_SaveVideo encodes: only a .partial file may remain."""
    from harness.server import ComfyServer

    base = paths.base_dir("killsave")
    out_dir = os.path.join(base, "output", "killsave")
    if os.path.isdir(out_dir):
        for f in os.listdir(out_dir):
            os.remove(os.path.join(out_dir, f))
    srv = ComfyServer(base).start()
    try:
        prompt = {
            "1": {"class_type": "EmptyImage", "inputs": {"width": 384, "height": 384, "batch_size": 240, "color": 1234567}},
            "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 24.0}},
            "3": {"class_type": "TR_SaveVideo", "inputs": {"video": ["2", 0], "filename_prefix": "killsave/clip",
                                                           "format": "auto", "codec": "auto"}},
        }
        srv.submit(prompt)
        deadline = time.time() + 180
        seen_partial = False
        while time.time() < deadline and not seen_partial:
            seen_partial = os.path.isdir(out_dir) and any(".partial." in f for f in os.listdir(out_dir))
            time.sleep(0.02)
        assert seen_partial, "the encoder never started writing"
        os.kill(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait()
        finished = [f for f in os.listdir(out_dir) if ".partial." not in f]
        assert finished == [], f"a killed save left finished-looking files: {finished}"
    finally:
        srv.stop()


def _long_stage(tiny, stage):
    """A prompt whose `stage` node runs long enough to be interrupted mid-way."""
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny["checkpoint"]}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "remove the noise", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
    }
    if stage == "inversion":
        g["4"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 8}}
        g["5"] = {"class_type": "TR_DDIMInvert", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                              "latent": ["4", 0], "steps": 1000, "cfg": 1.0, "denoise": 1.0, "refine": 0}}
    elif stage == "chunking":
        g["4"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 16}}
        g["5"] = {"class_type": "TR_ILTChunker", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                              "latent": ["4", 0], "seed": 0, "cfg": 2.0, "sampler_name": "euler",
                                                              "scheduler": "normal", "steps": 500, "denoise": 1.0, "window": 8,
                                                              "overlap": 4, "mode": "sequential", "noise": "rescheduled",
                                                              "carry_state": True}}
    else:  # decoding
        g["4"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 256, "height": 256, "batch_size": 2000}}
        g["5"] = {"class_type": "TR_TE3DVAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2], "mode": "te3d",
                                                                 "chunk": 4, "overlap": 1, "kv_radius": 1, "temporal_weights": ""}}
        g["6"] = {"class_type": "TR_VideoMetrics", "inputs": {"restored": ["5", 0], "window_starts": "", "filename_prefix": "intr/never"}}
        return g
    g["6"] = {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": f"intr/{stage}"}}
    return g


@pytest.mark.parametrize("stage", ["inversion", "chunking", "decoding"])
def test_interrupt_each_long_stage_then_fresh_equal_run(server, tiny, stage):
    baseline = _latent(server, server.run(_graph(tiny, seed=21, prefix=f"intr/{stage}-base")))
    long_id = server.submit(_long_stage(tiny, stage))
    _wait_running(server)
    time.sleep(1.5)
    server.interrupt()
    entry = server.wait(long_id, timeout=300)
    assert entry["status"]["status_str"] == "error", f"{stage} finished before the interrupt: make it longer"
    assert any(m[0] == "execution_interrupted" for m in entry["status"]["messages"]), entry["status"]
    assert not server.output_files(entry), f"interrupted {stage} presented outputs"
    again = _latent(server, server.run(_graph(tiny, seed=21, prefix=f"intr/{stage}-again")))
    assert (again - baseline).abs().max().item() == 0.0, f"state left behind by the interrupted {stage}"
