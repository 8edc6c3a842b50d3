"""scripts/train_controlnet.py: a few steps over the tiny SD1.5-shaped test checkpoint write a file that ComfyUI's
own ControlNet loader accepts and that drives sampling through TR_TaskPromptControlNet's frame-aligned
application; resuming continues from the saved state."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from harness.paths import REPO

pytestmark = pytest.mark.slow


def _script():
    spec = importlib.util.spec_from_file_location("tr_train_controlnet", os.path.join(REPO, "scripts", "train_controlnet.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_train_controlnet_loads_in_comfy(comfy_host, tiny, tmp_path):
    import comfy.controlnet

    from safetensors.torch import load_file, save_file

    tc = _script()
    sd = load_file(tiny["checkpoint_path"])  # the tiny test VAE has vae_scale 0 (encodes to inf): give it 1
    sd["first_stage_model.vae_scale"] = torch.tensor(1.0)
    base = str(tmp_path / "tiny_base.safetensors")
    save_file(sd, base)
    out = str(tmp_path / "task_cn.safetensors")
    n = torch.get_num_threads()
    try:
        args = ["--base", base, "--out", out, "--size", "64", "--crops", "8", "--steps", "1",
                "--threads", "1", "--tasks", "denoise", "sr_x4"]
        assert tc.train(tc.parse(args)) == out
        first = os.path.getmtime(out)
        args[args.index("--steps") + 1] = "2"
        assert tc.train(tc.parse(args)) == out  # resumes at step 1 from <out>.state.pt
    finally:
        torch.set_num_threads(n)
    assert torch.load(out + ".state.pt", weights_only=False)["step"] == 2
    assert os.path.getmtime(out) >= first
    cn = comfy.controlnet.load_controlnet(out)
    assert cn is not None and type(cn).__name__ == "ControlNet"
    import comfy.sample
    import comfy.sd
    from temporal_restore.nodes import task_prompt

    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(tiny["checkpoint_path"], output_vae=False, output_clip=True)
    enc = lambda t: clip.encode_from_tokens_scheduled(clip.tokenize(t))  # noqa: E731
    hint = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    pos, neg = task_prompt.apply_controlnet(enc("remove the noise"), enc(""), cn, hint, 1.0, 0.0, 1.0)
    lat = torch.zeros(2, 4, 8, 8)
    out = comfy.sample.sample(model, torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)), 1, 1.0,
                              "euler", "normal", pos, neg, lat, denoise=1.0, seed=0, disable_pbar=True)
    assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()
