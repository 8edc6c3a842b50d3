"""ZVRD nodes (SLR attention, TC guidance, noise sharing, early stopping) on real ComfyUI with tiny models."""
from __future__ import annotations

import copy

import pytest
import torch

FRAMES, LAT = 4, 8  # 4 frames of 64x64 pixels -> 8x8 latents
IDS = ("TR_SLRAttention", "TR_TCGuidance", "TR_NoiseShare", "TR_NoiseShareSampler", "TR_EarlyStop",
       "TR_EarlyStopSigmas")


@pytest.fixture(scope="module")
def zv(comfy_host, tiny):
    import comfy.sd

    # 2 shared cores: OpenMP spin-waiting with several threads makes a 1 s run take ~50 s under load
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(tiny["checkpoint_path"], output_vae=True, output_clip=True)
    enc = lambda t: clip.encode_from_tokens_scheduled(clip.tokenize(t))  # noqa: E731
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(FRAMES, 4, LAT, LAT, generator=g)
    noise = torch.randn(FRAMES, 4, LAT, LAT, generator=g)
    yield {"model": model, "vae": vae, "pos": enc("a clean photo"), "neg": enc(""), "latent": latent, "noise": noise}
    torch.set_num_threads(threads)


def _mods():
    from temporal_restore.nodes import early_stop, noise_share, slr_attention, tc_guidance

    return slr_attention, tc_guidance, noise_share, early_stop


def _sample(model, zv, latent=None, noise=None, cfg=2.0, steps=3, sampler="euler"):
    import comfy.sample

    latent = zv["latent"] if latent is None else latent
    noise = zv["noise"] if noise is None else noise
    return comfy.sample.sample(model, noise.clone(), steps, cfg, sampler, "normal", zv["pos"], zv["neg"],
                               latent.clone(), denoise=1.0, seed=0, disable_pbar=True)


def _guider_sample(model, zv, sampler, sigmas, noise, latent=None, cfg=2.0, callback=None):
    import comfy.samplers

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(zv["pos"], zv["neg"])
    guider.set_cfg(cfg)
    latent = torch.zeros_like(noise) if latent is None else latent
    return guider.sample(noise.clone(), latent.clone(), sampler, sigmas, callback=callback, disable_pbar=True, seed=0)


def _sigmas(model, steps):
    import comfy.samplers

    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", steps).cpu()


def translation_flow(T, h, w, dx, dy=0.0):
    from temporal_restore.pipelines.flow import FlowField, fb_check

    fwd = torch.zeros(T - 1, 2, h, w)
    fwd[:, 0], fwd[:, 1] = dx, dy
    bwd = -fwd
    of, ob = fb_check(fwd, bwd), fb_check(bwd, fwd)
    return FlowField(forward=fwd, backward=bwd, occlusion_fwd=of, occlusion_bwd=ob,
                     confidence_fwd=1 - of, confidence_bwd=1 - ob, height=h, width=w)


def test_nodes_registered(comfy_host):
    for nid in IDS:
        schema = comfy_host.node(nid).define_schema()
        assert schema.node_id == nid and schema.category.startswith("temporal_restore/")
        assert schema.display_name.endswith("(Temporal Restore)")
        assert all(i.tooltip for i in schema.inputs), nid


# ---------------------------------------------------------------------------------------- SLR
def test_slr_patches_decoder_and_largest_resolution(zv):
    slr, *_ = _mods()
    blocks, largest = slr.decoder_attn1(zv["model"])
    assert sorted({b for b, _ in blocks}) == list(range(3, 12))  # SD1.5 layout
    assert largest == {9, 10, 11}
    m, _ = slr.install_slr(zv["model"])
    keys = set(m.model_options["transformer_options"]["patches_replace"]["attn1"])
    assert keys == {("output", b, t) for b, t in blocks}


def test_slr_identical_frames_before_trajectories_equal_stock(zv):
    slr, *_ = _mods()
    lat = zv["latent"][:1].repeat(FRAMES, 1, 1, 1)
    noise = zv["noise"][:1].repeat(FRAMES, 1, 1, 1)
    base = _sample(zv["model"], zv, lat, noise)
    m, state = slr.install_slr(zv["model"], trajectory_start=1.0)
    out = _sample(m, zv, lat, noise)
    assert state.trajectory_calls == 0
    assert (out - base).abs().max().item() <= 1e-5 * base.abs().max().item()


def test_slr_changes_output_runs_trajectories_and_keeps_original(zv):
    slr, *_ = _mods()
    model = zv["model"]
    before = copy.deepcopy(model.model_options)
    base = _sample(model, zv)
    m, state = slr.install_slr(model, trajectory_start=0.3)
    out = _sample(m, zv, steps=4)
    assert state.trajectory_calls > 0
    assert sum(state.stats.values()) > 0
    assert (out - _sample(model, zv, steps=4)).abs().max().item() > 1e-4
    assert model.model_options == before
    assert torch.equal(_sample(model, zv), base)


