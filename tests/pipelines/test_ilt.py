"""ILT chunking: window plans, Eq. 4 blend weights, noise rescheduling (pure), and the chunker node."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from temporal_restore.pipelines import ilt


@settings(max_examples=200, deadline=None)
@given(total=st.integers(1, 60), window=st.integers(1, 12), data=st.data())
def test_plan_covers_every_frame_and_weights_sum_to_one(total, window, data):
    overlap = data.draw(st.integers(0, window - 1))
    wins = ilt.plan_windows(total, window, overlap)
    assert wins[0].start == 0 and wins[-1].end == total
    assert all(len(w) == min(window, total) for w in wins)
    for a, b in zip(wins, wins[1:]):
        assert b.start > a.start and b.start <= a.end  # contiguous, strictly advancing
    weights = ilt.blend_weights(wins, total)
    acc = torch.zeros(total, dtype=torch.float64)
    cover = torch.zeros(total, dtype=torch.long)
    for w, wt in zip(wins, weights):
        assert wt.shape == (len(w),)
        assert bool((wt >= 0).all())
        acc[w.start:w.end] += wt
        cover[w.start:w.end] += 1
    assert torch.allclose(acc, torch.ones(total, dtype=torch.float64), atol=1e-12)
    # frames outside overlaps: exactly one window, weight exactly 1
    for w, wt in zip(wins, weights):
        single = cover[w.start:w.end] == 1
        assert bool((wt[single] == 1).all())


def test_eq4_weights_on_regular_overlap():
    wins = ilt.plan_windows(12, 8, 4)
    assert [(w.start, w.end) for w in wins] == [(0, 8), (4, 12)]
    w0, w1 = ilt.blend_weights(wins, 12)
    p = 4
    alpha = torch.tensor([1 - j / (p - 1) for j in range(p)], dtype=torch.float64)
    assert torch.allclose(w0[4:], alpha)
    assert torch.allclose(w1[:4], 1 - alpha)


def test_length_not_multiple_of_stride_and_short_clip():
    wins = ilt.plan_windows(11, 8, 4)
    assert [(w.start, w.end) for w in wins] == [(0, 8), (3, 11)]
    assert [(w.start, w.end) for w in ilt.plan_windows(5, 8, 4)] == [(0, 5)]
    assert [(w.start, w.end) for w in ilt.plan_windows(8, 8, 4)] == [(0, 8)]
    wt = ilt.blend_weights(ilt.plan_windows(5, 8, 4), 5)
    assert torch.equal(wt[0], torch.ones(5, dtype=torch.float64))


@pytest.mark.parametrize("args,name", [((0, 8, 4), "frames"), ((10, 8, 8), "overlap"), ((10, 4, 9), "overlap"),
                                       ((10, 0, 0), "window"), ((10, 4, -1), "overlap")])
def test_bad_input_names_the_input(args, name):
    with pytest.raises(ValueError, match=name):
        ilt.plan_windows(*args)


def test_blend_of_identical_parts_is_identity_and_eq4_mix():
    T = 13
    wins = ilt.plan_windows(T, 6, 3)
    x = torch.randn(T, 2, 3, 3)
    parts = [x[w.start:w.end] for w in wins]
    assert torch.allclose(ilt.blend(parts, wins), x, atol=1e-6)
    # two different constant parts: overlap frames follow Eq. 4
    wins = ilt.plan_windows(10, 6, 2)
    parts = [torch.full((6, 1), float(i)) for i in range(len(wins))]
    out = ilt.blend(parts, wins).flatten()
    assert out[0] == 0 and out[-1] == len(wins) - 1
    assert torch.all(out[1:] >= out[:-1])


@settings(max_examples=60, deadline=None)
@given(total=st.integers(1, 40), window=st.integers(1, 10), seed=st.integers(0, 2**31), data=st.data())
def test_rescheduled_noise_reuses_base_frames(total, window, seed, data):
    overlap = data.draw(st.integers(0, window - 1))
    n = ilt.reschedule_noise(total, window, overlap, (2, 2), seed=seed)
    assert n.shape == (total, 2, 2)
    base = n[:min(window, total)].reshape(min(window, total), -1)
    for w in ilt.plan_windows(total, window, overlap):
        frames = n[w.start:w.end].reshape(len(w), -1)
        # every window holds the same distinct base noise frames, reordered
        d = torch.cdist(frames, base)
        match = d.argmin(dim=1)
        assert torch.allclose(d.min(dim=1).values, torch.zeros(len(w)), atol=0)
        assert sorted(match.tolist()) == list(range(len(w)))


def test_rescheduled_noise_matches_comfy_prepare_noise_for_one_window():
    shape = (5, 4, 3, 3)
    g = torch.manual_seed(7)
    ref = torch.randn(shape, generator=g)
    assert torch.equal(ilt.reschedule_noise(5, 8, 4, shape[1:], seed=7), ref)
    # overlaps share noise frame for frame
    n = ilt.reschedule_noise(20, 8, 4, (4, 3, 3), seed=7)
    assert torch.equal(n[:8], torch.randn((8, 4, 3, 3), generator=torch.manual_seed(7)))
    assert not torch.equal(n[8:12], n[:4]) or not torch.equal(n[12:16], n[4:8])


def test_plan_boundaries_and_carried():
    plan = ilt.WindowPlan(20, 8, 4)
    assert plan.boundaries() == [6, 10, 14]
    pos, alpha = plan.carried(1)
    assert pos == [0, 1, 2, 3] and torch.allclose(alpha, torch.tensor([1, 2 / 3, 1 / 3, 0], dtype=torch.float64))
    cut = ilt.WindowPlan(20, 8, 4, blend_mode="cut")
    acc = torch.zeros(20, dtype=torch.float64)
    for w, wt in zip(cut.windows, cut.weights):
        acc[w.start:w.end] += wt
    assert torch.equal(acc, torch.ones(20, dtype=torch.float64))
    with pytest.raises(ValueError, match="blend"):
        ilt.WindowPlan(20, 8, 4, blend_mode="nope")


# ---------------------------------------------------------------- node / real ComfyUI (tiny SD1.5)

@pytest.fixture
def inference():
    with torch.inference_mode():
        yield


def _objects(comfy_host, tiny, hint_frames=None):
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny["checkpoint"]}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a clean photo", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": tiny["controlnet"]}},
    }
    out = comfy_host.run(prompt, outputs=["1", "2", "3", "4"])["outputs"]
    model, _, vae = out["1"]
    return model, vae, out["2"][0], out["3"][0], out["4"][0]


def _with_control(cond, control_net, hint):
    c = control_net.copy().set_cond_hint(hint.movedim(-1, 1), 1.0, (0.0, 1.0))
    return [[t, dict(d, control=c)] for t, d in cond]


def _clip(vae, frames, static, size=32, seed=0):
    """(IMAGE hint [T,size,size,3], LATENT [T,4,size/8,size/8]); the latent is drawn directly (the
    tiny VAE's encoder is not needed to test sampling)."""
    g = torch.Generator().manual_seed(seed)
    n = 1 if static else frames
    img = torch.rand((n, size, size, 3), generator=g).expand(frames, -1, -1, -1).contiguous()
    lat = torch.randn((n, 4, size // 8, size // 8), generator=g).expand(frames, -1, -1, -1).contiguous()
    return img, lat


def _unchunked(model, pos, neg, latent, noise, sigmas, cfg=2.0):
    import comfy.sample
    import comfy.samplers

    return comfy.sample.sample_custom(model, noise, cfg, comfy.samplers.sampler_object("euler"), sigmas, pos, neg,
                                      latent, seed=0, disable_pbar=True)


def _sigmas(model, steps=3):
    import comfy.samplers

    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", steps)


@pytest.mark.parametrize("mode", ["fused", "sequential"])
def test_chunked_static_clip_equals_unchunked(comfy_host, tiny, mode, inference):
    from temporal_restore.nodes import ilt as ilt_node
    import comfy.samplers

    model, vae, pos, neg, _ = _objects(comfy_host, tiny)
    T, window, overlap = 11, 4, 2
    _, latent = _clip(vae, T, static=True)
    sigmas = _sigmas(model)
    noise = ilt.reschedule_noise(T, window, overlap, latent.shape[1:], seed=3)
    ref = _unchunked(model, pos, neg, latent, noise, sigmas)
    out = ilt_node.chunked_sample(model, pos, neg, {"samples": latent}, 3, 2.0, comfy.samplers.sampler_object("euler"),
                                  sigmas, window=window, overlap=overlap, mode=mode)["samples"]
    assert out.shape == ref.shape == latent.shape
    assert (ref - latent).abs().max() > 1e-2  # the model really changed the latent
    # the tiny VAE's latents reach ~1e2: batching windows instead of the whole clip changes float32 rounding
    # at ~1e-7 of that scale, so the tolerance follows the magnitude (a real difference is > 1e-2)
    tol = 1e-6 * float(ref.abs().max()) + 1e-5
    assert (out - ref).abs().max() <= tol, ((out - ref).abs().max(), tol)


def test_controlnet_hint_sliced_per_window_equals_unchunked(comfy_host, tiny, inference):
    """Per-frame ControlNet hints: a chunked run sees each window's own hint frames, so on a
    frame-independent model it reproduces the unchunked run (a wrongly sliced hint would not)."""
    from temporal_restore.nodes import ilt as ilt_node
    import comfy.samplers

    model, vae, pos, neg, cnet = _objects(comfy_host, tiny)
    T = 7
    img, latent = _clip(vae, T, static=False, seed=5)
    pos_c, neg_c = _with_control(pos, cnet, img), _with_control(neg, cnet, img)
    sigmas = _sigmas(model)
    noise = ilt.reschedule_noise(T, 4, 2, latent.shape[1:], seed=1)
    ref = _unchunked(model, pos_c, neg_c, latent, noise, sigmas)
    no_cn = _unchunked(model, pos, neg, latent, noise, sigmas)
    assert (ref - no_cn).abs().max() > 1e-4  # the ControlNet matters
    # a hint where every frame is frame 0 (what a wrongly sliced window would see)
    for mode in ("fused", "sequential"):
        out = ilt_node.chunked_sample(model, pos_c, neg_c, {"samples": latent}, 1, 2.0,
                                      comfy.samplers.sampler_object("euler"), sigmas, window=4, overlap=2,
                                      mode=mode)["samples"]
        assert torch.allclose(out, ref, atol=1e-5), (mode, (out - ref).abs().max())


def test_frame_index_published_per_window(comfy_host, tiny, inference):
    from temporal_restore.nodes import ilt as ilt_node
    from temporal_restore.nodes._patching import chunk_layout, frame_index
    import comfy.samplers

    model, vae, pos, neg, _ = _objects(comfy_host, tiny)
    seen = []

    def spy(q, k, v, extra_options):
        n, frames = chunk_layout(extra_options, q.shape[0])
        seen.append(tuple(frame_index(extra_options, frames)))
        return q, k, v

    m = model.clone()
    m.set_model_attn1_patch(spy)
    _, latent = _clip(vae, 10, static=False)
    for mode in ("fused", "sequential"):
        seen.clear()
        ilt_node.chunked_sample(m, pos, neg, {"samples": latent}, 0, 2.0, comfy.samplers.sampler_object("euler"),
                                _sigmas(model, 2), window=6, overlap=2, mode=mode)
        assert set(seen) == {tuple(range(0, 6)), tuple(range(4, 10))}


def _graph(tiny, frames=10, window=4, overlap=2, mode="fused"):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny["checkpoint"]}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a clean photo", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": frames}},
        "5": {"class_type": "TR_ILTChunker", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent": ["4", 0], "seed": 1, "cfg": 2.0,
            "sampler_name": "euler", "scheduler": "normal", "steps": 2, "denoise": 1.0, "window": window,
            "overlap": overlap, "mode": mode, "noise": "rescheduled", "carry_state": True}},
    }


