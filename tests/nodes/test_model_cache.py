"""TR_TaskPromptControlNet reads its ControlNet file once: a changed prompt or setting loads no file,
a changed file is loaded again (real ComfyUI, the real loader, a spy on ComfyUI's file reader)."""
from __future__ import annotations

import os
import shutil

import pytest


def _prompt(name, task, strength=1.0):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 2, "color": 0}},
        "3": {"class_type": "TR_TaskPromptControlNet", "inputs": {
            "control_net_name": name, "clip": ["1", 1], "image": ["2", 0], "task": task,
            "custom_prompt": "", "negative_prompt": "", "strength": strength, "start_percent": 0.0,
            "end_percent": 1.0}},
    }


@pytest.fixture
def reads(monkeypatch):
    """Paths ComfyUI's load_torch_file is asked to read during the test (the original still runs)."""
    import comfy.utils

    seen = []
    original = comfy.utils.load_torch_file

    def spy(ckpt, *args, **kwargs):
        seen.append(os.path.abspath(ckpt))
        return original(ckpt, *args, **kwargs)

    monkeypatch.setattr(comfy.utils, "load_torch_file", spy)
    return seen


def test_controlnet_read_once_then_reloaded_when_file_changes(comfy_host, tiny, reads):
    import safetensors.torch

    name = "cache_test_controlnet.safetensors"  # own copy: other tests keep the shared file
    path = os.path.abspath(os.path.join(os.path.dirname(tiny["controlnet_path"]), name))
    shutil.copyfile(tiny["controlnet_path"], path)
    try:
        first = comfy_host.run(_prompt(name, "dehaze"), outputs=["3"])["outputs"]["3"][2]
        assert reads.count(path) == 1
        # only the prompt and a setting change: the node runs again (new conditioning) but reads no file
        out = comfy_host.run(_prompt(name, "derain", 0.5), outputs=["3"])["outputs"]["3"]
        assert reads.count(path) == 1
        assert out[2] is first
        assert out[0][0][1]["control"].strength == pytest.approx(0.5)
        # the file changes (same size, new mtime and values): loaded again, new weights used
        sd = safetensors.torch.load_file(path)
        key = next(k for k in sorted(sd) if k.endswith("weight") and sd[k].ndim >= 2)
        sd[key] = sd[key] * 2.0
        safetensors.torch.save_file(sd, path)
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # mtime moves even on coarse clocks
        again = comfy_host.run(_prompt(name, "dehaze", 0.7), outputs=["3"])["outputs"]["3"][2]
        assert reads.count(path) == 2
        assert again is not first
        weight = dict(again.control_model.named_parameters())[key[len("control_model."):]]
        before = dict(first.control_model.named_parameters())[key[len("control_model."):]]
        assert (weight - 2.0 * before).abs().max().item() <= 1e-6
    finally:
        os.remove(path)


def test_cache_is_bounded_and_skips_invalid(tmp_path):
    import temporal_restore.nodes._model_cache as mc

    mc.clear()
    calls = []

    def loader(p):
        calls.append(p)
        return None if p.endswith("bad") else object()

    files = []
    for i in range(mc.MAX_ENTRIES + 1):
        f = tmp_path / f"m{i}"
        f.write_bytes(b"x" * (i + 1))
        files.append(str(f))
    objs = [mc.load_cached(f, loader) for f in files]
    assert mc.load_cached(files[-1], loader) is objs[-1]  # still cached
    assert len(calls) == len(files)
    assert mc.load_cached(files[0], loader) is not objs[0]  # the oldest was dropped
    bad = tmp_path / "bad"
    bad.write_bytes(b"?")
    assert mc.load_cached(str(bad), loader) is None and mc.load_cached(str(bad), loader) is None
    assert calls.count(str(bad)) == 2  # a failed load is never cached
    mc.clear()
