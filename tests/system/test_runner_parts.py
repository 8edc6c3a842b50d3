"""Parts of the runner and the pack that issue 16 added, checked on their own: TR_MatchSize in a real
ComfyUI, the progress display's per-node totals and measured ETA, the local server's device choice,
the cleanup route's selection, relative paths in restore.sh, stream's cleanup and odd-size output."""
from __future__ import annotations

import glob
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from harness import paths
from media_clips import make_clip, read

pytestmark = pytest.mark.server

REPO = paths.REPO


# ------------------------------------------------------------------ TR_MatchSize

def _size_prompt(w_in, h_in, w_ref, h_ref, method, **extra):
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": w_in, "height": h_in, "batch_size": 3, "color": 0x804020}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": w_ref, "height": h_ref, "batch_size": 1, "color": 0}},
        "3": {"class_type": "TR_MatchSize", "inputs": {"images": ["1", 0], "reference": ["2", 0], "method": method,
                                                       **extra}},
    }


def test_match_size_auto_scale_keeps_a_super_resolution_scale(comfy_host):
    """scale 0 (the runner's): a 4x output of a 101x77 input (cropped to multiples of 8 on the way) goes to 404x308,
    not back to 101x77; a restore's crop (96x72) goes to 101x77; scale 2 is taken as given."""
    for (wi, hi), scale, want in (((384, 288), 0, (308, 404)), ((416, 320), 0, (308, 404)), ((96, 72), 0, (77, 101)),
                                  ((96, 72), 2, (154, 202))):
        (out,) = comfy_host.run(_size_prompt(wi, hi, 101, 77, "bicubic", scale=scale), outputs=["3"])["outputs"]["3"]
        assert tuple(out.shape[1:3]) == want, (wi, hi, scale)
    from temporal_restore.pipelines import size_match

    assert size_match.output_scale(512, 384, 64, 48) == 8 and size_match.output_scale(40, 40, 64, 48) == 1
    with pytest.raises(ValueError, match="size"):
        size_match.output_scale(0, 4, 4, 4)


@pytest.mark.parametrize("method", ["area", "bicubic", "bilinear", "crop_or_pad"])
def test_match_size_gives_the_reference_size_in_comfyui(comfy_host, method):
    for (wi, hi) in ((200, 152), (96, 72)):  # the demo's x2 round trip of 101x77, and a VAE's crop of it
        (out,) = comfy_host.run(_size_prompt(wi, hi, 101, 77, method), outputs=["3"])["outputs"]["3"]
        assert tuple(out.shape) == (3, 77, 101, 3)
        assert out.dtype == torch.float32
        # a flat colour stays that colour whatever the method (no darkening at borders, no overshoot)
        want = torch.tensor([0x80, 0x40, 0x20]) / 255.0
        assert (out - want).abs().max().item() < 1e-5


def test_match_size_is_the_identity_at_the_same_size_and_area_equals_imagescaleby(comfy_host):
    x = torch.rand(2, 154, 202, 3)
    from temporal_restore.pipelines import size_match

    assert size_match.match_size(x, 154, 202) is x
    half = torch.nn.functional.interpolate(x.movedim(-1, 1), size=(77, 101), mode="area").movedim(1, -1)
    assert torch.equal(size_match.match_size(x, 77, 101, "area"), half)
    with pytest.raises(ValueError, match="method"):
        size_match.match_size(x, 77, 101, "nearest-ish")
    schema = comfy_host.node("TR_MatchSize").define_schema()
    assert all(i.tooltip for i in schema.inputs)


# ------------------------------------------------------------------ progress

