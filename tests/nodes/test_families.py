"""Every model family the pack supports, on tiny real-architecture builds loaded through ComfyUI's own
detection (tests/tiny_families.py; SD1.5 from tests/tiny_models.py): SD1.5, SD2.1-768-v, SDXL and the
SD x4 upscaler. Attention-patch invariants per family (radius / ratio 0 == stock, identical frames ==
stock, cond and uncond never mixed, every transformer_index of a block reached), the nodes that work
on each family run there, the ones that do not refuse with a message naming the family."""
from __future__ import annotations

import pytest
import torch

FRAMES, LAT = 3, 16
FAMILIES = ("sd15", "sd2", "sdxl", "sd_x4")


@pytest.fixture(scope="module")
def fam(tiny_by_family):
    """{family: {"model", "clip", "vae", "pos", "neg", "controlnet"?}} loaded with the stock loader."""
    import comfy.controlnet
    import comfy.sd
    import tiny_families

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tiny_families.register()
    out = {}
    for family in FAMILIES:
        info = dict(tiny_by_family[family])
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(info["checkpoint_path"])
        d = {"model": model, "clip": clip, "vae": vae, "info": info}
        if info.get("controlnet_path"):
            d["controlnet"] = comfy.controlnet.load_controlnet(info["controlnet_path"])
        out[family] = d
    yield out
    torch.set_num_threads(threads)


def _conds(d, family, image, text="a clean photo", aug=0.1):
    """CONDITIONING pair for ``family``; the x4 upscaler's carry the low-res frames ``image [T,3,H,W]``
    in -1..1 and a noise augmentation ``aug``, as SD_4XUpscale_Conditioning builds them (the augmentation
    noise differs per frame: identical-frame checks use ``aug=0``)."""
    clip = d["clip"]
    out = []
    for t in (text, ""):
        cond, pooled = clip.encode_from_tokens(clip.tokenize(t), return_pooled=True)
        extra = {"pooled_output": pooled}
        if family == "sd_x4":
            extra.update(concat_image=image, noise_augmentation=aug)
        out.append([[cond, extra]])
    return out