def test_node_runs_in_graph_and_rejects_bad_overlap(comfy_host, tiny):
    out = comfy_host.run(_graph(tiny, mode="sequential"), outputs=["5"])["outputs"]["5"][0]["samples"]
    assert out.shape == (10, 4, 4, 4) and torch.isfinite(out).all()
    short = comfy_host.run(_graph(tiny, frames=3, window=8, overlap=4), outputs=["5"])["outputs"]["5"][0]["samples"]
    assert short.shape == (3, 4, 4, 4)
    with pytest.raises(Exception, match="overlap"):
        comfy_host.run(_graph(tiny, window=4, overlap=4), outputs=["5"])
    schema = comfy_host.node("TR_ILTChunker").define_schema()
    assert all(i.tooltip for i in schema.inputs)


def test_chunker_is_interruptible(comfy_host, tiny, inference):
    from temporal_restore.nodes import ilt as ilt_node
    import comfy.model_management as mm
    import comfy.samplers

    model, vae, pos, neg, _ = _objects(comfy_host, tiny)
    _, latent = _clip(vae, 6, static=False)
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            ilt_node.chunked_sample(model, pos, neg, {"samples": latent}, 0, 2.0, comfy.samplers.sampler_object("euler"),
                                    _sigmas(model, 2), window=4, overlap=2, mode="sequential")
    finally:
        mm.interrupt_current_processing(False)


