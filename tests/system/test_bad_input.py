"""Bad input through the real headless server (reliability issue, item 1).

One prompt per case. Each bad prompt must fail with an error that names the offending input (substring
checks on the server's ``exception_message``, or on the validation answer of ``POST /prompt``), the server
must stay alive, and a healthy prompt queued right after must succeed. Cases where the right behaviour is
"work" (one-frame clips, windows longer than the clip, sizes not divisible by 8) assert the result instead.
"""
from __future__ import annotations

import itertools
import json
import os

import pytest
import safetensors.torch
import torch

from harness import paths
from harness.prompt import Graph, out
from harness.server import ServerError

pytestmark = pytest.mark.server

_healthy_seed = itertools.count(1000)


# -- graph building (Graph, out: tests/harness/prompt.py) ----------------------------------------------------
def model_and_prompts(g: Graph, tiny) -> tuple[str, str, str]:
    ck = g.add("CheckpointLoaderSimple", ckpt_name=tiny["checkpoint"])
    pos = g.add("CLIPTextEncode", text="remove the noise", clip=out(ck, 1))
    neg = g.add("CLIPTextEncode", text="", clip=out(ck, 1))
    return ck, pos, neg


def clip(g: Graph, frames: int, size: int = 32, seed: int = 0) -> str:
    """IMAGE [frames, size, size, 3] (TR_SyntheticClip needs >= 2 frames: one frame is cut from two)."""
    n = max(2, frames)
    c = g.add("TR_SyntheticClip", image="astronaut", frames=n, width=size, height=size, motion="pan",
              moving_object=True, seed=seed)
    if frames == n:
        return c
    return g.add("ImageFromBatch", image=out(c), batch_index=0, length=frames)


def encode(g: Graph, ck: str, images: str) -> str:
    return g.add("VAEEncode", pixels=out(images), vae=out(ck, 2))


def empty_latent(g: Graph, frames: int, width: int = 32, height: int = 32) -> str:
    """A zero LATENT [frames, 4, height/8, width/8]: cheaper than VAEEncode and independent of the tiny VAE
    (whose encoder once returned Inf for every latent; test_tiny_checkpoint_vae_encode_is_finite guards it)."""
    return g.add("EmptyLatentImage", width=width, height=height, batch_size=frames)


def ksampler(g: Graph, model, pos, neg, latent, steps=2, seed=0, denoise=1.0, prefix=None) -> str:
    ks = g.add("KSampler", model=model, positive=out(pos), negative=out(neg), latent_image=out(latent),
               seed=seed, steps=steps, cfg=2.0, sampler_name="euler", scheduler="normal", denoise=denoise)
    if prefix:
        g.add("SaveLatent", samples=out(ks), filename_prefix=prefix)
    return ks


def metrics(g: Graph, restored: str, **extra) -> str:
    return g.add("TR_VideoMetrics", restored=out(restored), window_starts="", filename_prefix="", **extra)


# -- running -----------------------------------------------------------------------------------------------
def error_of(server, prompt: dict) -> tuple[str, str | None]:
    """(message, node_type) of a prompt that must fail; validation refusals have node_type None."""
    try:
        server.run(prompt, timeout=300)
    except ServerError as e:
        if e.entry is None:
            assert server.alive(), f"server died: {e}"
            return str(e), None
        errs = [m[1] for m in e.entry["status"]["messages"] if m[0] == "execution_error"]
        assert errs, e.entry["status"]
        return errs[0].get("exception_message", ""), errs[0].get("node_type")
    pytest.fail("the prompt was expected to fail with a clear error but succeeded")


def healthy(server, tiny) -> None:
    """A valid sampling prompt (new seed, so nothing is cached) succeeds after the bad one."""
    g = Graph()
    ck, pos, neg = model_and_prompts(g, tiny)
    lat = g.add("EmptyLatentImage", width=32, height=32, batch_size=2)
    ksampler(g, out(ck), pos, neg, lat, steps=1, seed=next(_healthy_seed), prefix="bad_input/healthy")
    entry = server.run(g, timeout=300)
    files = [f for f in server.output_files(entry) if f.endswith(".latent")]
    assert files and safetensors.torch.load_file(files[0])["latent_tensor"].shape[0] == 2


def expect_error(server, tiny, prompt: dict, *needles: str, node_type: str | None = "", anyof=()) -> str:
    msg, ntype = error_of(server, prompt)
    low = msg.lower()
    for n in needles:
        assert n.lower() in low, f"error does not mention {n!r}: {msg}"
    if anyof:
        assert any(a.lower() in low for a in anyof), f"error mentions none of {anyof}: {msg}"
    if node_type != "":
        assert ntype == node_type, (ntype, msg)
    assert server.alive()
    healthy(server, tiny)
    return msg


def run_ok(server, tiny, prompt: dict) -> dict:
    entry = server.run(prompt, timeout=300)
    assert server.alive()
    return entry


def latent_of(server, entry, prefix_part: str) -> torch.Tensor:
    files = sorted(f for f in server.output_files(entry) if f.endswith(".latent") and prefix_part in f)
    assert files, entry.get("outputs")
    return safetensors.torch.load_file(files[-1])["latent_tensor"]


def metrics_of(entry, nid: str) -> dict:
    return json.loads(entry["outputs"][nid]["text"][0])


