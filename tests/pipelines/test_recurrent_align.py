"""Recurrent flow-aligned conditioning: confidence mask, blending, the recurrent loop (pure parts)."""
import pytest
import torch

from temporal_restore.pipelines import flow as FL
from temporal_restore.pipelines import recurrent_align as RA


def _texture(h=48, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, h // 4, w // 4, generator=g)
    x = torch.nn.functional.interpolate(x, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
    return x[0].permute(1, 2, 0)  # [H,W,3]


def _field(bwd, fwd):
    """FlowField from lists of backward (t+1->t) and forward (t->t+1) flows [2,H,W]."""
    b, f = torch.stack(bwd), torch.stack(fwd)
    return FL.FlowField(forward=f, backward=b, occlusion_fwd=FL.fb_check(f, b), occlusion_bwd=FL.fb_check(b, f),
                        confidence_fwd=FL.fb_confidence(f, b), confidence_bwd=FL.fb_confidence(b, f),
                        height=f.shape[-2], width=f.shape[-1])


def _moving_square(h=48, w=64, x0=16, shift=6, size=14):
    """Static textured background, a flat square moving right by ``shift`` px. Returns frames
    [2,H,W,3], the true backward flow (1 -> 0) and forward flow (0 -> 1), and the revealed region."""
    bg = _texture(h, w, 1)
    f0, f1 = bg.clone(), bg.clone()
    y0 = 17
    f0[y0:y0 + size, x0:x0 + size] = torch.tensor([1.0, 0.1, 0.1])
    f1[y0:y0 + size, x0 + shift:x0 + shift + size] = torch.tensor([1.0, 0.1, 0.1])
    bwd = torch.zeros(2, h, w)
    bwd[0, y0:y0 + size, x0 + shift:x0 + shift + size] = -shift
    fwd = torch.zeros(2, h, w)
    fwd[0, y0:y0 + size, x0:x0 + size] = shift
    revealed = torch.zeros(h, w, dtype=torch.bool)
    revealed[y0:y0 + size, x0:x0 + shift] = True
    return torch.stack([f0, f1]), bwd, fwd, revealed


def _chw(img):
    return img.permute(2, 0, 1)[None]



@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The shared 2-core host is oversubscribed; one intra-op thread makes the tiny model ~10x faster
    here. Restored afterwards, so other test modules are unaffected."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

# ---------------------------------------------------------------- confidence mask

def test_static_clip_confidence_is_one_with_estimated_flow():
    img = _texture()
    noisy = [(img + 0.02 * torch.randn(img.shape, generator=torch.Generator().manual_seed(s))).clamp(0, 1)
             for s in (1, 2)]
    bwd = FL.estimate_pair(noisy[1], noisy[0])[None]
    fwd = FL.estimate_pair(noisy[0], noisy[1])[None]
    m = RA.alignment_confidence(_chw(noisy[0]), _chw(noisy[1]), bwd, flow_fwd=fwd)
    assert m.shape == (1, 1, 48, 64)
    assert m.mean() > 0.95 and m.min() >= 0 and m.max() <= 1


def test_disocclusion_drops_confidence_there():
    frames, bwd, fwd, revealed = _moving_square()
    prev, cur = _chw(frames[0]), _chw(frames[1])
    both = RA.alignment_confidence(prev, cur, bwd[None], flow_fwd=fwd[None])[0, 0]
    photo = RA.alignment_confidence(prev, cur, bwd[None])[0, 0]
    occ = FL.fb_check(bwd[None], fwd[None])[0, 0]
    far = torch.zeros_like(revealed)
    far[:, 40:] = True  # static background well away from the square
    for m in (both, photo):
        assert m[revealed].mean() < 0.2
        assert m[far].mean() > 0.95
    assert occ[revealed].mean() > 0.9  # the fb check alone flags the revealed pixels
    assert (both <= photo + 1e-6).all()


def test_disocclusion_with_estimated_flow():
    frames, _, _, revealed = _moving_square()
    bwd = FL.estimate_pair(frames[1], frames[0])[None]
    fwd = FL.estimate_pair(frames[0], frames[1])[None]
    m = RA.alignment_confidence(_chw(frames[0]), _chw(frames[1]), bwd, flow_fwd=fwd)[0, 0]
    assert m[revealed].mean() < 0.5 * m[~revealed].mean()


def test_blend_formula_and_strength_zero_identity():
    d, a = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    m = torch.rand(2, 1, 6, 6)
    assert RA.blend(d, a, m, 0.0) is d
    torch.testing.assert_close(RA.blend(d, a, m, 0.7), 0.7 * m * a + (1 - 0.7 * m) * d)
    big = torch.rand(2, 1, 12, 12)  # mask on the pixel grid is area-averaged to the latent grid
    torch.testing.assert_close(RA.blend(d, a, big, 1.0), RA.blend(d, a, torch.nn.functional.avg_pool2d(big, 2), 1.0))
    with pytest.raises(ValueError, match="strength"):
        RA.blend(d, a, m, 1.5)


# ---------------------------------------------------------------- recurrent loop

def _shift_clip(T=4, shift=2):
    base = _texture(32, 48, 3)
    frames = torch.stack([torch.roll(base, shifts=shift * t, dims=1) for t in range(T)])
    bwd = torch.zeros(2, 32, 48)
    bwd[0] = -shift
    fwd = -bwd
    return frames, _field([bwd] * (T - 1), [fwd] * (T - 1))


def test_strength_zero_restores_each_frame_from_its_own_latent():
    frames, flow = _shift_clip()
    lat = torch.randn(4, 4, 4, 6)
    seen = []

    def restore(ts, x, hint):
        t, = ts
        seen.append((t, x.clone(), None if hint is None else hint.clone()))
        return x * 2 + t

    out, conf = RA.recurrent_restore(lat, frames, restore, 0.0, flow=flow, decode=lambda z: 1 / 0)
    assert [s[0] for s in seen] == [0, 1, 2, 3]
    for t, x, hint in seen:
        assert torch.equal(x, lat[t:t + 1])
        assert torch.equal(hint, frames[t:t + 1])
    torch.testing.assert_close(out, lat * 2 + torch.arange(4).view(4, 1, 1, 1))
    assert conf.abs().sum() == 0


def test_static_clip_full_strength_carries_previous_result():
    img = _texture(32, 48)
    frames = img.expand(3, -1, -1, -1).clone()
    zero = torch.zeros(2, 32, 48)
    flow = _field([zero, zero], [zero, zero])
    lat = torch.randn(3, 4, 4, 6)
    out, conf = RA.recurrent_restore(lat, frames, lambda t, x, h: x + 1, 1.0, flow=flow)
    assert torch.allclose(conf[1:], torch.ones_like(conf[1:]))
    for t in range(3):  # x_init of frame t is the previous restored latent (mask 1, strength 1)
        torch.testing.assert_close(out[t], lat[0] + t + 1)


def test_alignment_follows_motion():
    frames, flow = _shift_clip(T=3, shift=2)
    lat = frames.permute(0, 3, 1, 2).clone()  # latent grid == pixel grid: the warp is exact
    lat[1:] = 0.0  # degraded latents carry nothing: frames 1.. come only from alignment
    out, conf = RA.recurrent_restore(lat, frames, lambda t, x, h: x, 1.0, flow=flow)
    assert conf[1:, :, :, 8:40].mean() > 0.99
    torch.testing.assert_close(out[2][:, :, 8:40], frames[2].permute(2, 0, 1)[:, :, 8:40], atol=1e-4, rtol=0)
    assert (out[1][:, :, 8:40] - frames[0].permute(2, 0, 1)[:, :, 8:40]).abs().max() > 0.05  # it did move


def test_hint_is_aligned_decoded_previous_frame():
    img = _texture(32, 48)
    frames = img.expand(2, -1, -1, -1).clone()
    zero = torch.zeros(2, 32, 48)
    flow = _field([zero], [zero])
    target = torch.full((1, 32, 48, 3), 0.25)
    hints = []
    RA.recurrent_restore(torch.zeros(2, 4, 4, 6), frames, lambda t, x, h: hints.append(h) or x, 0.5,
                         flow=flow, decode=lambda z: target)
    assert torch.equal(hints[0], frames[:1])
    torch.testing.assert_close(hints[1], 0.5 * target + 0.5 * frames[1:2])


def test_window_frame_index_reads_the_clip_flow():
    frames, flow = _shift_clip(T=6, shift=1)
    frames[4:] = frames[4:].flip(1)  # make later pairs different so a wrong index shows
    lat = torch.randn(6, 4, 4, 6)
    win = [2, 3, 4]
    restore = lambda t, x, h: x + 0.5  # noqa: E731
    a, ca = RA.recurrent_restore(lat[win], frames[win], restore, 0.8, flow=flow, frame_index=win)
    b, cb = RA.recurrent_restore(lat[win], frames[win], restore, 0.8, flow=flow.select(win))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(ca, cb)
    with pytest.raises(ValueError, match="flow"):
        RA.recurrent_restore(lat[win], frames[win], restore, 0.8, flow=flow, frame_index=[4, 5, 6])


def test_estimated_flow_when_none_given():
    frames, _ = _shift_clip(T=3, shift=2)
    lat = torch.randn(3, 4, 4, 6)
    out, conf = RA.recurrent_restore(lat, frames, lambda t, x, h: x, 0.5)
    assert out.shape == lat.shape and torch.isfinite(out).all()
    assert conf[1:, :, 4:-4, 8:-8].mean() > 0.8


def test_groups_align_to_the_last_frame_of_the_previous_group():
    img = _texture(32, 48)
    frames = img.expand(5, -1, -1, -1).clone()
    zero = torch.zeros(2, 32, 48)
    flow = _field([zero] * 4, [zero] * 4)
    lat = torch.randn(5, 4, 4, 6)
    calls = []

    def restore(ts, x, h):
        calls.append((list(ts), x.clone()))
        return x + 1

    out, _ = RA.recurrent_restore(lat, frames, restore, 1.0, flow=flow, group=2)
    assert [c[0] for c in calls] == [[0, 1], [2, 3], [4]]
    torch.testing.assert_close(calls[0][1], lat[:2])
    torch.testing.assert_close(calls[1][1], (lat[1] + 1).expand(2, -1, -1, -1))  # both from anchor 1
    torch.testing.assert_close(out[4], lat[1] + 3)
    off, _ = RA.recurrent_restore(lat, frames, lambda ts, x, h: x * 3, 0.0, flow=flow, group=3)
    torch.testing.assert_close(off, lat * 3)
    with pytest.raises(ValueError, match="group"):
        RA.recurrent_restore(lat, frames, restore, 1.0, flow=flow, group=0)


def test_group_alignment_chains_flow_to_the_anchor():
    frames, flow = _shift_clip(T=4, shift=2)
    lat = frames.permute(0, 3, 1, 2).clone()
    lat[2:] = 0.0
    out, conf = RA.recurrent_restore(lat, frames, lambda ts, x, h: x, 1.0, flow=flow, group=2)
    # the first group [0, 1] has no anchor; frames 2 and 3 come from frame 1 (flows 2->1 and 3->2->1)
    assert conf[:2].abs().sum() == 0 and conf[2:, :, :, 12:40].mean() > 0.99
    for t in (2, 3):
        torch.testing.assert_close(out[t][:, :, 12:40], frames[t].permute(2, 0, 1)[:, :, 12:40], atol=1e-4, rtol=0)


def test_confidence_on_the_latent_grid_is_the_area_mean():
    frames, bwd, fwd, _ = _moving_square(h=48, w=64)
    flow = _field([bwd], [fwd])
    lat = torch.randn(2, 4, 6, 8)
    _, img = RA.recurrent_restore(lat, frames, lambda ts, x, h: x, 0.7, flow=flow)
    _, small = RA.recurrent_restore(lat, frames, lambda ts, x, h: x, 0.7, flow=flow, confidence_grid="latent")
    assert small.shape == (2, 1, 6, 8)
    torch.testing.assert_close(small, torch.nn.functional.avg_pool2d(img, 8))
    assert small[1].min() < 0.5 < small[1].max()
    with pytest.raises(ValueError, match="confidence_grid"):
        RA.recurrent_restore(lat, frames, lambda ts, x, h: x, 0.7, flow=flow, confidence_grid="pixels")


@pytest.mark.parametrize("kw,name", [(dict(strength=-0.1), "strength"), (dict(images=torch.zeros(2, 8, 8, 3)), "images"),
                                     (dict(latents=torch.zeros(3, 4, 4)), "latent")])
def test_bad_inputs_raise(kw, name):
    args = dict(latents=torch.zeros(3, 4, 1, 1), images=torch.zeros(3, 8, 8, 3), strength=0.5) | kw
    with pytest.raises(ValueError, match=name):
        RA.recurrent_restore(args["latents"], args["images"], lambda t, x, h: x, args["strength"])


def test_warping_error_zero_for_consistent_clip():
    """The pack's one E_warp (pipelines.metrics) on the FlowField recurrent restore works with: a clip that
    follows its flow scores ~0, a flickering frame scores far higher."""
    from temporal_restore.pipelines import metrics

    frames, flow = _shift_clip(T=3, shift=2)
    e_good = metrics.warping_error(frames, flow)
    flick = frames.clone()
    flick[1] = flick[1] * 0.7
    assert e_good < 0.02 and metrics.warping_error(flick, flow) > 5 * max(e_good, 1e-3)


# ---------------------------------------------------------------- TR_RecurrentRestore on the tiny model

def _host_parts(comfy_host, tiny, eta=1.0):
    g = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny["checkpoint"]}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a clean photo", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "cn": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": tiny["controlnet"]}},
        "smp": {"class_type": "TR_DistilledSampler", "inputs": {"eta": eta, "s_noise": 1.0, "per_frame_noise": False}},
        "sig": {"class_type": "TR_DistilledSigmas", "inputs": {"model": ["ckpt", 0], "schedule": "trailing", "steps": 1,
                                                                "denoise": 0.6, "original_steps": 50}},
    }
    out = comfy_host.run(g, outputs=list(g))["outputs"]
    model, clip, vae = out["ckpt"]
    return dict(model=model, vae=vae, pos=out["pos"][0], neg=out["neg"][0], cn=out["cn"][0],
                sampler=out["smp"][0], sigmas=out["sig"][0])