def test_memory_estimate_is_for_one_window(comfy_host, tiny, inference, monkeypatch):
    """ComfyUI sizes the model load for the sampled batch: the chunker must announce one window."""
    from temporal_restore.nodes import ilt as ilt_node
    import comfy.sampler_helpers
    import comfy.samplers

    seen = []
    real = comfy.sampler_helpers.estimate_memory

    def spy(model, noise_shape, conds):
        seen.append(int(noise_shape[0]))
        return real(model, noise_shape, conds)

    monkeypatch.setattr(comfy.sampler_helpers, "estimate_memory", spy)
    model, vae, pos, neg, _ = _objects(comfy_host, tiny)
    _, latent = _clip(vae, 10, static=False)
    for mode in ("fused", "sequential"):
        seen.clear()
        ilt_node.chunked_sample(model, pos, neg, {"samples": latent}, 0, 2.0, comfy.samplers.sampler_object("euler"),
                                _sigmas(model, 1), window=4, overlap=2, mode=mode)
        assert seen and max(seen) == 4, (mode, seen)


def test_rescheduled_noise_node_feeds_sampler_custom_advanced(comfy_host, tiny):
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny["checkpoint"]}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a clean photo", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 10}},
        "5": {"class_type": "TR_RescheduledNoise", "inputs": {"noise_seed": 3, "window": 4, "overlap": 2}},
        "6": {"class_type": "BasicGuider", "inputs": {"model": ["1", 0], "conditioning": ["2", 0]}},
        "7": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "8": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": 2, "denoise": 1.0}},
        "9": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["5", 0], "guider": ["6", 0], "sampler": ["7", 0],
                                                                "sigmas": ["8", 0], "latent_image": ["4", 0]}},
    }
    out = comfy_host.run(prompt, outputs=["5", "9"])["outputs"]
    noise = out["5"][0].generate_noise({"samples": torch.zeros(10, 4, 4, 4)})
    assert torch.equal(noise, ilt.reschedule_noise(10, 4, 2, (4, 4, 4), seed=3))
    assert out["9"][0]["samples"].shape == (10, 4, 4, 4)
    with pytest.raises(Exception, match="overlap"):
        prompt["5"]["inputs"]["overlap"] = 4
        comfy_host.run(prompt, outputs=["9"])