# == 1. frame-count mismatches ==============================================================================
def _flow4_latent8(g, tiny):
    ck, pos, neg = model_and_prompts(g, tiny)
    flow = g.add("TR_FlowEstimate", images=out(clip(g, 4)), backend="dis", dis_preset="ultrafast",
                 raft_weights="", keyframe_stride=0, grid="latent (1/8)")
    lat = empty_latent(g, 8)
    return ck, pos, neg, flow, lat


def test_latent_warp_flow_shorter_than_latent(server, tiny):
    g = Graph()
    ck, pos, neg, flow, lat = _flow4_latent8(g, tiny)
    m = g.add("TR_LatentWarp", model=out(ck), flow=out(flow), fraction=1.0, batch_size=4, keyframe_mode="stride",
              seed=0, strength=1.0)
    ksampler(g, out(m), pos, neg, lat, denoise=0.5, prefix="bad_input/x")
    expect_error(server, tiny, g, "flow:", "4 frames")


def test_token_merge_flow_shorter_than_latent(server, tiny):
    g = Graph()
    ck, pos, neg, flow, lat = _flow4_latent8(g, tiny)
    m = g.add("TR_TokenMerge", model=out(ck), flow=out(flow), ratio=0.75, chunk_size=4, keyframe_mode="stride",
              seed=0, anneal_start=0.0, anneal_end=1.0, delta=1.0, radius=4.0, down_blocks="flow",
              up_blocks="cosine", pad_bottom=0, pad_right=0)
    ksampler(g, out(m), pos, neg, lat, denoise=0.5, prefix="bad_input/x")
    expect_error(server, tiny, g, "flow:", "4 frames")


@pytest.mark.parametrize("node", ["TR_SLRAttention", "TR_TCGuidance"])
def test_zvrd_patch_flow_shorter_than_latent(server, tiny, node):
    g = Graph()
    ck, pos, neg, flow, lat = _flow4_latent8(g, tiny)
    if node == "TR_SLRAttention":
        m = g.add(node, model=out(ck), flow=out(flow), trajectory_start=0.0, strength=1.0, search_radius=1,
                  patch_radius=1, x0_flow=False)
    else:
        m = g.add(node, model=out(ck), flow=out(flow), scale=1.0, guidance_start=0.0, gamma=0.0)
    ksampler(g, out(m), pos, neg, lat, denoise=0.5, prefix="bad_input/x")
    expect_error(server, tiny, g, "flow:", "4")


def test_noise_share_flow_shorter_than_latent(server, tiny):
    g = Graph()
    ck, pos, neg, flow, lat = _flow4_latent8(g, tiny)
    noise = g.add("TR_NoiseShare", seed=0, blend=0.5, variance_preserving=True, blend_initial=True, flow=out(flow))
    guider = g.add("CFGGuider", model=out(ck), positive=out(pos), negative=out(neg), cfg=2.0)
    sampler = g.add("KSamplerSelect", sampler_name="euler_ancestral")
    sigmas = g.add("BasicScheduler", model=out(ck), scheduler="normal", steps=2, denoise=1.0)
    s = g.add("SamplerCustomAdvanced", noise=out(noise), guider=out(guider), sampler=out(sampler),
              sigmas=out(sigmas), latent_image=out(lat))
    g.add("SaveLatent", samples=out(s), filename_prefix="bad_input/x")
    expect_error(server, tiny, g, "flow:", "4")


def test_controlnet_hints_fewer_than_latent_frames(server, tiny):
    g = Graph()
    ck, _, _ = model_and_prompts(g, tiny)
    tp = g.add("TR_TaskPromptControlNet", control_net_name=tiny["controlnet"], clip=out(ck, 1), image=out(clip(g, 3)),
               task="denoise", custom_prompt="", negative_prompt="", strength=1.0, start_percent=0.0,
               end_percent=1.0)
    lat = empty_latent(g, 4)
    ksampler(g, out(ck), tp, tp, lat, denoise=0.5, prefix="bad_input/x")
    g[str(len(g) - 1)]["inputs"]["negative"] = out(tp, 1)
    expect_error(server, tiny, g, "image:", "3 frames")


def test_controlnet_hints_shorter_than_chunked_clip(server, tiny):
    """Through TR_ILTChunker: the window needs hint frames the 3-frame hint does not have."""
    g = Graph()
    ck, _, _ = model_and_prompts(g, tiny)
    tp = g.add("TR_TaskPromptControlNet", control_net_name=tiny["controlnet"], clip=out(ck, 1), image=out(clip(g, 3)),
               task="denoise", custom_prompt="", negative_prompt="", strength=1.0, start_percent=0.0,
               end_percent=1.0)
    lat = empty_latent(g, 6)
    g.add("TR_ILTChunker", model=out(ck), positive=out(tp, 0), negative=out(tp, 1), latent=out(lat), seed=0, cfg=2.0,
          sampler_name="euler", scheduler="normal", steps=2, denoise=0.5, window=4, overlap=2, mode="fused",
          noise="rescheduled", carry_state=True)
    g.add("SaveLatent", samples=[str(len(g)), 0], filename_prefix="bad_input/x")
    expect_error(server, tiny, g, "image:", "3 frames")