def test_slr_install_twice_does_not_stack(zv):
    slr, *_ = _mods()
    once, _ = slr.install_slr(zv["model"], trajectory_start=0.5)
    twice, _ = slr.install_slr(slr.install_slr(zv["model"], trajectory_start=0.1)[0], trajectory_start=0.5)
    for patch in twice.model_options["transformer_options"]["patches_replace"]["attn1"].values():
        assert patch.prev is None
    post = [f for f in twice.model_options["sampler_post_cfg_function"] if getattr(f, "_temporal_restore", "") == "slr_attention"]
    assert len(post) == 1
    assert torch.equal(_sample(once, zv, steps=4), _sample(twice, zv, steps=4))


def test_slr_with_input_flow_and_no_cfg(zv):
    slr, *_ = _mods()
    m, state = slr.install_slr(zv["model"], flow=translation_flow(FRAMES, 64, 64, 8.0), trajectory_start=0.0,
                               x0_flow=False)
    out = _sample(m, zv, cfg=1.0, steps=3)
    assert torch.isfinite(out).all() and state.stats["flow"] + state.stats["similarity"] + state.stats["history"] > 0


# ---------------------------------------------------------------------------------------- TC guidance
def test_tc_guidance_scale0_bit_identical_and_positive_reduces_eq8(zv):
    _, tc, _, _ = _mods()
    from temporal_restore.pipelines.slr_attention import latent_to_rgb
    from temporal_restore.pipelines.tc_guidance import pc_loss

    flow = translation_flow(FRAMES, 64, 64, 8.0)  # one latent pixel per frame
    base = _sample(zv["model"], zv, steps=4)
    m0, _ = tc.install_tc_guidance(zv["model"], scale=0.0, guidance_start=0.0, flow=flow)
    assert torch.equal(_sample(m0, zv, steps=4), base)
    m1, guide = tc.install_tc_guidance(zv["model"], scale=0.2, guidance_start=0.0, flow=flow)
    out = _sample(m1, zv, steps=4)
    assert guide.guided_steps > 0
    lf = flow.resized(LAT, LAT)
    l_base = pc_loss(latent_to_rgb(base, clamp=False), lf).item()
    l_out = pc_loss(latent_to_rgb(out, clamp=False), lf).item()
    assert l_out < 0.95 * l_base, (l_base, l_out)


def test_tc_guidance_x0_flow_mode_runs(zv):
    _, tc, _, _ = _mods()
    m, guide = tc.install_tc_guidance(zv["model"], scale=0.1, guidance_start=0.3)
    out = _sample(m, zv, steps=4)
    assert torch.isfinite(out).all() and guide.guided_steps > 0


# ---------------------------------------------------------------------------------------- noise sharing
def test_noise_share_node_noise(comfy_host):
    _, _, ns, _ = _mods()
    noise = ns.NoiseShare.execute(seed=5, blend=0.5, variance_preserving=True, blend_initial=True).result[0]
    assert noise.seed == 5
    z = noise.generate_noise({"samples": torch.zeros(FRAMES, 4, LAT, LAT)})
    assert z.shape == (FRAMES, 4, LAT, LAT) and z.device.type == "cpu"
    assert all(torch.equal(z[t], z[0]) for t in range(FRAMES))
    with pytest.raises(ValueError, match="noise"):
        ns.NoiseShareSamplerNode.execute(sampler=None, noise=object())


def test_noise_share_sampler_shares_step_noise(zv):
    """Static scene: identical frames + shared initial noise. With euler_ancestral the frames stay identical
    only when the step noise is shared too."""
    import comfy.samplers

    _, _, ns, es = _mods()
    noise_obj = ns.NoiseShare.execute(seed=1, blend=0.5, variance_preserving=True, blend_initial=True,
                                      flow=translation_flow(FRAMES, 64, 64, 0.0)).result[0]
    lat = zv["latent"][:1].repeat(FRAMES, 1, 1, 1)
    noise = noise_obj.generate_noise({"samples": lat})
    sig = _sigmas(zv["model"], 4)
    anc = comfy.samplers.sampler_object("euler_ancestral")
    plain = _guider_sample(zv["model"], zv, anc, sig, noise, lat)
    shared = _guider_sample(zv["model"], zv, ns.NoiseShareSampler(anc, noise_obj.share), sig, noise, lat)
    assert (plain[1] - plain[0]).abs().max().item() > 1e-3
    assert (shared[1:] - shared[:1]).abs().max().item() <= 1e-5 * shared.abs().max().item()
    # composes with early stopping (both orders) and with deterministic samplers (unchanged)
    a = _guider_sample(zv["model"], zv, es.EarlyStopSampler(ns.NoiseShareSampler(anc, noise_obj.share), 0.5), sig, noise, lat)
    b = _guider_sample(zv["model"], zv, ns.NoiseShareSampler(es.EarlyStopSampler(anc, 0.5), noise_obj.share), sig, noise, lat)
    assert torch.equal(a, b)
    eul = comfy.samplers.sampler_object("euler")
    assert torch.equal(_guider_sample(zv["model"], zv, eul, sig, noise, lat),
                       _guider_sample(zv["model"], zv, ns.NoiseShareSampler(eul, noise_obj.share), sig, noise, lat))