def _moving_clip(T=3, shift=3):
    base = _texture(64, 96, 5)
    return torch.stack([torch.roll(base, shifts=shift * t, dims=1)[:, 16:80] for t in range(T)]).contiguous()


def _latent_of(frames):
    """A latent that follows the frames (the tiny random VAE's encoder overflows, so tests build one)."""
    x = torch.nn.functional.avg_pool2d(frames.permute(0, 3, 1, 2), 8) * 2 - 1
    return torch.cat([x, x.mean(1, keepdim=True)], 1).contiguous()


def _plain_per_frame(p, lat, seeds, hints=None):
    import comfy.sample
    import nodes as comfy_nodes

    outs = []
    for t, s in enumerate(seeds):
        x = lat[t:t + 1]
        pos, neg = p["pos"], p["neg"]
        if hints is not None:
            pos, neg = comfy_nodes.ControlNetApplyAdvanced().apply_controlnet(pos, neg, p["cn"], hints[t:t + 1], 1.0,
                                                                              0.0, 1.0, vae=p["vae"])
        outs.append(comfy.sample.sample_custom(p["model"], comfy.sample.prepare_noise(x, s), 2.0, p["sampler"],
                                               p["sigmas"], pos, neg, x, disable_pbar=True, seed=s))
    return torch.cat(outs)