def test_video_metrics_reference_of_other_length(server, tiny):
    g = Graph()
    metrics(g, clip(g, 4), reference=out(clip(g, 6)))
    expect_error(server, tiny, g, "reference:", "restored", node_type="TR_VideoMetrics")


def test_video_metrics_degraded_of_other_length(server, tiny):
    g = Graph()
    c = clip(g, 4)
    metrics(g, c, reference=out(c), degraded=out(clip(g, 6)))
    expect_error(server, tiny, g, "degraded:", node_type="TR_VideoMetrics")


def test_video_metrics_flow_of_other_length(server, tiny):
    g = Graph()
    flow = g.add("TR_FlowEstimate", images=out(clip(g, 4)), backend="dis", dis_preset="ultrafast", raft_weights="",
                 keyframe_stride=0, grid="full")
    metrics(g, clip(g, 8), flow=out(flow))
    expect_error(server, tiny, g, "flow:", node_type="TR_VideoMetrics")


def _distilled(g, ck, steps=2, denoise=0.5):
    sampler = g.add("TR_DistilledSampler", eta=1.0, s_noise=1.0, per_frame_noise=True)
    sigmas = g.add("TR_DistilledSigmas", model=out(ck), schedule="trailing", steps=steps, denoise=denoise,
                   original_steps=50)
    return sampler, sigmas


def _recurrent(g, ck, pos, neg, lat, images):
    sampler, sigmas = _distilled(g, ck)
    r = g.add("TR_RecurrentRestore", model=out(ck), positive=out(pos), negative=out(neg), sampler=out(sampler),
              sigmas=out(sigmas), latent=out(lat), images=out(images), noise_seed=0, cfg=1.5, strength=0.5,
              photometric_tau=0.1, blur=1.0, group=1, control_strength=1.0)
    g.add("SaveLatent", samples=out(r), filename_prefix="bad_input/recurrent")
    return r


def test_recurrent_restore_images_of_other_length(server, tiny):
    g = Graph()
    ck, pos, neg = model_and_prompts(g, tiny)
    _recurrent(g, ck, pos, neg, empty_latent(g, 6), clip(g, 4))
    expect_error(server, tiny, g, "images:", "6", node_type="TR_RecurrentRestore")


# == 2. sizes not divisible by 8 ============================================================================
def test_sizes_not_multiple_of_8_work_through_flow_patches_and_sampler(server, tiny):
    """60x44 frames (VAEEncode would crop them to 56x40, a 7x5 latent); flow on the 1/8 grid is 7x5 too.
    The flow patches and the sampler must work on that odd latent grid."""
    g = Graph()
    ck, pos, neg = model_and_prompts(g, tiny)
    img = g.add("ImageScale", image=out(clip(g, 4)), upscale_method="bilinear", width=60, height=44, crop="disabled")
    flow = g.add("TR_FlowEstimate", images=out(img), backend="dis", dis_preset="ultrafast", raft_weights="",
                 keyframe_stride=2, grid="latent (1/8)")
    m = g.add("TR_LatentWarp", model=out(ck), flow=out(flow), fraction=1.0, batch_size=2, keyframe_mode="stride",
              seed=0, strength=1.0)
    m = g.add("TR_TokenMerge", model=out(m), flow=out(flow), ratio=0.75, chunk_size=2, keyframe_mode="stride", seed=0,
              anneal_start=0.0, anneal_end=1.0, delta=1.0, radius=4.0, down_blocks="flow", up_blocks="flow",
              pad_bottom=0, pad_right=0)
    m = g.add("TR_SWCFAPatch", model=out(m), mode="sw_cfa", radius=1, blocks="all")
    ksampler(g, out(m), pos, neg, empty_latent(g, 4, 56, 40), denoise=1.0, prefix="bad_input/odd")
    lat = latent_of(server, run_ok(server, tiny, g), "odd")
    assert tuple(lat.shape) == (4, 4, 5, 7)
    assert torch.isfinite(lat).all()


def test_sizes_not_multiple_of_8_recurrent_restore(server, tiny):
    g = Graph()
    ck, pos, neg = model_and_prompts(g, tiny)
    img = g.add("ImageScale", image=out(clip(g, 3)), upscale_method="bilinear", width=60, height=44, crop="disabled")
    _recurrent(g, ck, pos, neg, empty_latent(g, 3, 56, 40), img)
    lat = latent_of(server, run_ok(server, tiny, g), "recurrent")
    assert tuple(lat.shape) == (3, 4, 5, 7)
    assert torch.isfinite(lat).all()


def test_synthetic_clip_width_not_multiple_of_8(server, tiny):
    """The schema says "multiple of 8" (step=8), which ComfyUI does not enforce: the node must either make
    the clip at the asked size or refuse naming the input."""
    g = Graph()
    c = g.add("TR_SyntheticClip", image="astronaut", frames=2, width=60, height=44, motion="pan",
              moving_object=True, seed=0)
    nid = metrics(g, c)
    try:
        entry = server.run(g, timeout=300)
    except ServerError:
        expect_error(server, tiny, g, anyof=("width", "height"))
        return
    assert isinstance(metrics_of(entry, nid), dict)
    assert server.alive()