def test_progress_shows_the_current_nodes_own_total_and_a_measured_eta():
    from tr_cli.progress import Progress

    prompt = {"7": {"class_type": "TR_DDIMInvert", "_meta": {"title": "DDIM inversion"}, "inputs": {"steps": 20}},
              "8": {"class_type": "TR_DDIMRestore", "_meta": {"title": "DDIM restore"}, "inputs": {"steps": 20}},
              "9": {"class_type": "VAEDecode", "_meta": {"title": "Decode"}, "inputs": {}}}
    p = Progress(prompt, "pid", warn_after=600)
    p.update({"type": "executing", "data": {"node": "7", "prompt_id": "pid"}}, 0.0)
    for v in range(1, 21):
        p.update({"type": "progress", "data": {"node": "7", "value": v, "max": 20, "prompt_id": "pid"}}, 10.0 * v)
    assert p.line().startswith("DDIM inversion 20/20")
    p.update({"type": "executing", "data": {"node": "9", "prompt_id": "pid"}}, 200.0)
    assert p.line() == "Decode"  # not the previous node's frozen 20/20
    p2 = Progress(prompt, "pid", warn_after=600)
    p2.update({"type": "executing", "data": {"node": "7", "prompt_id": "pid"}}, 0.0)
    p2.update({"type": "progress", "data": {"node": "7", "value": 2, "max": 20, "prompt_id": "pid"}}, 60.0)
    # 30 s per step measured: 18 steps left here, 20 in the restore still to come
    assert p2.eta == (pytest.approx(540.0), pytest.approx(1140.0))
    assert "node eta 9m00s" in p2.line() and "run eta 19m00s" in p2.line()
    assert p2.warning and "19m00s" in p2.warning
    p2.update({"type": "progress", "data": {"node": "x", "value": 1, "max": 2, "prompt_id": "other"}}, 61.0)
    assert p2.line().startswith("DDIM inversion 2/20")  # another client's prompt is not ours


def test_no_warning_for_a_short_run():
    from tr_cli.progress import Progress

    p = Progress({"1": {"class_type": "KSampler", "inputs": {"steps": 4}}}, "pid", warn_after=600)
    p.update({"type": "progress", "data": {"node": "1", "value": 1, "max": 4}}, 1.0)
    assert p.eta is not None and p.warning is None


# ------------------------------------------------------------------ device and memory flags

def test_local_server_uses_the_gpu_when_torch_sees_one_and_passes_memory_flags(tmp_path):
    from tr_cli.client import LocalServer, gpu_available

    has_gpu = gpu_available(sys.executable)
    auto = LocalServer(str(tmp_path), flags=["--lowvram", "--reserve-vram", "1.5"])
    auto.base = str(tmp_path)
    cmd = auto.command([])
    assert ("--cpu" in cmd) == (not has_gpu) and auto.device == ("gpu" if has_gpu else "cpu")
    assert cmd[-3:] == ["--lowvram", "--reserve-vram", "1.5"]
    forced = LocalServer(str(tmp_path), cpu=True)
    forced.base = str(tmp_path)
    assert "--cpu" in forced.command([]) and forced.device == "cpu"


def test_memory_flags_parse_into_comfyui_words():
    from tr_cli.__main__ import build_parser
    from tr_cli.client import server_flags

    args = build_parser().parse_args(["run", "x.mp4", "--novram", "--reserve-vram", "2"])
    assert server_flags(args) == ["--novram", "--reserve-vram", "2"] and not args.cpu


# ------------------------------------------------------------------ cleanup route

def test_cleanup_removes_only_the_tagged_files_in_the_packs_folders(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_files", os.path.join(REPO, "nodes", "run_files.py"))
    run_files = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_files)
    tag = "0123456789abcdef0123456789abcdef"
    keep = [tmp_path / "input" / f"{tag}_clip.mp4", tmp_path / "input" / "temporal_restore" / "other_clip.mp4"]
    gone = [tmp_path / "input" / "temporal_restore" / f"{tag}_clip.mp4",
            tmp_path / "output" / "temporal_restore" / f"{tag}_frames_00001_.png"]
    for f in keep + gone:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    assert run_files.remove_tagged([str(tmp_path / "input"), str(tmp_path / "output")], tag) == 2
    assert all(f.exists() for f in keep) and not any(f.exists() for f in gone)
    with pytest.raises(ValueError, match="tag"):
        run_files.remove_tagged([str(tmp_path)], "../..")


# ------------------------------------------------------------------ restore.sh, stream