# ---------------------------------------------------------------------------------------- early stopping
@pytest.mark.parametrize("stop_at", [0.25, 0.5])
def test_early_stop_returns_x0_of_that_step(zv, stop_at):
    import comfy.samplers

    _, _, _, es = _mods()
    from temporal_restore.pipelines.early_stop import stop_index

    steps = 4
    sig = _sigmas(zv["model"], steps)
    eul = comfy.samplers.sampler_object("euler")
    x0s = []
    _guider_sample(zv["model"], zv, eul, sig, zv["noise"], callback=lambda i, x0, x, n: x0s.append(x0.clone()))
    k = stop_index(steps, stop_at)
    expected = zv["model"].model.process_latent_out(x0s[k])
    out = _guider_sample(zv["model"], zv, es.EarlyStopSampler(eul, stop_at), sig, zv["noise"])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    cut = es.EarlyStopSigmas.execute(sigmas=sig, stop_at=stop_at).result[0]
    assert cut.shape[0] == k + 2
    assert not torch.allclose(out, zv["model"].model.process_latent_out(x0s[-1]))


def test_tc_guidance_semantic_term_with_clip_vision(zv, tmp_path):
    """Eq. 9 with a tiny CLIP vision model built and run the way ComfyUI does it (inference mode)."""
    import json

    import comfy.clip_vision

    _, tc, _, _ = _mods()
    cfg = {"hidden_act": "quick_gelu", "hidden_size": 32, "image_size": 32, "intermediate_size": 64,
           "layer_norm_eps": 1e-5, "model_type": "clip_vision_model", "num_attention_heads": 2, "num_channels": 3,
           "num_hidden_layers": 1, "patch_size": 16, "projection_dim": 16, "torch_dtype": "float32"}
    path = tmp_path / "tiny_clip_vision.json"
    path.write_text(json.dumps(cfg))
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        cv = comfy.clip_vision.ClipVisionModel(str(path))
        cv.load_sd({k: torch.randn(v.shape, generator=gen) * 0.1 for k, v in cv.get_sd().items()})
        flow = translation_flow(FRAMES, 64, 64, 8.0)
        m_pc, _ = tc.install_tc_guidance(zv["model"], scale=0.2, guidance_start=0.0, flow=flow)
        m_sc, guide = tc.install_tc_guidance(zv["model"], scale=0.2, guidance_start=0.0, flow=flow,
                                             clip_vision=cv, gamma=50.0)
        a = _sample(m_pc, zv, steps=3)
        b = _sample(m_sc, zv, steps=3)
    assert guide.embed is not None, "semantic term was disabled"
    assert guide.guided_steps > 0
    assert (a - b).abs().max().item() > 1e-5


def test_graph_noise_share_and_early_stop_sigmas_via_executor(comfy_host, tiny, zv):
    """The nodes through ComfyUI's executor: SamplerCustomAdvanced with TR_NoiseShare noise and an
    early-stopped schedule. Zero latent + shared noise and no flow: every frame comes out identical."""
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny["checkpoint"]}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": FRAMES}},
        "5": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": 4, "denoise": 1.0}},
        "6": {"class_type": "TR_EarlyStopSigmas", "inputs": {"sigmas": ["5", 0], "stop_at": 0.5}},
        "7": {"class_type": "TR_NoiseShare", "inputs": {"seed": 3, "blend": 0.5, "variance_preserving": True,
                                                       "blend_initial": True}},
        "8": {"class_type": "CFGGuider", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "cfg": 2.0}},
        "9": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "10": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["7", 0], "guider": ["8", 0], "sampler": ["9", 0],
                                                                 "sigmas": ["6", 0], "latent_image": ["4", 0]}},
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["1", 2]}},
        "12": {"class_type": "PreviewImage", "inputs": {"images": ["11", 0]}},
    }
    res = comfy_host.run(prompt, outputs=["6", "10"])
    sig = res["outputs"]["6"][0]
    assert sig.shape[0] == 4 and float(sig[-1]) == 0.0  # steps 0..2 kept, then 0
    lat = res["outputs"]["10"][0]["samples"]
    assert lat.shape == (FRAMES, 4, LAT, LAT)
    assert (lat[1:] - lat[:1]).abs().max().item() <= 1e-5 * lat.abs().max().item()


def test_tc_guidance_install_twice_replaces_and_original_untouched(zv):
    _, tc, _, _ = _mods()
    before = copy.deepcopy(zv["model"].model_options)
    once, _ = tc.install_tc_guidance(zv["model"], scale=0.3)
    twice, g2 = tc.install_tc_guidance(once, scale=0.1)
    funcs = [f for f in twice.model_options["sampler_post_cfg_function"] if getattr(f, "_temporal_restore", "") == "tc_guidance"]
    assert len(funcs) == 1 and funcs[0].guide is g2
    assert len([f for f in once.model_options["sampler_post_cfg_function"] if getattr(f, "_temporal_restore", "") == "tc_guidance"]) == 1
    assert zv["model"].model_options == before
