"""TDM nodes (task-prompt ControlNet, SW-CFA patch, DDIM inversion/restore) on real ComfyUI with tiny models."""
from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch

from harness.paths import REPO
WORKFLOW = os.path.join(REPO, "workflows", "api", "tdm_restore.json")

FRAMES, LAT = 4, 8  # 4 frames of 64x64 pixels -> 8x8 latents


@pytest.fixture(scope="module")
def tdm(comfy_host, tiny):
    import comfy.controlnet
    import comfy.sd

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(tiny["checkpoint_path"], output_vae=True, output_clip=True)
    cn = comfy.controlnet.load_controlnet(tiny["controlnet_path"])
    enc = lambda t: clip.encode_from_tokens_scheduled(clip.tokenize(t))  # noqa: E731
    g = torch.Generator().manual_seed(0)
    hint = torch.rand(FRAMES, 64, 64, 3, generator=g)
    latent = torch.randn(FRAMES, 4, LAT, LAT, generator=g)
    noise = torch.randn(FRAMES, 4, LAT, LAT, generator=g)
    from temporal_restore.nodes import ddim_invert, sw_cfa, task_prompt  # noqa: F401  (pack modules)

    return {"model": model, "clip": clip, "vae": vae, "cn": cn, "pos": enc("remove the noise"), "neg": enc(""),
            "hint": hint, "latent": latent, "noise": noise}


def _sample(model, pos, neg, latent, noise, cfg=2.0, steps=1):
    import comfy.sample

    return comfy.sample.sample(model, noise.clone(), steps, cfg, "euler", "normal", pos, neg, latent.clone(),
                               denoise=1.0, seed=0, disable_pbar=True)


def _mods():
    from temporal_restore.nodes import ddim_invert, sw_cfa, task_prompt

    return sw_cfa, task_prompt, ddim_invert


def test_nodes_registered(comfy_host):
    for nid in ("TR_SWCFAPatch", "TR_TaskPromptControlNet", "TR_DDIMInvert", "TR_DDIMRestore"):
        schema = comfy_host.node(nid).define_schema()
        assert schema.node_id == nid and schema.category.startswith("temporal_restore/")
        assert schema.display_name.endswith("(Temporal Restore)")
        assert all(i.tooltip for i in schema.inputs), nid


def test_swcfa_radius0_equals_stock_and_window_differs(tdm):
    sw, _, _ = _mods()
    base = _sample(tdm["model"], tdm["pos"], tdm["neg"], tdm["latent"], tdm["noise"])
    n0 = _sample(sw.install_sw_cfa(tdm["model"], "sw_cfa", 0), tdm["pos"], tdm["neg"], tdm["latent"], tdm["noise"])
    selfm = _sample(sw.install_sw_cfa(tdm["model"], "self", 3), tdm["pos"], tdm["neg"], tdm["latent"], tdm["noise"])
    n3 = _sample(sw.install_sw_cfa(tdm["model"], "sw_cfa", 3), tdm["pos"], tdm["neg"], tdm["latent"], tdm["noise"])
    assert (n0 - base).abs().max().item() <= 1e-5
    assert (selfm - base).abs().max().item() <= 1e-5
    assert (n3 - base).abs().max().item() > 1e-4


def test_patch_on_clone_leaves_original_untouched(tdm):
    sw, _, _ = _mods()
    model = tdm["model"]
    before = copy.deepcopy(model.model_options)
    base = _sample(model, tdm["pos"], tdm["neg"], tdm["latent"], tdm["noise"])
    patched = sw.install_sw_cfa(model, "sw_cfa", 2)
    _sample(patched, tdm["pos"], tdm["neg"], tdm["latent"], tdm["noise"])
    after = _sample(model, tdm["pos"], tdm["neg"], tdm["latent"], tdm["noise"])
    assert model.model_options == before
    assert torch.equal(after, base)
    assert "temporal_restore" in patched.model_options["transformer_options"]
    assert "patches_replace" not in model.model_options.get("transformer_options", {})


def test_install_twice_does_not_stack(tdm):
    sw, _, _ = _mods()
    once = sw.install_sw_cfa(tdm["model"], "sw_cfa", 2)
    twice = sw.install_sw_cfa(sw.install_sw_cfa(tdm["model"], "first_frame", 1), "sw_cfa", 2)
    for key, patch in twice.model_options["transformer_options"]["patches_replace"]["attn1"].items():
        assert patch.prev is None and patch.mode == "sw_cfa" and patch.radius == 2, key
    a = _sample(once, tdm["pos"], tdm["neg"], tdm["latent"], tdm["noise"])
    b = _sample(twice, tdm["pos"], tdm["neg"], tdm["latent"], tdm["noise"])
    assert torch.equal(a, b)