def test_restore_sh_takes_relative_paths_from_the_users_folder(server, tmp_path):
    make_clip(str(tmp_path / "mine.mkv"))
    env = {**os.environ, "TR_SKIP_SETUP": "1"}
    p = subprocess.run(["bash", os.path.join(REPO, "scripts", "restore.sh"), "mine.mkv", "-o", "restored.mkv",
                        "-w", "degrade_measure", "--server", server.url, "--quiet"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "restored.mkv").exists()
    assert not os.path.exists(os.path.join(REPO, "restored.mkv"))


def _server_files(server):
    found = set()
    for kind in ("input", "output", "temp"):
        found |= set(glob.glob(os.path.join(server.base, kind, "temporal_restore", "**", "*"), recursive=True))
    return {f for f in found if os.path.isfile(f)}


def test_stream_deletes_its_segments_and_frames_on_the_server(server, tiny, tmp_path):
    """Before: every uploaded segment and returned frame stayed (50 MB after three short runs)."""
    src = str(tmp_path / "in.mkv")
    make_clip(src, 32, 32, 8)
    before = _server_files(server)
    sets = ["--set", "ILT chunked sampling.steps=1", "--set", "ILT chunked sampling.window=4",
            "--set", "ILT chunked sampling.overlap=2"]
    p = subprocess.run([sys.executable, "-m", "tr_cli", "stream", src, "-o", str(tmp_path / "o.mkv"), "--server",
                        server.url, "--segment", "5", "--context", "2", "--quiet", *sets,
                        "--checkpoint", tiny["checkpoint"], "--controlnet", tiny["controlnet"]],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert read(str(tmp_path / "o.mkv"))["frames"].shape == (8, 32, 32, 3)
    assert _server_files(server) == before, sorted(_server_files(server) - before)


def test_stream_odd_size_mp4_is_yuv420p_with_mono_audio(tmp_path):
    """Before: odd-size stream MP4s were H.264 yuv444p, which many players refuse."""
    src = str(tmp_path / "in.mkv")
    rgb = make_clip(src, 33, 21, 6, audio="mono")
    p = subprocess.run([sys.executable, "-m", "tr_cli", "stream", src, "-o", str(tmp_path / "o.mp4"), "--backend",
                        "passthrough", "--segment", "4", "--context", "1", "--quiet"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    a, b = read(src), read(str(tmp_path / "o.mp4"))
    assert b["pix_fmt"] == "yuv420p" and b["size"] == (34, 22) and "padded to 34x22" in p.stderr
    assert np.abs(b["frames"][:, :21, :33].astype(int) - rgb.astype(int)).mean() < 3
    assert b["channels"] == 1 and b["rms"] == pytest.approx(a["rms"], rel=0.05)


# ------------------------------------------------------------------ the copy a host reads exactly
def test_rgb_inputs_go_to_the_host_as_an_exact_rgb24_copy(tmp_path):
    """ComfyUI 0.33 decodes FFV1 bgr0 through float swscale (level 255 -> 254.02): the runner hands it an
    rgb24 PNG-in-MOV copy instead, which keeps every level, white included; YUV inputs go as they are."""
    import av

    from tr_cli import media

    src = str(tmp_path / "in.mkv")
    want = make_clip(src, 33, 17, 3)
    assert want.max() == 255  # the level the float path loses
    info = media.probe(src)
    assert info["pix_fmt"] == "bgr0" and media.needs_host_copy(info)
    dst = media.host_copy(src, str(tmp_path / "copy.mov"), info)
    with av.open(dst) as c:
        got = [f for f in c.decode(video=0)]
    assert {f.format.name for f in got} == {"rgb24"}
    assert np.array_equal(np.stack([f.to_ndarray() for f in got]), want)
    assert not media.needs_host_copy({"pix_fmt": "yuv420p"}) and not media.needs_host_copy({"pix_fmt": "rgb24"})


# ------------------------------------------------------------------ family check before a local server

def test_family_check_passes_when_the_file_is_there_or_replaced(tmp_path):
    """preflight.check_family refuses only what would fail: an x4 workflow runs when a --models-dir holds its
    checkpoint, when --checkpoint replaces it, or against a --server (the server checks); SD1.5 ones always pass."""
    import argparse

    from tr_cli import preflight, workflows
    from tr_cli.client import RunnerError

    def args(**kw):
        return argparse.Namespace(**{"checkpoint": None, "server": None, **kw})

    x4 = workflows.load("x4_vsr_restore")
    with pytest.raises(RunnerError, match=r"^workflow x4_vsr_restore needs an SD x4 upscaler checkpoint"):
        preflight.check_family(args(), x4, "x4_vsr_restore", [str(tmp_path)])
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "x4-upscaler-ema.safetensors").write_bytes(b"")
    preflight.check_family(args(), x4, "x4_vsr_restore", [str(tmp_path)])
    preflight.check_family(args(checkpoint="mine.safetensors"), x4, "x4_vsr_restore", [])
    preflight.check_family(args(server="http://127.0.0.1:9"), x4, "x4_vsr_restore", [])
    preflight.check_family(args(), workflows.load("tdm_restore"), "tdm_restore", [])
    assert workflows.family(x4) == "sd_x4" and workflows.family(workflows.load("demo_restore")) is None