@pytest.mark.parametrize("mode", ["fused", "sequential"])
def test_boundary_kv_reaches_only_later_windows(comfy_host, tiny, inference, mode):
    from temporal_restore.nodes import ilt as ilt_node
    import comfy.samplers

    model, vae, pos, neg, _ = _objects(comfy_host, tiny)
    _, latent = _clip(vae, 12, static=False, seed=2)
    run = lambda kv: ilt_node.chunked_sample(model, pos, neg, {"samples": latent}, 0, 2.0,  # noqa: E731
                                             comfy.samplers.sampler_object("euler"), _sigmas(model, 2), window=8,
                                             overlap=4, mode=mode, boundary_kv=kv)["samples"]
    base, kv = run(0), run(2)
    # frames 0-3 belong to window 0 only, which reads no boundary: unchanged; window 1's own frames change
    assert torch.allclose(kv[:4], base[:4], atol=1e-6)
    assert (kv[8:] - base[8:]).abs().max() > 1e-4
    assert not model.model_options.get("transformer_options", {}).get("patches", {}).get("attn1_patch")


def test_ilt_state_persists_across_windows(comfy_host, tiny, inference):
    """Patches can keep state between windows: the same object reaches every model call of a run."""
    from temporal_restore.nodes import ilt as ilt_node
    from temporal_restore.nodes._patching import tr_options
    import comfy.samplers

    model, vae, pos, neg, _ = _objects(comfy_host, tiny)
    seen = []

    def spy(q, k, v, extra_options):
        st = tr_options(extra_options)["ilt_state"]
        st["calls"] = st.get("calls", 0) + 1
        seen.append(id(st))
        return q, k, v

    m = model.clone()
    m.set_model_attn1_patch(spy)
    _, latent = _clip(vae, 10, static=False)
    for mode in ("fused", "sequential"):
        seen.clear()
        ilt_node.chunked_sample(m, pos, neg, {"samples": latent}, 0, 2.0, comfy.samplers.sampler_object("euler"),
                                _sigmas(model, 2), window=6, overlap=2, mode=mode)
        assert len(set(seen)) == 1 and len(seen) > 1