def test_default_blocks_are_sd15_attn1(tdm):
    sw, _, _ = _mods()
    m = sw.install_sw_cfa(tdm["model"])
    keys = set(m.model_options["transformer_options"]["patches_replace"]["attn1"])
    assert keys == set(sw.SD15_ATTN1_BLOCKS)
    sel = sw.install_sw_cfa(tdm["model"], blocks="input:1,2; output:3-5")
    assert set(sel.model_options["transformer_options"]["patches_replace"]["attn1"]) == {
        ("input", 1), ("input", 2), ("output", 3), ("output", 4), ("output", 5)}
    with pytest.raises(ValueError, match="blocks"):
        sw.install_sw_cfa(tdm["model"], blocks="input:3")  # input 3 is a downsample, no attention
    with pytest.raises(ValueError, match="mode"):
        sw.install_sw_cfa(tdm["model"], mode="nope")


def test_identical_frames_equal_stock(tdm):
    sw, _, _ = _mods()
    lat = tdm["latent"][:1].repeat(FRAMES, 1, 1, 1)
    noise = tdm["noise"][:1].repeat(FRAMES, 1, 1, 1)
    base = _sample(tdm["model"], tdm["pos"], tdm["neg"], lat, noise)
    for mode in ("sw_cfa", "first_frame"):
        out = _sample(sw.install_sw_cfa(tdm["model"], mode, 3), tdm["pos"], tdm["neg"], lat, noise)
        # relative to the output scale (LATENT values here are ~1e2): float32 rounding of the window mean
        assert (out - base).abs().max().item() <= 1e-5 * base.abs().max().item(), mode


def test_swcfa_with_controlnet(tdm):
    """The ControlNet's own UNet runs unpatched; the patched model with ControlNet conds still matches
    stock at N=0 and changes at N=3."""
    sw, tp, _ = _mods()
    pos, neg = tp.apply_controlnet(tdm["pos"], tdm["neg"], tdm["cn"], tdm["hint"], 1.0, 0.0, 1.0)
    base = _sample(tdm["model"], pos, neg, tdm["latent"], tdm["noise"])
    no_cn = _sample(tdm["model"], tdm["pos"], tdm["neg"], tdm["latent"], tdm["noise"])
    assert (base - no_cn).abs().max().item() > 1e-4  # the ControlNet does something
    n0 = _sample(sw.install_sw_cfa(tdm["model"], "sw_cfa", 0), pos, neg, tdm["latent"], tdm["noise"])
    n3 = _sample(sw.install_sw_cfa(tdm["model"], "sw_cfa", 3), pos, neg, tdm["latent"], tdm["noise"])
    assert (n0 - base).abs().max().item() <= 1e-5
    assert torch.isfinite(n3).all() and (n3 - base).abs().max().item() > 1e-4


def test_controlnet_hint_follows_frame_index(tdm):
    """A window of frames 2,3 sampled with the full hint and frame_index == frames 2,3 sampled alone
    with their own hints."""
    _, tp, _ = _mods()
    from temporal_restore.nodes._patching import clone_with_options

    lat, noise = tdm["latent"][2:4], tdm["noise"][2:4]
    pos_full, neg_full = tp.apply_controlnet(tdm["pos"], tdm["neg"], tdm["cn"], tdm["hint"], 1.0, 0.0, 1.0)
    pos_win, neg_win = tp.apply_controlnet(tdm["pos"], tdm["neg"], tdm["cn"], tdm["hint"][2:4], 1.0, 0.0, 1.0)
    windowed = _sample(clone_with_options(tdm["model"], "frame_index", [2, 3]), pos_full, neg_full, lat, noise)
    alone = _sample(tdm["model"], pos_win, neg_win, lat, noise)
    first = _sample(tdm["model"], *tp.apply_controlnet(tdm["pos"], tdm["neg"], tdm["cn"], tdm["hint"][0:2], 1.0, 0.0, 1.0),
                    lat, noise)
    assert (windowed - alone).abs().max().item() <= 1e-5
    assert (windowed - first).abs().max().item() > 1e-4  # the hint frames matter
    with pytest.raises(Exception, match="image"):
        _sample(tdm["model"], pos_full, neg_full, lat, noise)  # 4 hints for 2 frames, no frame_index