@torch.inference_mode()  # as ComfyUI's executor runs nodes
def test_node_strength_zero_equals_plain_per_frame_sampling(comfy_host, tiny):
    from temporal_restore.nodes import recurrent_restore as NR

    p = _host_parts(comfy_host, tiny)
    frames = _moving_clip(T=2)
    lat = _latent_of(frames)
    node = comfy_host.node("TR_RecurrentRestore")
    # a window of a longer clip (batch_index 5, 6): frames get the noise of seed + absolute index
    out = node.execute(p["model"], p["pos"], p["neg"], p["sampler"], p["sigmas"],
                       {"samples": lat, "batch_index": [5, 6]}, frames, noise_seed=7, cfg=2.0, strength=0.0,
                       photometric_tau=0.08, blur=1.0, group=1, control_strength=1.0).args
    ref = _plain_per_frame(p, lat, [12, 13])
    assert out[0]["samples"].shape == lat.shape and torch.isfinite(ref).all()
    torch.testing.assert_close(out[0]["samples"], ref, rtol=1e-5, atol=1e-5)
    assert out[1].shape == (2, 8, 8) and out[1].abs().sum() == 0  # latent grid

    # enabled: frame 0 is untouched, frame 1 changes; the confidence is high on this global pan
    on, conf, none = NR.recurrent_sample(p["model"], p["pos"], p["neg"], p["sampler"], p["sigmas"],
                                         {"samples": lat, "batch_index": [5, 6]}, frames, 7, 2.0, 0.9)
    assert none is None  # no decoded frames unless asked
    torch.testing.assert_close(on["samples"][0], ref[0], rtol=1e-5, atol=1e-5)
    assert (on["samples"][1] - ref[1]).abs().max() > 1e-3
    assert conf[1, 1:-1, 1:-1].mean() > 0.8

    # a group of 2 frames in one batch: same per-frame noise, same result up to batched-conv rounding
    grp = NR.recurrent_sample(p["model"], p["pos"], p["neg"], p["sampler"], p["sigmas"],
                              {"samples": lat, "batch_index": [5, 6]}, frames, 7, 2.0, 0.0, group=2)[0]
    torch.testing.assert_close(grp["samples"], ref, rtol=1e-4, atol=1e-4)


