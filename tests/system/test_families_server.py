"""The new bases through a real headless ComfyUI with the tiny builds (tests/tiny_families.py, registered in
the server by tests/comfy_test_nodes/tr_tiny_models):

* SD x4 upscaler video super-resolution, DiffVSR's setting: SD_4XUpscale_Conditioning (low-res frames
  concatenated, noise augmentation), SW-CFA, ILT chunks with rescheduled noise, TE-3D decode.
* SDXL tile-ControlNet restore with the temporal patches: latent warping, SW-CFA, token merging.
* One restore graph per ControlNet family (SD1.5, SD2.1-v, SDXL): the figures of the closing note
  (`pytest -s tests/system/test_families_server.py | grep FIGURES`).

Each graph's TR_VideoMetrics JSON is printed (pytest -s shows it) and checked for finite figures.
"""
from __future__ import annotations

import json
import math
import os

import pytest

from harness.fixtures import TINY_FAMILY_BUILDS, link_models
from harness.prompt import Graph, out

pytestmark = pytest.mark.server
FRAMES = 4


@pytest.fixture(scope="module")
def fam_server(server, tiny_by_family):
    names = {}
    for family, build in TINY_FAMILY_BUILDS.items():
        names[build] = tiny_by_family[family]
        link_models(server.base, names[build])
    return server, names


def _metrics(server, g, node):
    entry = server.run(g, timeout=900)
    text = entry["outputs"][node]["text"][0]
    m = json.loads(text)
    print(json.dumps(m, indent=None)[:600])
    return m


def _start(g, ckpt, size):
    """Synthetic clip, checkpoint and the two prompts: node ids (clip, checkpoint, positive, negative)."""
    clip = g.add("TR_SyntheticClip", image="astronaut", frames=FRAMES, width=size, height=size, motion="pan",
                 moving_object=False, seed=0)
    ck = g.add("CheckpointLoaderSimple", ckpt_name=ckpt)
    return clip, ck, g.add("CLIPTextEncode", text="a sharp photo", clip=out(ck, 1)), \
        g.add("CLIPTextEncode", text="blur", clip=out(ck, 1))


def _finite(m):
    vals = [v for v in m.values() if isinstance(v, (int, float))]
    return vals and all(math.isfinite(v) for v in vals)


def test_x4_upscaler_video_sr_through_the_server(fam_server):
    server, names = fam_server
    g = Graph()
    clip, ck, pos, neg = _start(g, names["x4"]["checkpoint"], 32)
    up = g.add("SD_4XUpscale_Conditioning", images=out(clip), positive=out(pos), negative=out(neg), scale_ratio=4.0,
               noise_augmentation=0.1)
    sw = g.add("TR_SWCFAPatch", model=out(ck), mode="sw_cfa", radius=1, blocks="all")
    ilt = g.add("TR_ILTChunker", model=out(sw), positive=out(up, 0), negative=out(up, 1), latent=out(up, 2), seed=0,
                cfg=4.0, sampler_name="euler", scheduler="normal", steps=2, denoise=1.0, window=2, overlap=1,
                mode="fused", noise="rescheduled", carry_state=True, boundary_kv=0)
    dec = g.add("TR_TE3DVAEDecode", samples=out(ilt), vae=out(ck, 2), mode="te3d", chunk=4, overlap=1, kv_radius=1,
                temporal_weights="")
    met = g.add("TR_VideoMetrics", restored=out(dec))
    m = _metrics(server, g, met)
    assert _finite(m)
    print("FIGURES sd_x4: " + ", ".join(f"{k} {m[k]:.4f}" for k in ("warping_error", "flicker") if k in m))


def test_sdxl_tile_controlnet_restore_through_the_server(fam_server):
    server, names = fam_server
    g = Graph()
    clip, ck, pos, neg = _start(g, names["sdxl"]["checkpoint"], 64)
    cn = g.add("ControlNetLoader", control_net_name=names["sdxl"]["controlnet"])
    ap = g.add("ControlNetApplyAdvanced", positive=out(pos), negative=out(neg), control_net=out(cn), image=out(clip),
               strength=1.0, start_percent=0.0, end_percent=1.0)
    flow = g.add("TR_FlowEstimate", images=out(clip), backend="dis", dis_preset="medium", raft_weights="",
                 keyframe_stride=8, grid="latent (1/8)")
    enc = g.add("VAEEncode", pixels=out(clip), vae=out(ck, 2))
    lw = g.add("TR_LatentWarp", model=out(ck), flow=out(flow), fraction=0.5, batch_size=4, keyframe_mode="random",
               seed=0, strength=1.0)
    sw = g.add("TR_SWCFAPatch", model=out(lw), mode="sw_cfa", radius=2, blocks="all")
    tm = g.add("TR_TokenMerge", model=out(sw), flow=out(flow), ratio=0.5, chunk_size=4, keyframe_mode="random",
               seed=0, anneal_start=0.0, anneal_end=1.0, delta=1.0, radius=4.0, down_blocks="flow",
               up_blocks="cosine", pad_bottom=0, pad_right=0)
    ks = g.add("KSampler", model=out(tm), positive=out(ap, 0), negative=out(ap, 1), latent_image=out(enc), seed=0,
               steps=2, cfg=4.0, sampler_name="euler", scheduler="normal", denoise=0.75)
    dec = g.add("VAEDecode", samples=out(ks), vae=out(ck, 2))
    met = g.add("TR_VideoMetrics", restored=out(dec), reference=out(clip, 0), flow=out(clip, 1))
    m = _metrics(server, g, met)
    assert _finite(m)