def _inputs(identical=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = 1 if identical else FRAMES
    lat = torch.randn(n, 4, LAT, LAT, generator=g).repeat(FRAMES // n, 1, 1, 1)
    noise = torch.randn(n, 4, LAT, LAT, generator=g).repeat(FRAMES // n, 1, 1, 1)
    image = (torch.rand(n, 3, LAT, LAT, generator=g) * 2 - 1).repeat(FRAMES // n, 1, 1, 1)
    return lat, noise, image


def _sample(model, d, family, identical=False, steps=2, cfg=2.0):
    import comfy.sample

    lat, noise, image = _inputs(identical)
    pos, neg = _conds(d, family, image, aug=0.0 if identical else 0.1)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", pos, neg, lat, denoise=1.0, seed=0,
                               disable_pbar=True)


def _mods():
    from temporal_restore.nodes import _checks, distilled, slr_attention, sw_cfa, token_merge

    return _checks, sw_cfa, slr_attention, token_merge, distilled


def _close(a, b, rel=1e-5):
    return (a - b).abs().max().item() <= rel * max(b.abs().max().item(), 1.0)


class Recorder:
    """Wraps an installed attn1 replace patch: records each call's extra_options (block, index, ...)."""

    def __init__(self, inner, calls):
        self.inner, self.calls = inner, calls

    def __call__(self, q, k, v, extra_options, *args, **kwargs):
        self.calls.append({"block": tuple(extra_options["block"]), "t": extra_options["block_index"],
                           "eo": dict(extra_options), "shape": tuple(q.shape), "k_tokens": k.shape[1]})
        return self.inner(q, k, v, extra_options, *args, **kwargs)


def _record(m):
    calls = []
    reps = m.model_options["transformer_options"]["patches_replace"]["attn1"]
    for key in list(reps):
        reps[key] = Recorder(reps[key], calls)
    return calls


def _self_attn_transformers(model):
    """{(block name, number, transformer index)} of every attn1 that is a self-attention."""
    from comfy.ldm.modules.attention import SpatialTransformer

    unet = model.get_model_object("diffusion_model")
    out = set()
    for name, seq in (("input", unet.input_blocks), ("middle", [unet.middle_block]), ("output", unet.output_blocks)):
        for i, blk in enumerate(seq):
            for m in blk.modules():
                if isinstance(m, SpatialTransformer):
                    out |= {(name, i, t) for t, tb in enumerate(m.transformer_blocks) if not tb.disable_self_attn}
    return out


# ------------------------------------------------------------------------------------------ the builds
def test_builds_load_as_the_real_families(fam):
    import comfy.model_base as mb
    import comfy.supported_models as sm

    checks = _mods()[0]
    expect = {"sd15": (sm.SD15, mb.BaseModel, mb.ModelType.EPS), "sd2": (sm.SD20, mb.BaseModel, mb.ModelType.V_PREDICTION),
              "sdxl": (sm.SDXL, mb.SDXL, mb.ModelType.EPS), "sd_x4": (sm.SD_X4Upscaler, mb.SD_X4Upscaler,
                                                                    mb.ModelType.V_PREDICTION)}
    for family, (cfg_cls, base_cls, mtype) in expect.items():
        model = fam[family]["model"]
        assert isinstance(model.model.model_config, cfg_cls) and type(model.model) is base_cls, family
        assert model.model.model_type == mtype, family
        assert checks.model_family(model) == family
        for name, p in model.model.diffusion_model.named_parameters():  # every parameter initialised
            assert torch.isfinite(p).all() and (p.numel() == 1 or p.float().std() > 0 or p.abs().sum() > 0
                                                or name.endswith("bias")), (family, name)
    unet = {f: fam[f]["model"].model.diffusion_model for f in FAMILIES}
    assert unet["sd2"].input_blocks[1][1].transformer_blocks[0].attn2.to_k.weight.shape[1] == 96  # OpenCLIP-H-like
    assert unet["sd2"].input_blocks[1][1].transformer_blocks[0].attn1.heads == 2  # 32 channels / 16 per head
    assert len(unet["sdxl"].input_blocks) == 9 and len(unet["sdxl"].input_blocks[7][1].transformer_blocks) == 3
    assert unet["sdxl"].label_emb[0][0].in_features == 96 + 6 * 256  # pooled bigG + size embeddings
    assert fam["sdxl"]["clip"].cond_stage_model.clip_l is not None and fam["sdxl"]["clip"].cond_stage_model.clip_g is not None
    assert unet["sd_x4"].input_blocks[0][0].in_channels == 7 and unet["sd_x4"].num_classes == 1000
    assert {n for n, _, _ in _self_attn_transformers(fam["sd_x4"]["model"])} == {"input", "middle", "output"}
    assert all(i >= 7 for n, i, _ in _self_attn_transformers(fam["sd_x4"]["model"]) if n == "input")
    for family in ("sd2", "sdxl"):
        assert type(fam[family]["controlnet"].control_model).__name__ == "ControlNet"


def test_latent_previews_use_each_familys_own_factors(fam):
    """SLR trajectories and TC guidance preview x0 with the model's latent -> RGB factors, not SD1.5's."""
    from temporal_restore.nodes._zvrd import rgb_factors

    got = {f: rgb_factors(fam[f]["model"]) for f in FAMILIES}
    for f in FAMILIES:
        assert got[f][0] == fam[f]["model"].get_model_object("latent_format").latent_rgb_factors, f
    assert got["sdxl"][0] != got["sd15"][0] and got["sd_x4"][0] != got["sd15"][0]
    assert got["sdxl"][1] is not None  # SDXL's factors come with a bias


# --------------------------------------------------------------------------------------------- SW-CFA
@pytest.mark.parametrize("family", FAMILIES)
def test_swcfa_per_family(fam, family):
    _, sw, *_ = _mods()
    d = fam[family]
    model = d["model"]
    base = _sample(model, d, family)
    zero = sw.install_sw_cfa(model, "sw_cfa", 0)
    assert _close(_sample(zero, d, family), base)
    m = sw.install_sw_cfa(model, "sw_cfa", 2)
    calls = _record(m)
    out = _sample(m, d, family)
    assert (out - base).abs().max().item() > 1e-4
    seen = {(c["block"][0], c["block"][1], c["t"]) for c in calls}
    assert seen == _self_attn_transformers(model)  # every transformer_index reached, never a text attn1
    assert all(c["k_tokens"] == c["shape"][1] for c in calls)
    if family == "sdxl":
        assert max(t for *_, t in seen) == 2
    assert _close(_sample(m, d, family, identical=True), _sample(model, d, family, identical=True), 1e-4)
    # cond and uncond never mixed: changing the uncond chunk leaves the cond chunk's output unchanged
    call = max(calls, key=lambda c: c["shape"][1])
    eo = call["eo"]
    cu = list(eo["cond_or_uncond"])
    assert len(cu) == 2
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(call["shape"], generator=g) for _ in range(3))
    patch = sw.SWCFAAttention("sw_cfa", 2)
    a = patch(q, k, v, eo)
    u = cu.index(0)
    sl = slice(u * FRAMES, (u + 1) * FRAMES)
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    for t in (q2, k2, v2):
        t[sl] += 1.0
    b = patch(q2, k2, v2, eo)
    c = slice((1 - u) * FRAMES, (2 - u) * FRAMES)
    assert torch.equal(a[c], b[c]) and not torch.equal(a[sl], b[sl])


# ------------------------------------------------------------------------------------------------ SLR
@pytest.mark.parametrize("family", FAMILIES)
def test_slr_per_family(fam, family):
    _, _, slr, *_ = _mods()
    d = fam[family]
    model = d["model"]
    blocks, largest = slr.decoder_attn1(model)
    assert {("output", b, t) for b, t in blocks} == {k for k in _self_attn_transformers(model) if k[0] == "output"}
    assert largest
    m, state = slr.install_slr(model, trajectory_start=1.0)
    assert _close(_sample(m, d, family, identical=True, steps=3), _sample(model, d, family, identical=True, steps=3))
    assert state.trajectory_calls == 0
    m, state = slr.install_slr(model, trajectory_start=0.3)
    out = _sample(m, d, family, steps=3)
    assert state.trajectory_calls > 0 and torch.isfinite(out).all()
    assert (out - _sample(model, d, family, steps=3)).abs().max().item() > 1e-4


# ----------------------------------------------------------------------------------------- Token merge
@pytest.mark.parametrize("family", FAMILIES)
def test_token_merge_per_family(fam, family):
    _, _, _, tmn, _ = _mods()
    d = fam[family]
    model = d["model"]
    base = _sample(model, d, family)
    zero = tmn.install_token_merge(model, tmn.TokenMergeConfig(ratio=0.0, levels="all"))
    assert torch.equal(_sample(zero, d, family), base)
    m = tmn.install_token_merge(model, tmn.TokenMergeConfig(ratio=0.5, levels="all", chunk_size=FRAMES))
    out = _sample(m, d, family)
    assert torch.isfinite(out).all() and (out - base).abs().max().item() > 1e-4
    # ratio 1 at every step (no annealing): only the keyframe's tokens are left, lossless for identical frames
    full = tmn.install_token_merge(model, tmn.TokenMergeConfig(ratio=1.0, chunk_size=FRAMES, anneal_end=0.0,
                                                               down_blocks="cosine"))
    assert _close(_sample(full, d, family, identical=True), _sample(model, d, family, identical=True), 1e-4)


# ------------------------------------------------------------------- pixel sizes on each latent grid
def test_pixel_inputs_and_flow_follow_each_familys_latent_grid(fam, caplog):
    """Token-merge padding (pixels) becomes latent rows at the family's factor (8 for the 8x VAEs, 1 for the
    x4 upscaler, whose latent is the low-res frames' grid): 4 px of padding is refused on SD1.5 (half a latent
    row) and excludes 4 rows on the x4 build, changing what is merged. A flow estimated on the x4's low-res
    frames with grid 'full' is on its latent grid; the 1/8 grid is 8x coarser and the patch says so."""
    import logging

    from temporal_restore.nodes import flow as flow_node
    from temporal_restore.nodes import latent_warp

    checks, _, _, tmn, _ = _mods()
    assert {f: checks.latent_factor(fam[f]["model"], "TR_X") for f in FAMILIES} == \
        {"sd15": 8, "sd2": 8, "sdxl": 8, "sd_x4": 1}
    args = dict(ratio=0.5, chunk_size=FRAMES, keyframe_mode="middle", seed=0, anneal_start=0.0, anneal_end=0.0,
                delta=1.0, radius=4.0, down_blocks="cosine", up_blocks="cosine", levels="all")
    with pytest.raises(ValueError, match=r"^pad_bottom: expected a multiple of 8 pixels"):
        tmn.TokenMerge.execute(fam["sd15"]["model"], None, pad_bottom=4, **args)
    d = fam["sd_x4"]
    outs = [_sample(tmn.TokenMerge.execute(d["model"], None, pad_bottom=p, **args).result[0], d, "sd_x4")
            for p in (0, 4)]
    assert (outs[0] - outs[1]).abs().max().item() > 1e-4, "4 px of x4 padding (4 latent rows) changed nothing"

    _, _, image = _inputs()
    frames = ((image + 1) / 2).movedim(1, -1).contiguous()  # the low-res frames [T, 16, 16, 3] the x4 conditions on
    for grid, warned in (("full", False), ("latent (1/8)", True)):
        flow = flow_node.FlowEstimate.execute(frames, "dis", "medium", "", 8, grid).result[0]
        assert (flow.height, flow.width) == ((LAT, LAT) if grid == "full" else (LAT // 8, LAT // 8))
        caplog.clear()
        m = latent_warp.install_latent_warp(d["model"], latent_warp.LatentWarpConfig(flow, 0.5, FRAMES, "middle", 0, 1.0))
        with caplog.at_level(logging.WARNING, logger="temporal_restore"):
            out = _sample(m, d, "sd_x4")
        assert torch.isfinite(out).all()
        said = any("coarser than the" in r.getMessage() and "'full'" in r.getMessage() for r in caplog.records)
        assert said == warned, (grid, [r.getMessage() for r in caplog.records])


# ---------------------------------------------------------------------------------- nodes and refusals
def test_family_refusals_name_the_family_and_what_is_supported(fam):
    checks, _, _, _, distilled = _mods()
    with pytest.raises(ValueError, match=r"^model: TR_DistilledSigmas supports SD1\.5, SD2\.x, SDXL models; "
                                         r"got a SD x4 upscaler model"):
        distilled.DistilledSigmas.execute(fam["sd_x4"]["model"], "trailing", 4, 1.0)
    for family in ("sd15", "sd2", "sdxl"):
        sig = distilled.DistilledSigmas.execute(fam[family]["model"], "trailing", 4, 1.0).result[0]
        assert sig.shape == (5,) and sig[0] > sig[1] > 0 and sig[-1] == 0
    with pytest.raises(ValueError, match=r"^model: TR_X supports SD1\.5 models; got a SDXL model$"):
        checks.check_family(fam["sdxl"]["model"], ("sd15",), "TR_X")
    with pytest.raises(ValueError, match="^model: expected a diffusion MODEL"):
        checks.model_family(fam["sdxl"]["vae"])


@pytest.mark.parametrize("family", FAMILIES)
def test_generic_nodes_run_on_every_family(fam, family):
    """Latent warping, TC guidance, DDIM inversion + restore and the ILT chunker on each family (these
    read nothing family-specific: latents, schedules and conditioning come from the model)."""
    from temporal_restore.nodes import ddim_invert, ilt, latent_warp, tc_guidance

    d = fam[family]
    lat, noise, image = _inputs()
    pos, neg = _conds(d, family, image)
    m = latent_warp.install_latent_warp(d["model"], latent_warp.LatentWarpConfig(None, 0.5, FRAMES, "middle", 0, 1.0))
    m = tc_guidance.install_tc_guidance(m, 0.1, 0.0)[0]
    inv = ddim_invert.DDIMInvert.execute(m, pos, neg, {"samples": lat}, 3, 1.0, 1.0).result[0]
    back = ddim_invert.DDIMRestore.execute(d["model"], pos, neg, inv, 3, 1.0).result[0]["samples"]
    assert back.shape == lat.shape and torch.isfinite(back).all()
    win = ilt.ILTChunker.execute(m, pos, neg, {"samples": lat}, 0, 2.0, "euler", "normal", 2, 1.0, 2, 1,
                                 "post", "rescheduled", False).result[0]["samples"]
    assert win.shape == lat.shape and torch.isfinite(win).all()


# ------------------------------------------------------------------------------------ bf16 / fp16 UNet
#: max |low - fp32| of the sampled latents (3 euler steps) relative to max |fp32| for SW-CFA and SLR (printed by
#: the test, pytest -s; measured on CPU, torch 2.14: bf16 at most 4.3e-3, fp16 at most 4.8e-4)
LOW_TOL = {torch.bfloat16: 0.02, torch.float16: 0.002}
#: token merging matches tokens by argmax (near-ties flip between dtypes): measured at most 1.95e-2 (bf16), 1.75e-2 (fp16)
MATCH_TOL = 0.05


@pytest.mark.parametrize("family,dtype", [("sd2", torch.bfloat16), ("sdxl", torch.bfloat16),
                                          ("sd15", torch.float16), ("sd2", torch.float16)],
                         ids=["sd2-bf16", "sdxl-bf16", "sd15-fp16", "sd2-fp16"])
def test_patches_run_in_low_precision_like_on_a_gpu(fam, family, dtype):
    """The whole UNet in bf16 / fp16 end to end (weights and compute: what ComfyUI does on a GPU; on the CPU
    it would cast to fp32, so the test turns that cast off; CPU torch runs every UNet op in fp16): the
    attention patches get q/k/v in that dtype, return it (no upcast), and the sampled latents stay within
    LOW_TOL (SW-CFA, SLR) / MATCH_TOL (token merging) of the fp32 run."""
    import comfy.sd

    _, sw, slr, tmn, _ = _mods()
    d = fam[family]
    low = comfy.sd.load_checkpoint_guess_config(d["info"]["checkpoint_path"], output_vae=False, output_clip=False,
                                                model_options={"dtype": dtype})[0]
    low.model.manual_cast_dtype = None
    assert next(low.model.diffusion_model.parameters()).dtype == dtype
    patches = {"sw_cfa": lambda m: sw.install_sw_cfa(m, "sw_cfa", 2),
               "slr": lambda m: slr.install_slr(m, trajectory_start=1.0)[0],
               # trajectories pick displacements by argmax (discrete: near-ties flip them): dtype only
               "slr_trajectories": lambda m: slr.install_slr(m, trajectory_start=0.3)[0],
               "token_merge": lambda m: tmn.install_token_merge(m, tmn.TokenMergeConfig(ratio=0.5, chunk_size=FRAMES))}
    for name, install in patches.items():
        m = install(low)
        calls = []
        if name != "token_merge":
            for key, p in list(m.model_options["transformer_options"]["patches_replace"]["attn1"].items()):
                m.model_options["transformer_options"]["patches_replace"]["attn1"][key] = DtypeRecorder(p, calls)
        out = _sample(m, d, family, steps=3)
        ref = _sample(install(d["model"]), d, family, steps=3)
        assert torch.isfinite(out).all(), name
        err = (out.float() - ref).abs().max().item() / ref.abs().max().item()
        print(f"{family} {dtype} {name}: max |low - fp32| / max |fp32| = {err:.2e}")
        if name != "slr_trajectories":
            assert err <= (MATCH_TOL if name == "token_merge" else LOW_TOL[dtype]), (name, err)
        if name != "token_merge":
            assert calls and all(c == (dtype, dtype) for c in calls), (name, set(calls))


class DtypeRecorder:
    def __init__(self, inner, calls):
        self.inner, self.calls = inner, calls

    def __call__(self, q, k, v, extra_options, *args, **kwargs):
        out = self.inner(q, k, v, extra_options, *args, **kwargs)
        self.calls.append((q.dtype, out.dtype))
        return out


@pytest.mark.parametrize("family", FAMILIES)
def test_recurrent_restore_runs_on_every_family(fam, family):
    """TR_RecurrentRestore frame by frame with the distilled sampler; its ControlNet path with the
    family's ControlNet where one exists (SD1.5, SD2.1, SDXL). The x4 upscaler's frames are its
    low-resolution input (latent grid = pixel grid); the others' are 8x the latent."""
    import comfy.samplers
    from temporal_restore.nodes import distilled, recurrent_restore

    d = fam[family]
    lat, _, image = _inputs()
    pos, neg = _conds(d, family, image)
    scale = 1 if family == "sd_x4" else 8
    frames = torch.rand(FRAMES, LAT * scale, LAT * scale, 3, generator=torch.Generator().manual_seed(3))
    sampler = distilled.DistilledSampler.execute(1.0, 1.0, True).result[0]
    sigmas = comfy.samplers.calculate_sigmas(d["model"].get_model_object("model_sampling"), "normal", 2).cpu()
    cn = d.get("controlnet")
    res = recurrent_restore.RecurrentRestore.execute(
        d["model"], pos, neg, sampler, sigmas[1:], {"samples": lat}, frames, 0, 1.5, 0.5, 0.1, 1.0, 1, 1.0,
        control_net=cn, vae=d["vae"] if cn is not None else None).result[0]["samples"]
    assert res.shape == lat.shape and torch.isfinite(res).all()