@pytest.mark.parametrize("node", ["TR_FlowEstimate", "TR_VideoMetrics"])
def test_tiny_frames_work_or_name_the_input(server, tiny, node):
    """8x8 frames (OpenCV DIS refuses frames under 12 px): a result, or a ValueError naming the frames."""
    g = Graph()
    img = g.add("EmptyImage", width=8, height=8, batch_size=3, color=0x406080)
    if node == "TR_FlowEstimate":
        f = g.add(node, images=out(img), backend="dis", dis_preset="medium", raft_weights="", keyframe_stride=2,
                  grid="full")
        nid = metrics(g, img, flow=out(f))
    else:
        nid = metrics(g, img, reference=out(img))
    try:
        entry = server.run(g, timeout=300)
    except ServerError:
        expect_error(server, tiny, g, "images:" if node == "TR_FlowEstimate" else "restored:", node_type=node)
        return
    m = metrics_of(entry, nid)
    assert m["frames"] == 3 and m["warping_error"] is not None


# == 3. one-frame clips: temporal patches degrade to the per-frame result ==================================
def _one_frame_patch(g, node, model, flow):
    if node == "swcfa":
        return g.add("TR_SWCFAPatch", model=model, mode="sw_cfa", radius=2, blocks="all")
    if node == "first_frame":
        return g.add("TR_SWCFAPatch", model=model, mode="first_frame", radius=2, blocks="all")
    if node == "latent_warp":
        return g.add("TR_LatentWarp", model=model, flow=out(flow), fraction=1.0, batch_size=4, keyframe_mode="random",
                     seed=0, strength=1.0)
    if node == "latent_warp_noflow":
        return g.add("TR_LatentWarp", model=model, fraction=1.0, batch_size=4, keyframe_mode="random", seed=0,
                     strength=1.0)
    if node in ("token_merge", "token_merge_noflow"):
        extra = {"flow": out(flow)} if node == "token_merge" else {}
        return g.add("TR_TokenMerge", model=model, ratio=1.0, chunk_size=4, keyframe_mode="random", seed=0,
                     anneal_start=0.0, anneal_end=1.0, delta=1.0, radius=4.0, down_blocks="flow",
                     up_blocks="cosine", pad_bottom=0, pad_right=0, **extra)
    if node == "slr":
        return g.add("TR_SLRAttention", model=model, flow=out(flow), trajectory_start=0.0, strength=1.0,
                     search_radius=2, patch_radius=1, x0_flow=True)
    if node == "tc_guidance":
        return g.add("TR_TCGuidance", model=model, flow=out(flow), scale=1.0, guidance_start=0.0, gamma=0.0)
    raise AssertionError(node)


def _one_frame_graph(tiny, node, prefix):
    g = Graph()
    ck, pos, neg = model_and_prompts(g, tiny)
    img = clip(g, 1)
    flow = g.add("TR_FlowEstimate", images=out(img), backend="dis", dis_preset="ultrafast", raft_weights="",
                 keyframe_stride=8, grid="latent (1/8)")
    model = out(ck) if node is None else out(_one_frame_patch(g, node, out(ck), flow))
    ksampler(g, model, pos, neg, empty_latent(g, 1), steps=3, seed=5, denoise=1.0, prefix=prefix)
    return g


@pytest.mark.parametrize("node", ["swcfa", "first_frame", "latent_warp", "latent_warp_noflow", "token_merge",
                                  "token_merge_noflow", "slr", "tc_guidance"])
def test_one_frame_temporal_patch_equals_per_frame_result(server, tiny, node):
    base = latent_of(server, run_ok(server, tiny, _one_frame_graph(tiny, None, "bad_input/one_base")), "one_base")
    got = latent_of(server, run_ok(server, tiny, _one_frame_graph(tiny, node, f"bad_input/one_{node}")),
                    f"one_{node}")
    assert got.shape == base.shape == (1, 4, 4, 4)
    assert (got - base).abs().max().item() < 1e-4, f"{node} on one frame differs from the unpatched sampler"


def test_one_frame_flow_and_metrics(server, tiny):
    g = Graph()
    img = clip(g, 1)
    flow = g.add("TR_FlowEstimate", images=out(img), backend="dis", dis_preset="ultrafast", raft_weights="",
                 keyframe_stride=8, grid="full")
    deg = g.add("TR_Degrade", images=out(img), task="denoise", strength=-1.0, seed=0)
    nid = metrics(g, deg, reference=out(img), flow=out(flow))
    m = metrics_of(run_ok(server, tiny, g), nid)
    assert m["psnr"] is not None and 5 < m["psnr"] < 60, m


def test_one_frame_ilt_chunker_equals_ksampler(server, tiny):
    """One frame through the chunker (independent noise = ComfyUI's noise) is the plain KSampler result."""
    g = Graph()
    ck, pos, neg = model_and_prompts(g, tiny)
    lat = empty_latent(g, 1)
    ksampler(g, out(ck), pos, neg, lat, steps=3, seed=5, denoise=1.0, prefix="bad_input/one_ks")
    c = g.add("TR_ILTChunker", model=out(ck), positive=out(pos), negative=out(neg), latent=out(lat), seed=5, cfg=2.0,
              sampler_name="euler", scheduler="normal", steps=3, denoise=1.0, window=8, overlap=4, mode="fused",
              noise="independent", carry_state=True)
    g.add("SaveLatent", samples=out(c), filename_prefix="bad_input/one_ilt")
    entry = run_ok(server, tiny, g)
    a, b = latent_of(server, entry, "one_ks"), latent_of(server, entry, "one_ilt")
    assert a.shape == b.shape == (1, 4, 4, 4)
    assert (a - b).abs().max().item() < 1e-4