FIGURE_KEYS = ("warping_error", "flicker", "psnr", "psnr_degraded")


@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl"])
def test_restore_figures_per_family(fam_server, tiny_by_family, family):
    """One restore graph per family through the server, on the tiny build of that family with its ControlNet
    (SD1.5, SD2.1-768-v, SDXL): a synthetic pan degraded with noise, the ControlNet on the degraded frames,
    latent warping + SW-CFA, decoded and measured against the clean clip with its true flow. Prints one line
    `FIGURES <family>` per run (pytest -s) with the restored clip's warping error and flicker beside the same
    sampler's without the patches and the degraded input's (random tiny weights: the figures show the path
    runs and measures on each family, not restoration quality)."""
    server, _ = fam_server
    info = tiny_by_family[family]
    link_models(server.base, info)
    g = Graph()
    clip, ck, pos, neg = _start(g, info["checkpoint"], 64)
    deg = g.add("TR_Degrade", images=out(clip), task="denoise", strength=-1.0, seed=0)
    cn = g.add("ControlNetLoader", control_net_name=info["controlnet"])
    ap = g.add("ControlNetApplyAdvanced", positive=out(pos), negative=out(neg), control_net=out(cn), image=out(deg),
               strength=1.0, start_percent=0.0, end_percent=1.0)
    flow = g.add("TR_FlowEstimate", images=out(deg), backend="dis", dis_preset="medium", raft_weights="",
                 keyframe_stride=8, grid="latent (1/8)")
    lw = g.add("TR_LatentWarp", model=out(ck), flow=out(flow), fraction=0.5, batch_size=FRAMES,
               keyframe_mode="middle", seed=0, strength=1.0)
    sw = g.add("TR_SWCFAPatch", model=out(lw), mode="sw_cfa", radius=2, blocks="all")
    enc = g.add("VAEEncode", pixels=out(deg), vae=out(ck, 2))
    ks = g.add("KSampler", model=out(sw), positive=out(ap, 0), negative=out(ap, 1), latent_image=out(enc), seed=0,
               steps=2, cfg=4.0, sampler_name="euler", scheduler="normal", denoise=0.6)
    dec = g.add("VAEDecode", samples=out(ks), vae=out(ck, 2))
    met = g.add("TR_VideoMetrics", restored=out(dec), reference=out(clip, 0), degraded=out(deg), flow=out(clip, 1))
    base = g.add("TR_VideoMetrics", restored=out(deg), reference=out(clip, 0), flow=out(clip, 1))
    ks0 = g.add("KSampler", model=out(ck), positive=out(ap, 0), negative=out(ap, 1), latent_image=out(enc), seed=0,
                steps=2, cfg=4.0, sampler_name="euler", scheduler="normal", denoise=0.6)  # no temporal patches
    plain = g.add("TR_VideoMetrics", restored=out(g.add("VAEDecode", samples=out(ks0), vae=out(ck, 2))),
                  reference=out(clip, 0), flow=out(clip, 1))
    entry = server.run(g, timeout=900)
    restored, degraded, unpatched = (json.loads(entry["outputs"][n]["text"][0]) for n in (met, base, plain))
    assert _finite(restored) and _finite(degraded) and _finite(unpatched)
    short = ("warping_error", "flicker")
    print(f"FIGURES {family}: restored " + ", ".join(f"{k} {restored[k]:.4f}" for k in FIGURE_KEYS if k in restored)
          + " | same sampler without the patches " + ", ".join(f"{k} {unpatched[k]:.4f}" for k in short)
          + " | degraded input " + ", ".join(f"{k} {degraded[k]:.4f}" for k in short))
    assert restored != unpatched, "the temporal patches changed nothing"