def test_task_prompt_node_outputs(comfy_host, tiny):
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny["checkpoint"]}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 3, "color": 0}},
        "3": {"class_type": "TR_TaskPromptControlNet", "inputs": {
            "control_net_name": tiny["controlnet"], "clip": ["1", 1], "image": ["2", 0], "task": "dehaze",
            "custom_prompt": "", "negative_prompt": "", "strength": 0.8, "start_percent": 0.0, "end_percent": 1.0}},
    }
    out = comfy_host.run(prompt, outputs=["3"])["outputs"]["3"]
    pos, neg, cn = out
    assert len(pos) == 1 and len(neg) == 1
    assert pos[0][1]["control"] is neg[0][1]["control"]
    assert pos[0][1]["control"].strength == pytest.approx(0.8)
    assert pos[0][1]["control"].cond_hint_original.shape == (3, 3, 64, 64)
    assert cn is not pos[0][1]["control"]
    dup = pos[0][1]["control"].copy()  # copies stay frame-aligned with the full hint
    # (ComfyUI loaded the pack under its own module name: compare by class name)
    assert type(dup).__name__ == "TRFrameAlignedControlNet"
    assert dup._tr_full_hint is pos[0][1]["control"]._tr_full_hint
    _, tp, _ = _mods()
    assert tp.task_prompt("dehaze", "") == "remove the haze"
    assert tp.task_prompt("custom", " remove the snow ") == "remove the snow"
    with pytest.raises(ValueError, match="custom_prompt"):
        tp.task_prompt("custom", "")


def test_ddim_invert_restore_round_trip(tdm):
    """Round trip on the tiny (random-weight) SD1.5 UNet over the lower half of the schedule. A random
    UNet is no trained denoiser, so a full (denoise 1) inversion does not come back (relative error
    ~1.3 measured); a partial one does, and the fixed-point refinement tightens it."""
    _, _, dd = _mods()
    from temporal_restore.pipelines.ddim_inversion import relative_error

    latent = {"samples": tdm["latent"] * 2.0}  # LATENT scale (process_latent_in multiplies by 0.18215)
    errs = {}
    for refine in (0, 1):
        inv = dd.invert(tdm["model"], tdm["pos"], tdm["neg"], latent, steps=4, cfg=1.0, denoise=0.5, refine=refine)
        info = inv["tr_inversion"]
        assert len(info["sigmas"]) == 5 and info["sigma_start"] == pytest.approx(info["sigmas"][0])
        assert relative_error(inv["samples"], latent["samples"]) > 0.05  # moved (the random UNet predicts small noise)
        back = dd.restore(tdm["model"], tdm["pos"], tdm["neg"], inv, steps=4, cfg=1.0)
        assert "tr_inversion" not in back
        errs[refine] = relative_error(back["samples"], latent["samples"])
    print(f"tiny SD1.5 UNet DDIM round trip (4 steps, denoise 0.5) relative error: "
          f"plain {errs[0]:.3e}, refine=1 {errs[1]:.3e}")
    assert errs[0] < 0.1
    assert errs[1] < 0.5 * errs[0]


def test_ddim_restore_refuses_mismatches(tdm):
    _, _, dd = _mods()
    latent = {"samples": tdm["latent"]}
    with pytest.raises(ValueError, match="TR_DDIMInvert"):
        dd.restore(tdm["model"], tdm["pos"], tdm["neg"], latent, steps=4, cfg=1.0)
    inv = dd.invert(tdm["model"], tdm["pos"], tdm["neg"], latent, steps=1, cfg=1.0, denoise=0.6)
    edited = dict(inv, samples=inv["samples"] * 1.01)
    with pytest.raises(ValueError, match="changed"):
        dd.restore(tdm["model"], tdm["pos"], tdm["neg"], edited, steps=4, cfg=1.0)
    with pytest.raises(ValueError, match="sigmas"):
        dd.restore(tdm["model"], tdm["pos"], tdm["neg"], inv, steps=4, cfg=1.0,
                   sigmas=torch.tensor([14.6, 3.0, 0.0]))
    # a different step count re-derives the schedule from the stored start sigma
    sig = dd.restore_sigmas(tdm["model"], inv, steps=6)
    assert len(sig) == 7 and float(sig[0]) == pytest.approx(inv["tr_inversion"]["sigma_start"], rel=1e-5)
    ok = dd.restore_sigmas(tdm["model"], inv, steps=1, sigmas=torch.tensor(inv["tr_inversion"]["sigmas"]))
    assert torch.allclose(ok, torch.tensor(inv["tr_inversion"]["sigmas"]))