@pytest.mark.parametrize("what", ["recurrent", "te3d", "ddim", "noise_share"])
def test_one_frame_samplers_and_decoder_work(server, tiny, what):
    g = Graph()
    ck, pos, neg = model_and_prompts(g, tiny)
    img = clip(g, 1)
    lat = empty_latent(g, 1)
    if what == "recurrent":
        _recurrent(g, ck, pos, neg, lat, img)
        prefix = "recurrent"
    elif what == "te3d":
        d = g.add("TR_TE3DVAEDecode", samples=out(lat), vae=out(ck, 2), mode="te3d", chunk=8, overlap=2, kv_radius=1,
                  temporal_weights="")
        nid = metrics(g, d, reference=out(img))
        m = metrics_of(run_ok(server, tiny, g), nid)
        assert m["psnr"] is not None
        return
    elif what == "ddim":
        inv = g.add("TR_DDIMInvert", model=out(ck), positive=out(pos), negative=out(neg), latent=out(lat), steps=2,
                    cfg=1.0, denoise=0.5, refine=0)
        r = g.add("TR_DDIMRestore", model=out(ck), positive=out(pos), negative=out(neg), latent=out(inv), steps=2,
                  cfg=1.0)
        g.add("SaveLatent", samples=out(r), filename_prefix="bad_input/one_ddim")
        prefix = "one_ddim"
    else:
        flow = g.add("TR_FlowEstimate", images=out(img), backend="dis", dis_preset="ultrafast", raft_weights="",
                     keyframe_stride=8, grid="latent (1/8)")
        noise = g.add("TR_NoiseShare", seed=0, blend=0.5, variance_preserving=True, blend_initial=True,
                      flow=out(flow))
        guider = g.add("CFGGuider", model=out(ck), positive=out(pos), negative=out(neg), cfg=2.0)
        sampler = g.add("TR_NoiseShareSampler", sampler=out(g.add("KSamplerSelect", sampler_name="euler_ancestral")),
                        noise=out(noise))
        sigmas = g.add("BasicScheduler", model=out(ck), scheduler="normal", steps=2, denoise=1.0)
        s = g.add("SamplerCustomAdvanced", noise=out(noise), guider=out(guider), sampler=out(sampler),
                  sigmas=out(sigmas), latent_image=out(lat))
        g.add("SaveLatent", samples=out(s), filename_prefix="bad_input/one_noise")
        prefix = "one_noise"
    lat_out = latent_of(server, run_ok(server, tiny, g), prefix)
    assert tuple(lat_out.shape) == (1, 4, 4, 4)
    assert torch.isfinite(lat_out).all()


# == 4. windows and overlaps ================================================================================
def _chunker(g, tiny, frames, window, overlap, steps=2):
    ck, pos, neg = model_and_prompts(g, tiny)
    lat = empty_latent(g, frames)
    c = g.add("TR_ILTChunker", model=out(ck), positive=out(pos), negative=out(neg), latent=out(lat), seed=0, cfg=2.0,
              sampler_name="euler", scheduler="normal", steps=steps, denoise=0.5, window=window, overlap=overlap,
              mode="fused", noise="rescheduled", carry_state=True)
    g.add("SaveLatent", samples=out(c), filename_prefix=f"bad_input/chunk_{window}_{overlap}")
    return c


@pytest.mark.parametrize("window,overlap", [(4, 4), (4, 6)])
def test_ilt_chunker_overlap_not_below_window(server, tiny, window, overlap):
    g = Graph()
    _chunker(g, tiny, 6, window, overlap)
    expect_error(server, tiny, g, "overlap:", "window", node_type="TR_ILTChunker")


@pytest.mark.parametrize("window,overlap", [(16, 4), (16, 8), (3, 2)])
def test_ilt_chunker_window_or_overlap_longer_than_clip_works(server, tiny, window, overlap):
    g = Graph()
    _chunker(g, tiny, 3, window, overlap)
    lat = latent_of(server, run_ok(server, tiny, g), f"chunk_{window}_{overlap}")
    assert tuple(lat.shape) == (3, 4, 4, 4) and torch.isfinite(lat).all()


def test_te3d_decode_overlap_not_below_chunk(server, tiny):
    g = Graph()
    ck, _, _ = model_and_prompts(g, tiny)
    d = g.add("TR_TE3DVAEDecode", samples=out(empty_latent(g, 4)), vae=out(ck, 2), mode="2d", chunk=2,
              overlap=2, kv_radius=1, temporal_weights="")
    metrics(g, d)
    expect_error(server, tiny, g, "overlap:", node_type="TR_TE3DVAEDecode")



@pytest.mark.parametrize("tile_size,tile_overlap,name", [(100, 16, "tile_size:"), (64, 64, "tile_overlap:")])
def test_te3d_decode_bad_tiles(server, tiny, tile_size, tile_overlap, name):
    g = Graph()
    ck, _, _ = model_and_prompts(g, tiny)
    d = g.add("TR_TE3DVAEDecode", samples=out(empty_latent(g, 4)), vae=out(ck, 2), mode="te3d", chunk=2,
              overlap=1, kv_radius=1, temporal_weights="", tile_size=tile_size, tile_overlap=tile_overlap)
    metrics(g, d)
    expect_error(server, tiny, g, name, node_type="TR_TE3DVAEDecode")