@torch.inference_mode()  # as ComfyUI's executor runs nodes
def test_node_controlnet_hint_strength_zero_equals_stock_controlnet_per_frame(comfy_host, tiny):
    from temporal_restore.nodes import recurrent_restore as NR

    p = _host_parts(comfy_host, tiny)
    frames = _moving_clip(T=2)
    lat = _latent_of(frames)
    args = (p["model"], p["pos"], p["neg"], p["sampler"], p["sigmas"], {"samples": lat}, frames, 3, 2.0)
    off = NR.recurrent_sample(*args, 0.0, control_net=p["cn"], vae=p["vae"])[0]["samples"]
    ref = _plain_per_frame(p, lat, [3, 4], hints=frames)
    torch.testing.assert_close(off, ref, rtol=1e-5, atol=1e-5)
    on = NR.recurrent_sample(*args, 1.0, control_net=p["cn"], vae=p["vae"])[0]["samples"]
    assert torch.isfinite(on).all() and (on[1] - ref[1]).abs().max() > 1e-4

    # decode_images: the same latents (the hint reuses the previous frame's decode, the same single-frame
    # decode as before), and images equal to a VAE decode of them, with T decodes in all instead of 2T - 1
    calls = []
    vae_decode = p["vae"].decode

    class Counting:  # the VAE seen by the node: counts decoded frames
        def __getattr__(self, name):
            return getattr(p["vae"], name)

        def decode(self, z):
            calls.append(int(z.shape[0]))
            return vae_decode(z)

    lat3, frames3 = _latent_of(_moving_clip(T=3)), _moving_clip(T=3)
    args3 = (p["model"], p["pos"], p["neg"], p["sampler"], p["sigmas"], {"samples": lat3}, frames3, 3, 2.0, 1.0)
    plain = NR.recurrent_sample(*args3, control_net=p["cn"], vae=Counting())
    assert plain[2] is None and calls == [1, 1]  # the two anchors
    calls.clear()
    reuse = NR.recurrent_sample(*args3, control_net=p["cn"], vae=Counting(), decode_images=True)
    assert calls == [1, 1, 1]  # each frame once, anchors included
    torch.testing.assert_close(reuse[0]["samples"], plain[0]["samples"], rtol=0, atol=0)
    assert reuse[2].shape == (3, *frames3.shape[1:3], 3)
    torch.testing.assert_close(reuse[2], vae_decode(plain[0]["samples"]), rtol=1e-4, atol=1e-4)
    calls.clear()  # groups of 2: each group decoded in one call, its last frame the next group's anchor
    grouped = NR.recurrent_sample(*args3, control_net=p["cn"], vae=Counting(), decode_images=True, group=2)
    assert calls == [2, 1] and grouped[2].shape == reuse[2].shape
    with pytest.raises(ValueError, match="vae: decode_images needs"):
        NR.recurrent_sample(*args3, decode_images=True)

    # a ControlNet applied upstream with one hint per frame is sliced to the frame being sampled
    import nodes as comfy_nodes

    pos, neg = comfy_nodes.ControlNetApplyAdvanced().apply_controlnet(p["pos"], p["neg"], p["cn"], frames, 1.0, 0.0,
                                                                      1.0, vae=p["vae"])
    up = NR.recurrent_sample(p["model"], pos, neg, p["sampler"], p["sigmas"], {"samples": lat}, frames, 3, 2.0,
                             0.0)[0]["samples"]
    torch.testing.assert_close(up, ref, rtol=1e-5, atol=1e-5)