def test_post_mode_is_independent_windows_then_eq4(comfy_host, tiny, inference):
    """``post`` (DiffVSR §3.4 as published): each window sampled on its own with its slice of the
    rescheduled noise, then the final latents fused with Eq. 4, written out here from the paper:
    F[j] = alpha_j F_i[s + j] + (1 - alpha_j) F_{i+1}[j], alpha_j = 1 - j / (P - 1)."""
    from temporal_restore.nodes import ilt as ilt_node
    import comfy.samplers

    from temporal_restore.nodes import sw_cfa

    model, vae, pos, neg, _ = _objects(comfy_host, tiny)
    model = sw_cfa.install_sw_cfa(model, "sw_cfa", 2)  # cross-frame attention: windows see different frames
    T, window, overlap = 9, 6, 3  # windows [0, 6) and [3, 9): stride s = 3, P = 3
    _, latent = _clip(vae, T, static=False, seed=4)
    sigmas = _sigmas(model)
    noise = ilt.reschedule_noise(T, window, overlap, latent.shape[1:], seed=2)
    f0 = _unchunked(model, pos, neg, latent[:6], noise[:6], sigmas)
    f1 = _unchunked(model, pos, neg, latent[3:], noise[3:], sigmas)
    s, p = 3, 3
    ref = torch.cat([f0[:s], torch.zeros_like(f0[:p]), f1[p:]])
    for j in range(p):
        a = 1 - j / (p - 1)
        ref[s + j] = a * f0[s + j] + (1 - a) * f1[j]
    run = lambda mode: ilt_node.chunked_sample(  # noqa: E731
        model, pos, neg, {"samples": latent}, 2, 2.0, comfy.samplers.sampler_object("euler"), sigmas,
        window=window, overlap=overlap, mode=mode, carry_state=True)["samples"]
    out = run("post")
    tol = 1e-6 * float(ref.abs().max()) + 1e-5
    assert (out - ref).abs().max() <= tol, ((out - ref).abs().max(), tol)
    assert (f0[s:] - f1[:p]).abs().max() > 1e-2  # the windows really disagree on the overlap
    # the carried sequential mode is a different method (carry_state is ignored by post only)
    assert (run("sequential") - ref).abs().max() > 1e-3