# == 5. zero / negative steps ===============================================================================
@pytest.mark.parametrize("node,steps", [("KSampler", 0), ("TR_ILTChunker", 0), ("TR_ILTChunker", -3),
                                        ("TR_DDIMInvert", 0), ("TR_DistilledSigmas", 0), ("TR_DistilledSigmas", 9)])
def test_bad_steps_refused_by_schema(server, tiny, node, steps):
    g = Graph()
    ck, pos, neg = model_and_prompts(g, tiny)
    lat = g.add("EmptyLatentImage", width=32, height=32, batch_size=2)
    if node == "KSampler":
        ksampler(g, out(ck), pos, neg, lat, steps=steps, prefix="bad_input/x")
    elif node == "TR_ILTChunker":
        c = g.add(node, model=out(ck), positive=out(pos), negative=out(neg), latent=out(lat), seed=0, cfg=2.0,
                  sampler_name="euler", scheduler="normal", steps=steps, denoise=1.0, window=4, overlap=2,
                  mode="fused", noise="rescheduled", carry_state=True)
        g.add("SaveLatent", samples=out(c), filename_prefix="bad_input/x")
    elif node == "TR_DDIMInvert":
        c = g.add(node, model=out(ck), positive=out(pos), negative=out(neg), latent=out(lat), steps=steps, cfg=1.0,
                  denoise=1.0, refine=0)
        g.add("SaveLatent", samples=out(c), filename_prefix="bad_input/x")
    else:
        s = g.add(node, model=out(ck), schedule="trailing", steps=steps, denoise=1.0, original_steps=50)
        c = g.add("SamplerCustom", model=out(ck), add_noise=True, noise_seed=0, cfg=1.0, positive=out(pos),
                  negative=out(neg), sampler=out(g.add("TR_DistilledSampler", eta=1.0, s_noise=1.0,
                                                       per_frame_noise=True)),
                  sigmas=out(s), latent_image=out(lat))
        g.add("SaveLatent", samples=out(c), filename_prefix="bad_input/x")
    msg = expect_error(server, tiny, g, "steps", node_type=None)
    assert str(steps) in msg


@pytest.mark.parametrize("node", ["TR_ILTChunker", "TR_DDIMInvert", "TR_DistilledSigmas"])
def test_negative_steps_through_a_link_refused_by_the_node(server, tiny, node):
    """A linked value skips the schema min: the node itself must refuse it (never silently do nothing)."""
    g = Graph()
    ck, pos, neg = model_and_prompts(g, tiny)
    lat = g.add("EmptyLatentImage", width=32, height=32, batch_size=2)
    steps = out(g.add("PrimitiveInt", value=-2))
    if node == "TR_ILTChunker":
        c = g.add(node, model=out(ck), positive=out(pos), negative=out(neg), latent=out(lat), seed=0, cfg=2.0,
                  sampler_name="euler", scheduler="normal", steps=steps, denoise=1.0, window=4, overlap=2,
                  mode="fused", noise="rescheduled", carry_state=True)
    elif node == "TR_DDIMInvert":
        c = g.add(node, model=out(ck), positive=out(pos), negative=out(neg), latent=out(lat), steps=steps, cfg=1.0,
                  denoise=1.0, refine=0)
    else:
        s = g.add(node, model=out(ck), schedule="trailing", steps=steps, denoise=1.0, original_steps=50)
        c = g.add("SamplerCustom", model=out(ck), add_noise=True, noise_seed=0, cfg=1.0, positive=out(pos),
                  negative=out(neg), sampler=out(g.add("TR_DistilledSampler", eta=1.0, s_noise=1.0,
                                                       per_frame_noise=True)),
                  sigmas=out(s), latent_image=out(lat))
    g.add("SaveLatent", samples=out(c), filename_prefix="bad_input/x")
    expect_error(server, tiny, g, "steps:", node_type=node)


# == 6. NaN / Inf input =====================================================================================
NONFINITE = ("nan", "inf", "finite")


@pytest.mark.parametrize("node", ["TR_ILTChunker", "TR_RecurrentRestore", "TR_DDIMInvert", "TR_TE3DVAEDecode"])
def test_nonfinite_latent_refused_by_pack_samplers(server, tiny, node):
    g = Graph()
    ck, pos, neg = model_and_prompts(g, tiny)
    img = clip(g, 3)
    lat = g.add("TRTest_CorruptLatent", samples=out(empty_latent(g, 3)), value="nan", frame=1)
    if node == "TR_ILTChunker":
        c = g.add(node, model=out(ck), positive=out(pos), negative=out(neg), latent=out(lat), seed=0, cfg=2.0,
                  sampler_name="euler", scheduler="normal", steps=2, denoise=0.5, window=2, overlap=1,
                  mode="fused", noise="rescheduled", carry_state=True)
        g.add("SaveLatent", samples=out(c), filename_prefix="bad_input/x")
        name = "latent"
    elif node == "TR_RecurrentRestore":
        _recurrent(g, ck, pos, neg, lat, img)
        name = "latent"
    elif node == "TR_DDIMInvert":
        c = g.add(node, model=out(ck), positive=out(pos), negative=out(neg), latent=out(lat), steps=2, cfg=1.0,
                  denoise=0.5, refine=0)
        g.add("SaveLatent", samples=out(c), filename_prefix="bad_input/x")
        name = "latent"
    else:
        d = g.add(node, samples=out(lat), vae=out(ck, 2), mode="te3d", chunk=2, overlap=1, kv_radius=1,
                  temporal_weights="")
        metrics(g, d)
        name = "samples"
    expect_error(server, tiny, g, name + ":", anyof=NONFINITE, node_type=node)