@torch.inference_mode()  # as ComfyUI's executor runs nodes
def test_node_bad_inputs_and_interrupt(comfy_host, tiny):
    import comfy.model_management

    from temporal_restore.nodes import recurrent_restore as NR

    p = _host_parts(comfy_host, tiny)
    frames = _moving_clip(T=2)
    lat = _latent_of(frames)
    args = (p["model"], p["pos"], p["neg"], p["sampler"], p["sigmas"])
    with pytest.raises(ValueError, match="images"):
        NR.recurrent_sample(*args, {"samples": lat}, frames[:1], 0, 1.0, 0.5)
    with pytest.raises(ValueError, match="strength"):
        NR.recurrent_sample(*args, {"samples": lat}, frames, 0, 1.0, 2.0)
    comfy.model_management.interrupt_current_processing(True)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            NR.recurrent_sample(*args, {"samples": lat}, frames, 0, 1.0, 0.5)
    finally:
        comfy.model_management.interrupt_current_processing(False)


@torch.inference_mode()
def test_node_uses_a_noise_input(comfy_host, tiny):
    """A NOISE (TR_NoiseShare: one shared field) replaces the per-frame seeds: identical frames then give
    identical results, while the default per-frame seeds make them differ."""
    from temporal_restore.nodes import noise_share as nns
    from temporal_restore.nodes import recurrent_restore as NR
    from temporal_restore.pipelines import noise_share as nsh

    p = _host_parts(comfy_host, tiny)
    frames = _texture(64, 64).expand(2, -1, -1, -1).contiguous()
    lat = _latent_of(frames)
    args = (p["model"], p["pos"], p["neg"], p["sampler"], p["sigmas"], {"samples": lat}, frames, 0, 2.0, 0.0)
    shared = NR.recurrent_sample(*args, noise=nns.SharedNoise(nsh.NoiseShare(4)))[0]["samples"]
    own = NR.recurrent_sample(*args)[0]["samples"]
    torch.testing.assert_close(shared[0], shared[1])
    assert (own[0] - own[1]).abs().max() > 1e-3