def _make_clip(path, frames=4, size=64, fps=8, audio_rate=22050):
    """A small mp4 (mpeg4 video + aac mono audio) with a moving square."""
    import av

    with av.open(path, "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        a = c.add_stream("aac", rate=audio_rate)
        a.layout = "mono"
        for i in range(frames):
            img = np.zeros((size, size, 3), np.uint8)
            img[:, :, 0] = 40 * i
            img[8 + 4 * i:24 + 4 * i, 16:40] = 200
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        n = audio_rate * frames // fps
        tone = (0.1 * np.sin(np.arange(n) * 2 * np.pi * 440 / audio_rate)).astype(np.float32)[None]
        for start in range(0, n, 1024):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, start:start + 1024]), format="fltp", layout="mono")
            af.sample_rate = audio_rate
            af.pts = start
            for p in a.encode(af):
                c.mux(p)
        for st in (s, a):
            for p in st.encode():
                c.mux(p)


def _by_title(prompt, title):
    hits = [n for n in prompt.values() if n.get("_meta", {}).get("title") == title]
    assert len(hits) == 1, title
    return hits[0]


def test_tdm_workflow_runs_end_to_end(server, tiny):
    """The bundled API workflow through a real headless server, on a small 4-frame clip with audio
    (generated here: the bundled 16-frame sample clip takes minutes on a shared CPU)."""
    import av

    with open(WORKFLOW) as f:
        prompt = json.load(f)
    clip_name = "tr_tdm_test_clip.mp4"
    _make_clip(os.path.join(server.base, "input", clip_name))
    _by_title(prompt, "Input video")["inputs"]["file"] = clip_name
    _by_title(prompt, "Checkpoint")["inputs"]["ckpt_name"] = tiny["checkpoint"]
    _by_title(prompt, "ControlNet")["inputs"]["control_net_name"] = tiny["controlnet"]
    for node in prompt.values():  # keep it quick on CPU
        if node["class_type"] == "TR_DDIMInvert":
            node["inputs"]["steps"] = 2
        if node["class_type"] == "TR_DDIMRestore":
            node["inputs"]["steps"] = 2
    entry = server.run(prompt)
    files = [f for f in server.output_files(entry) if f.endswith(".mp4")]
    assert len(files) == 1, files
    with av.open(files[0]) as c:
        assert c.streams.video and c.streams.audio
        assert sum(1 for _ in c.decode(video=0)) == 4


def test_swcfa_patch_call_keeps_chunks_apart_and_reads_frame_index(comfy_host):
    """The attn1 replace patch itself, with ComfyUI's optimized_attention: the cond chunk never sees
    the uncond chunk, and the chunker's frame_index shapes the windows."""
    sw, _, _ = _mods()
    from temporal_restore.pipelines import sw_cfa as pipe

    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(8, 16, 32, generator=g) for _ in range(3))
    patch = sw.SWCFAAttention("sw_cfa", 1)
    opts = {"cond_or_uncond": [1, 0], "n_heads": 2, "attn_precision": None}
    out = patch(q, k, v, opts)
    k2, v2 = k.clone(), v.clone()
    k2[:4] += 5.0
    v2[:4] -= 5.0
    out2 = patch(q, k2, v2, opts)
    assert torch.equal(out[4:], out2[4:]) and not torch.allclose(out[:4], out2[:4])
    ref = pipe.sw_cfa_attention(q, k, v, 2, n_chunks=2, radius=1)
    assert (out - ref).abs().max().item() < 1e-5
    idx = [0, 1, 10, 11]
    out_idx = patch(q, k, v, dict(opts, temporal_restore={"frame_index": idx}))
    ref_idx = pipe.sw_cfa_attention(q, k, v, 2, n_chunks=2, radius=1, index=idx)
    assert (out_idx - ref_idx).abs().max().item() < 1e-5
    assert (out_idx - out).abs().max().item() > 1e-4