@pytest.mark.parametrize("node", ["TR_LatentWarp", "TR_TCGuidance"])
def test_nonfinite_latent_refused_by_x0_level_patches(server, tiny, node):
    """Post-CFG patches see every step's x0: a non-finite latent must stop sampling with an error naming it
    (attention-level patches are not asked to check: per-call checks on q/k/v would cost every block)."""
    g = Graph()
    ck, pos, neg = model_and_prompts(g, tiny)
    flow = g.add("TR_FlowEstimate", images=out(clip(g, 3)), backend="dis", dis_preset="ultrafast", raft_weights="",
                 keyframe_stride=0, grid="latent (1/8)")
    if node == "TR_LatentWarp":
        m = g.add(node, model=out(ck), flow=out(flow), fraction=1.0, batch_size=3, keyframe_mode="stride", seed=0,
                  strength=1.0)
    else:
        m = g.add(node, model=out(ck), flow=out(flow), scale=1.0, guidance_start=0.0, gamma=0.0)
    lat = g.add("TRTest_CorruptLatent", samples=out(empty_latent(g, 3)), value="inf", frame=1)
    ksampler(g, out(m), pos, neg, lat, denoise=0.5, prefix="bad_input/x")
    expect_error(server, tiny, g, "latent", anyof=NONFINITE)


@pytest.mark.parametrize("node,value", [("TR_FlowEstimate", "nan"), ("TR_VideoMetrics", "nan"),
                                        ("TR_VideoMetrics", "inf"), ("TR_Degrade", "-inf"),
                                        ("TR_RecurrentRestore", "nan")])
def test_nonfinite_images_refused(server, tiny, node, value):
    g = Graph()
    good = clip(g, 3)
    bad = g.add("TRTest_CorruptImage", images=out(good), value=value, frame=2)
    if node == "TR_FlowEstimate":
        f = g.add(node, images=out(bad), backend="dis", dis_preset="ultrafast", raft_weights="", keyframe_stride=0,
                  grid="full")
        metrics(g, good, flow=out(f))
        name = "images"
    elif node == "TR_VideoMetrics":
        metrics(g, bad, reference=out(good))
        name = "restored"
    elif node == "TR_Degrade":
        metrics(g, g.add(node, images=out(bad), task="denoise", strength=-1.0, seed=0))
        name = "images"
    else:
        ck, pos, neg = model_and_prompts(g, tiny)
        _recurrent(g, ck, pos, neg, empty_latent(g, 3), bad)
        name = "images"
    expect_error(server, tiny, g, name + ":", anyof=NONFINITE, node_type=node)


# == 7. model of the wrong family ===========================================================================
def test_ddim_invert_refuses_flow_matching_model(server, tiny):
    """ModelSamplingSD3 turns the tiny SD1.5 into a flow-matching (CONST) model: no DDIM inversion for it."""
    g = Graph()
    ck, pos, neg = model_and_prompts(g, tiny)
    m = g.add("ModelSamplingSD3", model=out(ck), shift=3.0)
    c = g.add("TR_DDIMInvert", model=out(m), positive=out(pos), negative=out(neg),
              latent=out(g.add("EmptyLatentImage", width=32, height=32, batch_size=2)), steps=2, cfg=1.0,
              denoise=1.0, refine=0)
    g.add("SaveLatent", samples=out(c), filename_prefix="bad_input/x")
    expect_error(server, tiny, g, "model:", node_type="TR_DDIMInvert")


def test_distilled_sigmas_refuses_flow_matching_model(server, tiny):
    g = Graph()
    ck, pos, neg = model_and_prompts(g, tiny)
    m = g.add("ModelSamplingSD3", model=out(ck), shift=3.0)
    s = g.add("TR_DistilledSigmas", model=out(m), schedule="trailing", steps=2, denoise=1.0, original_steps=50)
    g.add("PreviewAny", source=out(s))
    expect_error(server, tiny, g, "model:", node_type="TR_DistilledSigmas")


def test_swcfa_refuses_blocks_the_unet_does_not_have(server, tiny):
    g = Graph()
    ck, pos, neg = model_and_prompts(g, tiny)
    m = g.add("TR_SWCFAPatch", model=out(ck), mode="sw_cfa", radius=1, blocks="input:3; output:12")
    ksampler(g, out(m), pos, neg, g.add("EmptyLatentImage", width=32, height=32, batch_size=2), prefix="bad_input/x")
    expect_error(server, tiny, g, "blocks:", node_type="TR_SWCFAPatch")