def test_node_through_the_executor_reports_progress_per_frame(comfy_host, tiny, monkeypatch):
    g = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny["checkpoint"]}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a clean photo", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "img": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 3, "color": 0x806040}},
        "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 3}},
        "smp": {"class_type": "TR_DistilledSampler", "inputs": {"eta": 1.0, "s_noise": 1.0, "per_frame_noise": True}},
        "sig": {"class_type": "TR_DistilledSigmas", "inputs": {"model": ["ckpt", 0], "schedule": "lcm", "steps": 1,
                                                                "denoise": 0.5, "original_steps": 50}},
        "rr": {"class_type": "TR_RecurrentRestore", "inputs": {
            "model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0], "sampler": ["smp", 0],
            "sigmas": ["sig", 0], "latent": ["lat", 0], "images": ["img", 0], "noise_seed": 1, "cfg": 1.0,
            "strength": 0.5, "photometric_tau": 0.08, "blur": 1.0, "group": 1, "control_strength": 1.0}},
    }
    import comfy.utils

    # Watch what the node tells ProgressBar, not what reaches the hook: ComfyUI 0.33 throttles hook calls by time.
    calls, update = [], comfy.utils.ProgressBar.update_absolute

    def record(bar, value, total=None, preview=None):
        update(bar, value, total, preview)
        calls.append((bar.current, bar.total))

    monkeypatch.setattr(comfy.utils.ProgressBar, "update_absolute", record)
    out = comfy_host.run(g, outputs=["rr"])
    monkeypatch.undo()
    lat, conf = out["outputs"]["rr"][0], out["outputs"]["rr"][1]
    assert lat["samples"].shape == (3, 4, 8, 8) and torch.isfinite(lat["samples"]).all()
    assert conf.shape == (3, 8, 8) and conf[0].abs().sum() == 0 and conf[1:].min() > 0.99  # static clip
    assert [c for c in calls if c[1] == 3] == [(1, 3), (2, 3), (3, 3)]  # one update per frame
