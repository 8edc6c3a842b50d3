"""TR_FlowEstimate / TR_LatentWarp / TR_TokenMerge on the real ComfyUI host with the tiny SD1.5 model."""
import copy

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """2 shared cores: OpenMP spin-waiting with several threads makes a 2 s sampling run take over a minute
    under load. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _sampler_prompt(tiny, patch_nodes=None, model_ref=("ckpt", 0), frames=4, steps=2, size=64, flow_image=True):
    """EmptyImage (frames moving? no: constant) -> flow; checkpoint -> patches -> KSampler on an empty latent."""
    p = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny["checkpoint"]}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a photo"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": ""}},
        "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": frames}},
        "ks": {"class_type": "KSampler", "inputs": {
            "model": list(model_ref), "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["lat", 0],
            "seed": 7, "steps": steps, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
    }
    if flow_image:
        p["img"] = {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": frames,
                                                            "color": 0x806040}}
        p["flow"] = {"class_type": "TR_FlowEstimate", "inputs": {"images": ["img", 0], "backend": "dis",
                                                                 "dis_preset": "medium", "keyframe_stride": 2,
                                                                 "grid": "latent (1/8)"}}
    p.update(patch_nodes or {})
    return p


def _samples(host, prompt):
    return host.run(prompt, outputs=["ks"])["outputs"]["ks"][0]["samples"]


def test_flow_estimate_node_shapes(comfy_host):
    node = comfy_host.node("TR_FlowEstimate")
    g = torch.Generator().manual_seed(0)
    base = torch.rand(1, 40, 48, 3, generator=g)
    base = torch.nn.functional.avg_pool2d(base.permute(0, 3, 1, 2), 3, 1, 1).permute(0, 2, 3, 1)
    frames = torch.cat([torch.roll(base, shifts=(0, 2 * t), dims=(1, 2)) for t in range(3)])
    out = node.execute(images=frames, backend="dis", dis_preset="medium", raft_weights="", keyframe_stride=2,
                       grid="full")
    ff = out.result[0] if hasattr(out, "result") else out[0]
    assert (ff.num_frames, ff.height, ff.width) == (3, 40, 48)
    assert ff.forward.shape == (2, 2, 40, 48) and ff.forward.dtype == torch.float32
    assert ff.occlusion_bwd.shape == (2, 1, 40, 48) and ff.keyframes == [0, 2]
    assert abs(float(ff.forward[:, 0, 8:-8, 8:-8].median()) - 2.0) < 0.3
    small = node.execute(images=frames, keyframe_stride=0, grid="latent (1/8)")
    fs = small.result[0] if hasattr(small, "result") else small[0]
    assert (fs.height, fs.width) == (5, 6) and fs.keyframes is None


def test_flow_estimate_raft_errors_are_clear(comfy_host, tmp_path):
    node = comfy_host.node("TR_FlowEstimate")
    with pytest.raises(ValueError, match="raft_weights"):
        node.execute(images=torch.zeros(2, 16, 16, 3), backend="raft", raft_weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="images"):
        node.execute(images=torch.zeros(2, 16, 16))


def test_latent_warp_install_is_reversible_and_does_not_stack(comfy_host, tiny):
    import comfy.sd
    import folder_paths

    from temporal_restore.nodes import latent_warp as nlw  # noqa: F401  (pack modules as loaded by the test package)

    ckpt = folder_paths.get_full_path("checkpoints", tiny["checkpoint"])
    model = comfy.sd.load_checkpoint_guess_config(ckpt, output_vae=False, output_clip=False)[0]
    before = copy.copy(model.model_options)
    node = comfy_host.node("TR_LatentWarp")
    m1 = node.execute(model=model, fraction=0.5).result[0]
    m2 = node.execute(model=m1, fraction=0.7).result[0]
    assert model.model_options == before and "sampler_post_cfg_function" not in model.model_options
    fns = [f for f in m2.model_options["sampler_post_cfg_function"] if getattr(f, "_temporal_restore", None) == "latent_warp"]
    assert len(fns) == 1
    assert m2.model_options["transformer_options"]["temporal_restore"]["latent_warp"].fraction == 0.7


def test_latent_warp_sampling_disabled_equals_baseline_enabled_aligns_frames(comfy_host, tiny):
    base = _samples(comfy_host, _sampler_prompt(tiny))
    off = _samples(comfy_host, _sampler_prompt(tiny, {
        "lw": {"class_type": "TR_LatentWarp", "inputs": {"model": ["ckpt", 0], "flow": ["flow", 0], "fraction": 0.0,
                                                         "batch_size": 4, "keyframe_mode": "random", "seed": 0,
                                                         "strength": 1.0}}}, model_ref=("lw", 0)))
    on = _samples(comfy_host, _sampler_prompt(tiny, {
        "lw": {"class_type": "TR_LatentWarp", "inputs": {"model": ["ckpt", 0], "flow": ["flow", 0], "fraction": 1.0,
                                                         "batch_size": 4, "keyframe_mode": "random", "seed": 0,
                                                         "strength": 1.0}}}, model_ref=("lw", 0)))
    assert base.shape == (4, 4, 8, 8)
    assert torch.allclose(off, base, atol=1e-5)
    assert not torch.allclose(on, base, atol=1e-3)
    # constant frames -> zero flow, no occlusion: warping every step makes all frames the keyframe's x0
    spread_on = (on - on.mean(0, keepdim=True)).abs().max()
    spread_base = (base - base.mean(0, keepdim=True)).abs().max()
    assert spread_on < 1e-4 * spread_base, (float(spread_on), float(spread_base))


def _tm(model_ref, ratio, **kw):
    inputs = {"model": list(model_ref), "ratio": ratio, "chunk_size": 2, "keyframe_mode": "stride", "seed": 0,
              "anneal_start": 0.0, "anneal_end": 1.0, "delta": 1.0, "radius": 4.0, "down_blocks": "flow",
              "up_blocks": "cosine", "pad_bottom": 0, "pad_right": 0}
    inputs.update(kw)
    return {"class_type": "TR_TokenMerge", "inputs": inputs}


def test_token_merge_ratio_zero_bit_identical_enabled_differs(comfy_host, tiny):
    base = _samples(comfy_host, _sampler_prompt(tiny, steps=2))
    off = _samples(comfy_host, _sampler_prompt(tiny, {"tm": _tm(("ckpt", 0), 0.0)}, model_ref=("tm", 0), steps=2))
    on_node = _tm(("ckpt", 0), 0.9)
    on_node["inputs"]["flow"] = ["flow", 0]
    on = _samples(comfy_host, _sampler_prompt(tiny, {"tm": on_node}, model_ref=("tm", 0), steps=2))
    assert torch.equal(off, base)
    assert on.shape == base.shape and torch.isfinite(on).all()
    assert not torch.allclose(on, base, atol=1e-4)


def test_token_merge_shrinks_attention_and_is_reversible(comfy_host, tiny):
    import comfy.sd
    import folder_paths
    import torch.nn.functional as F

    ckpt = folder_paths.get_full_path("checkpoints", tiny["checkpoint"])
    model = comfy.sd.load_checkpoint_guess_config(ckpt, output_vae=False, output_clip=False)[0]
    before = repr(model.model_options)
    node = comfy_host.node("TR_TokenMerge")
    m1 = node.execute(model=model, ratio=0.5, chunk_size=4).result[0]
    m2 = node.execute(model=m1, ratio=0.75, chunk_size=4).result[0]
    assert repr(model.model_options) == before
    patches = m2.model_options["transformer_options"]["patches"]
    assert len(patches["attn1_patch"]) == 1 and len(patches["attn1_output_patch"]) == 1
    cfg = m2.model_options["transformer_options"]["temporal_restore"]["token_merge"]
    assert cfg.ratio == 0.75
    # one real attention call: 4 frames of 8x8 tokens, cond+uncond -> merged batch is smaller, unmerge restores
    fn = patches["attn1_patch"][0]
    out_fn = patches["attn1_output_patch"][0]
    n = torch.randn(8, 64, 32)
    sched = torch.linspace(10, 0, 5)
    eo = {"temporal_restore": {"token_merge": cfg}, "cond_or_uncond": [1, 0], "block": ("output", 3),
          "activations_shape": [8, 32, 8, 8], "original_shape": [8, 4, 8, 8], "sigmas": sched[:1].repeat(8),
          "sample_sigmas": sched}
    q, k, v = fn(n, n, n, eo)
    assert q.shape[0] == 2 and q.shape[1] < 4 * 64 and k is q and v is q
    y = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
    back = out_fn(y, eo)
    assert back.shape == n.shape
    # Eq. 8 with i_end at half the run: from step 2 of 4 on the ratio is 0 -> untouched
    m3 = node.execute(model=model, ratio=0.75, chunk_size=4, anneal_end=0.5).result[0]
    eo2 = dict(eo, sigmas=sched[2:3].repeat(8),
               temporal_restore={"token_merge": m3.model_options["transformer_options"]["temporal_restore"]["token_merge"]})
    q2, _, _ = fn(n, n, n, eo2)
    assert q2 is n and out_fn(n, eo2) is n


def _make_clip(path, frames=8, w=64, h=48):
    import av
    import numpy as np

    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        ys, xs = np.mgrid[0:h, 0:w]
        for t in range(frames):
            img = np.stack([(xs * 4 + t * 8) % 256, (ys * 5) % 256, ((xs + ys) * 3 + t * 4) % 256], -1).astype(np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def test_diffir2vr_workflow_runs_end_to_end_over_http(server, tiny):
    import json
    import os
    import shutil

    import av

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    prompt = json.load(open(os.path.join(repo, "workflows", "api", "diffir2vr_restore.json")))
    by_title = {n["_meta"]["title"]: n for n in prompt.values()}
    clip = "tr_diffir2vr_test_clip.mp4"
    dst = os.path.join(server.base, "input", clip)
    sample = os.path.join(repo, "samples", "sample_clip.mp4")
    if os.path.exists(sample):
        shutil.copyfile(sample, dst)
    else:
        _make_clip(dst)
    with av.open(dst) as c:
        n_in = sum(1 for _ in c.decode(video=0))
        had_audio = bool(c.streams.audio)
    by_title["Input video"]["inputs"]["file"] = clip
    by_title["Checkpoint"]["inputs"]["ckpt_name"] = tiny["checkpoint"]
    by_title["ControlNet"]["inputs"]["control_net_name"] = tiny["controlnet"]
    kinds = {n["class_type"] for n in prompt.values()}
    assert {"TR_FlowEstimate", "TR_LatentWarp", "TR_TokenMerge", "ControlNetApplyAdvanced"} <= kinds
    for node in prompt.values():
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = 2
    entry = server.run(prompt)
    videos = [f for f in server.output_files(entry) if f.endswith(".mp4")]
    assert videos, entry.get("outputs")
    with av.open(videos[0]) as c:
        n_out = sum(1 for _ in c.decode(video=0))
        assert bool(c.streams.audio) == had_audio
    assert n_out == n_in
    assert server.alive()


def test_token_merge_window_picks_flow_frames_by_absolute_index(comfy_host):
    """A window [4..7] of an 8-frame clip: frames 4..7 move right by one token per frame, frames 0..3 are
    static. With frame_index set, flow matching (ratio 1) pairs every token with its true keyframe twin,
    so merging identical twins and unmerging returns the input exactly; using frames 0..3 would not."""
    from temporal_restore.nodes import token_merge as ntm
    from temporal_restore.pipelines.flow import FlowField

    h = w = 8
    T = 8
    fwd = torch.zeros(T - 1, 2, h, w)
    fwd[4:, 0] = 1.0
    z = torch.zeros(T - 1, 1, h, w)
    ff = FlowField(forward=fwd, backward=-fwd, occlusion_fwd=z, occlusion_bwd=z, confidence_fwd=z + 1,
                   confidence_bwd=z + 1, height=h, width=w)
    cfg = ntm.TokenMergeConfig(flow=ff, ratio=1.0, chunk_size=4, keyframe_mode="stride", anneal_end=0.0)
    g = torch.Generator().manual_seed(0)
    key = torch.randn(h, w + 8, 16, generator=g)
    # frame 4+t shows key content shifted right by t tokens (x -> x + t)
    frames = torch.stack([key[:, 4 - t:4 - t + w].reshape(h * w, 16) for t in range(4)])
    sched = torch.linspace(10, 0, 5)

    def run(frame_index):
        eo = {"temporal_restore": {"token_merge": cfg, "frame_index": frame_index}, "cond_or_uncond": [0],
              "block": ("input", 1), "activations_shape": [4, 16, h, w], "original_shape": [4, 4, h, w],
              "sigmas": sched[:1].repeat(4), "sample_sigmas": sched}
        q, _, _ = ntm.token_merge_attn1_patch(frames, frames, frames, eo)
        return q, ntm.token_merge_attn1_output_patch(q, eo)

    q, back = run([4, 5, 6, 7])
    assert q.shape[1] < 4 * h * w
    interior = torch.zeros(h, w, dtype=torch.bool)
    # tokens whose twin lies inside the keyframe and off column 0 for every shift up to 3 (at ratio 1 the
    # sources whose match leaves the frame are force-merged into the clamped border column)
    interior[:, 4:] = True
    assert torch.allclose(back[:, interior.view(-1)], frames[:, interior.view(-1)], atol=1e-6)
    _, wrong = run([0, 1, 2, 3])
    assert not torch.allclose(wrong[:, interior.view(-1)], frames[:, interior.view(-1)], atol=1e-3)


def test_latent_warp_post_cfg_fallback_and_flow_length_error(comfy_host):
    from temporal_restore.nodes import latent_warp as nlw
    from temporal_restore.pipelines.flow import FlowField

    sched = torch.linspace(10, 0, 5)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 4, 16, 16, generator=g)
    x = torch.cat([torch.roll(base, t, dims=3) + 0.2 * torch.randn(1, 4, 16, 16, generator=g) for t in range(4)])

    def call(cfg, sigma, frame_index=None):
        ns = {"latent_warp": cfg}
        if frame_index is not None:
            ns["frame_index"] = frame_index
        return nlw.latent_warp_post_cfg({"denoised": x, "sigma": sigma.repeat(4), "model_options": {
            "transformer_options": {"temporal_restore": ns, "sample_sigmas": sched}}})

    cfg = nlw.LatentWarpConfig(None, 0.5, 4, "stride", 0, 1.0)
    out = call(cfg, sched[0])  # no FLOW: DIS on the latents themselves
    assert out.shape == x.shape and not torch.equal(out, x)
    # the fallback flow finds the 1-px roll: frame 2 becomes keyframe 0 moved along, far from the borders
    ref = torch.roll(x[0], 2, dims=2)
    err_warped = (out[2, :, 4:-4, 4:-4] - ref[:, 4:-4, 4:-4]).abs().mean()
    err_before = (x[2, :, 4:-4, 4:-4] - ref[:, 4:-4, 4:-4]).abs().mean()
    assert err_warped < 0.5 * err_before
    assert torch.equal(call(cfg, sched[3]), x)  # late step: outside the fraction, untouched
    z = torch.zeros(2, 1, 16, 16)
    short = FlowField(forward=torch.zeros(2, 2, 16, 16), backward=torch.zeros(2, 2, 16, 16), occlusion_fwd=z,
                      occlusion_bwd=z, confidence_fwd=z + 1, confidence_bwd=z + 1, height=16, width=16)
    with pytest.raises(ValueError, match="flow: covers 3 frames"):
        call(nlw.LatentWarpConfig(short, 0.5, 4, "stride", 0, 1.0), sched[0])


def test_patch_nodes_reject_bad_settings_by_name(comfy_host):
    lw_node = comfy_host.node("TR_LatentWarp")
    tm_node = comfy_host.node("TR_TokenMerge")
    with pytest.raises(ValueError, match="fraction"):
        lw_node.execute(model=None, fraction=1.5)
    with pytest.raises(ValueError, match="keyframe_mode"):
        lw_node.execute(model=None, keyframe_mode="best")
    with pytest.raises(ValueError, match="flow"):
        lw_node.execute(model=None, flow="not a flow")
    with pytest.raises(ValueError, match="ratio"):
        tm_node.execute(model=None, ratio=-0.1)
    with pytest.raises(ValueError, match="down_blocks"):
        tm_node.execute(model=None, down_blocks="sift")


def test_full_stack_follows_true_motion(comfy_host, tiny):
    """Frames panning 8 px (one latent pixel) per frame: with the FLOW of the clip, LatentWarp + TokenMerge
    make consecutive output latents agree along the true motion far better than independent sampling.
    A flipped flow direction or a wrong /8 scaling would not."""
    import comfy.sd

    from temporal_restore.pipelines import flow as fl
    from temporal_restore.pipelines import synthetic

    clip = synthetic.make_clip("astronaut", frames=4, height=64, width=64, motion="pan", pan=(8.0, 0.0),
                               moving_object=False, seed=0)
    assert abs(float(clip.flow[:, 0].mean()) - 8.0) < 0.5 and float(clip.flow[:, 1].abs().max()) < 0.5
    nodes = comfy_host.nodes
    model, clipm, _, _ = comfy.sd.load_checkpoint_guess_config(tiny["checkpoint_path"], output_vae=True,
                                                               output_clip=True)
    pos = nodes.CLIPTextEncode().encode(clipm, "a photo")[0]
    neg = nodes.CLIPTextEncode().encode(clipm, "")[0]
    flow = comfy_host.node("TR_FlowEstimate").execute(images=clip.frames, keyframe_stride=0).result[0]
    # chained: this checks the FLOW's direction and /8 scaling; a 24 px gap between frame 3 and its keyframe on a
    # 64 px frame is beyond what DIS estimates directly (the direct default is measured in docs/fidelity.md)
    patched = comfy_host.node("TR_LatentWarp").execute(model=model, flow=flow, fraction=1.0, batch_size=4,
                                                       keyframe_mode="stride", keyframe_flow="chained").result[0]
    patched = comfy_host.node("TR_TokenMerge").execute(model=patched, flow=flow, ratio=0.75, chunk_size=4).result[0]
    latent = {"samples": torch.zeros(4, 4, 8, 8)}

    def sample(m):
        return nodes.common_ksampler(m, 5, 2, 3.0, "euler", "normal", pos, neg, latent, denoise=1.0)[0]["samples"]

    def motion_error(y):
        # y_t(p) should equal y_{t+1}(p + (1, 0)); columns 3..5 are matched to keyframe 0 in every frame
        f = torch.zeros(y.shape[0] - 1, 2, 8, 8)
        f[:, 0] = 1.0
        nxt = fl.warp(y[1:], f)
        return float((nxt - y[:-1])[..., 3:6].abs().mean() / y.std())

    base, ours = sample(model), sample(patched)
    e_base, e_ours = motion_error(base), motion_error(ours)
    print(f"latent motion error: independent {e_base:.3f}, LatentWarp+TokenMerge {e_ours:.3f}")
    # residual: sub-pixel flow error times the (white-noise-like) gradients of random-model latents
    assert e_ours < 0.3 * e_base