# == 8. missing model and weight files ======================================================================
def test_missing_controlnet_name(server, tiny):
    g = Graph()
    ck, _, _ = model_and_prompts(g, tiny)
    tp = g.add("TR_TaskPromptControlNet", control_net_name="no_such_controlnet.safetensors", clip=out(ck, 1),
               image=out(clip(g, 2)), task="denoise", custom_prompt="", negative_prompt="", strength=1.0,
               start_percent=0.0, end_percent=1.0)
    lat = empty_latent(g, 2)
    ksampler(g, out(ck), tp, tp, lat, prefix="bad_input/x")
    g[str(len(g) - 1)]["inputs"]["negative"] = out(tp, 1)
    expect_error(server, tiny, g, "control_net_name", "no_such_controlnet")


def _raft(g, weights):
    c = clip(g, 2)
    f = g.add("TR_FlowEstimate", images=out(c), backend="raft", dis_preset="medium", raft_weights=weights,
              keyframe_stride=0, grid="full")
    metrics(g, c, flow=out(f))


def test_raft_weights_missing(server, tiny):
    g = Graph()
    _raft(g, "/nonexistent/raft_small.pth")
    expect_error(server, tiny, g, "raft_weights:", node_type="TR_FlowEstimate")


def test_raft_weights_garbage(server, tiny):
    path = os.path.join(server.base, "input", "garbage_raft.pth")
    with open(path, "wb") as f:
        f.write(os.urandom(4096))
    g = Graph()
    _raft(g, path)
    expect_error(server, tiny, g, "raft_weights:", node_type="TR_FlowEstimate")


@pytest.mark.parametrize("kind", ["missing", "garbage", "empty", "wrong_keys"])
def test_te3d_weights_bad_file(server, tiny, kind):
    path = os.path.join(server.base, "input", f"te3d_{kind}.safetensors")
    if kind == "garbage":
        with open(path, "wb") as f:
            f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00" + os.urandom(2048))
    elif kind == "empty":
        open(path, "wb").close()
    elif kind == "wrong_keys":
        safetensors.torch.save_file({"not.a.temporal.layer": torch.zeros(3)}, path)
    elif os.path.exists(path):
        os.remove(path)
    g = Graph()
    ck, _, _ = model_and_prompts(g, tiny)
    d = g.add("TR_TE3DVAEDecode", samples=out(empty_latent(g, 2)), vae=out(ck, 2), mode="te3d", chunk=2,
              overlap=0, kv_radius=1, temporal_weights=path)
    metrics(g, d)
    expect_error(server, tiny, g, "temporal_weights:", node_type="TR_TE3DVAEDecode")


# == 9. corrupt or empty video files ========================================================================
@pytest.mark.parametrize("kind", ["garbage", "empty", "truncated"])
def test_corrupt_video_file(server, tiny, sample_clip, kind):
    name = f"bad_{kind}.mp4"
    path = os.path.join(server.base, "input", name)
    if kind == "garbage":
        data = os.urandom(20000)
    elif kind == "empty":
        data = b""
    else:
        with open(sample_clip, "rb") as f:
            data = f.read()[:1500]  # header and the start of the first packet only
    with open(path, "wb") as f:
        f.write(data)
    g = Graph()
    v = g.add("LoadVideo", file=name)
    comp = g.add("GetVideoComponents", video=out(v))
    metrics(g, comp)
    expect_error(server, tiny, g, name)


# == 10. output paths that escape the output folder =========================================================
@pytest.mark.parametrize("prefix", ["../../etc/tr_escape", "/tmp/tr_escape_abs/x"])
def test_save_video_prefix_outside_output_folder(server, tiny, prefix):
    g = Graph()
    v = g.add("CreateVideo", images=out(clip(g, 2)), fps=8.0)
    g.add("TR_SaveVideo", video=out(v), filename_prefix=prefix, format="auto", codec="auto")
    expect_error(server, tiny, g, "filename_prefix:", node_type="TR_SaveVideo")
    assert not os.path.exists(os.path.join(paths.WORK, "etc"))
    assert not os.path.exists("/tmp/tr_escape_abs")


@pytest.mark.parametrize("prefix", ["../../etc/tr_escape", "/tmp/tr_escape_abs/x"])
def test_video_metrics_prefix_outside_output_folder(server, tiny, prefix):
    g = Graph()
    g.add("TR_VideoMetrics", restored=out(clip(g, 2)), window_starts="", filename_prefix=prefix)
    expect_error(server, tiny, g, "filename_prefix:", node_type="TR_VideoMetrics")
    assert not os.path.exists(os.path.join(paths.WORK, "etc"))
    assert not os.path.exists("/tmp/tr_escape_abs")


# == the fixture the workflow tests rely on =================================================================
def test_tiny_checkpoint_vae_encode_is_finite(server, tiny):
    """Workflow tests encode frames with the tiny checkpoint's VAE: Inf/NaN there makes every downstream
    check vacuous (and the pack's samplers currently accept non-finite latents silently)."""
    g = Graph()
    ck, _, _ = model_and_prompts(g, tiny)
    g.add("SaveLatent", samples=out(encode(g, ck, clip(g, 2))), filename_prefix="bad_input/vae")
    lat = latent_of(server, run_ok(server, tiny, g), "vae")
    assert torch.isfinite(lat).all(), ("VAEEncode with the tiny checkpoint returns Inf/NaN: tests/tiny_models.py "
                                       "_init_params zeroes TAESD's 0-d parameter vae_scale (encode divides by it)")
