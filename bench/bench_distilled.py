"""Few-step recurrent restore vs the TDM default, measured side by side in one run.

Same tiny SD1.5-shaped model + tiny ControlNet (tests/tiny_models.py), same clip (the first frames of
samples/sample_clip.mp4, or a synthetic pan if it is missing), same conditioning:

* **fast**: TR_RecurrentRestore (``nodes.recurrent_restore.recurrent_sample``) with TR_DistilledSampler
  (eta 1) + TR_DistilledSigmas (trailing, 4 steps, denoise 0.5), strength 0.5, ControlNet hint from the
  aligned decoded previous frame, DIS flow estimated per pair inside (all counted).
* **TDM default**: TR_DDIMInvert (10 steps) + TR_DDIMRestore (32 steps) on the whole clip, ControlNet hint
  = the frames (ControlNetApplyAdvanced), no SW-CFA (it would only make TDM slower).
* **fast, group G**: the same with ``group=G`` (G frames per sampler call, aligned to the previous
  group's last frame).
* **fast + NoiseShare**: the per-frame fast pipeline with TR_NoiseShare noise (shared, flow-blended
  initial noise; its flow estimation is counted) and TR_NoiseShareSampler around TR_DistilledSampler.
* **per-frame 4-step**: the fast pipeline with strength 0 (plain per-frame sampling, no alignment).

Prints: end-to-end time ratio fast / TDM (target <= 1/8) and the warping error (E_warp, flow measured on
the input clip, occluded pixels excluded) of fast vs per-frame 4-step, in latent space and after VAE
decoding. Runs are interleaved round-robin, medians reported.

Caveat: the tiny models are random, so E_warp measures the temporal consistency of the outputs,
not restoration quality. The tiny VAE's encoder overflows on real frames, so the latent is a
deterministic 8x8 area-pooled image (4 channels); the VAE is still used to decode (hint + metric).

    .venv/bin/python bench/bench_distilled.py [--frames 8] [--repeats 2] [--cfg 1.0] [--group 4] [--threads 1] [--scale 4]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _comfy  # noqa: E402

REPO, COMFY = _comfy.REPO, _comfy.COMFY
SAMPLE = os.path.join(REPO, "samples", "sample_clip.mp4")


def _setup():
    _comfy.setup()


def _clip(frames: int):
    import numpy as np
    import torch

    if os.path.exists(SAMPLE):
        import av

        out = []
        with av.open(SAMPLE) as c:
            for fr in c.decode(c.streams.video[0]):
                out.append(torch.from_numpy(fr.to_ndarray(format="rgb24").astype(np.float32) / 255.0))
                if len(out) == frames:
                    break
        return torch.stack(out), "samples/sample_clip.mp4"
    S = 64
    yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S + 3 * frames), indexing="ij")
    tex = torch.stack([torch.sin(xx * 0.21 + yy * 0.05), torch.cos(yy * 0.17), torch.sin((xx + yy) * 0.11)], -1)
    return torch.stack([tex[:, 3 * t:3 * t + S] * 0.5 + 0.5 for t in range(frames)]), "synthetic pan"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cfg", type=float, default=1.0, help="guidance for every pipeline (TDM default is 1.0)")
    ap.add_argument("--strength", type=float, default=0.8, help="alignment strength (workflow value 0.8)")
    ap.add_argument("--model", choices=["tiny", "demo"], default="tiny",
                    help="tiny: random tiny SD1.5 (tests/tiny_models.py); demo: the pack's trained demo restorer "
                         "(models/demo/, if present) on a degraded clip, so E_warp / PSNR are meaningful")
    ap.add_argument("--task", default="denoise", help="demo model: degradation applied to the clip (pipelines.degrade)")
    ap.add_argument("--eta", type=float, default=1.0, help="TR_DistilledSampler eta (1 consistency, 0 DDIM)")
    ap.add_argument("--denoise", type=float, default=0.5, help="TR_DistilledSigmas denoise of the fast pipeline")
    ap.add_argument("--hint", choices=["aligned", "degraded"], default="aligned",
                    help="ControlNet hint of the fast pipeline: aligned decoded previous frame (VAE decode per "
                         "frame) or the degraded frame (no decode)")
    ap.add_argument("--group", type=int, default=4, help="group size of the grouped fast configuration")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest on a shared host)")
    ap.add_argument("--scale", type=int, default=1,
                    help="upscale the clip by this factor first (bicubic): at 128x96 the tiny UNet is so cheap that "
                         "per-call overhead dominates; 4 gives SD1.5's 512x384, where the UNet work dominates")
    a = ap.parse_args()
    _setup()
    import torch

    torch.set_num_threads(max(1, a.threads))
    import comfy.controlnet
    import comfy.sd
    import nodes as comfy_nodes
    import tiny_models

    from temporal_restore.nodes import ddim_invert, distilled as nd, recurrent_restore as nr
    from temporal_restore.pipelines import flow as fl
    from temporal_restore.pipelines import metrics

    clean, source = _clip(a.frames)
    if a.scale > 1:
        clean = torch.nn.functional.interpolate(clean.permute(0, 3, 1, 2), scale_factor=a.scale, mode="bicubic",
                                                align_corners=False).clamp(0, 1).permute(0, 2, 3, 1).contiguous()
        source += f" x{a.scale}"
    if a.model == "demo":
        from temporal_restore.nodes import _demo_arch
        from temporal_restore.pipelines import degrade

        model, clip, vae, cn = _demo_arch.load_demo(_demo_arch.DEMO_DIR)
        frames = degrade.degrade(clean, a.task, seed=0)
        prompt, negative = a.task, ""
    else:
        tiny_models.register()
        paths = tiny_models.build(os.path.join(tempfile.gettempdir(), "tr_bench_models"))
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(paths["checkpoint_path"], output_vae=True,
                                                                    output_clip=True)
        cn = comfy.controlnet.load_controlnet(paths["controlnet_path"])
        frames = clean
        prompt, negative = "a clean, sharp, detailed photo", "noise, blur"
    enc = lambda t: clip.encode_from_tokens_scheduled(clip.tokenize(t))  # noqa: E731
    pos, neg = enc(prompt), enc(negative)
    T, H, W, _ = frames.shape
    if a.model == "demo":
        with torch.inference_mode():
            latent = vae.encode(frames).float()
        lat_note = "VAE-encoded"
    else:  # the random tiny VAE's encoder overflows on real frames
        x = torch.nn.functional.avg_pool2d(frames.permute(0, 3, 1, 2), 8) * 2 - 1
        latent = torch.cat([x, x.mean(1, keepdim=True)], 1).contiguous()
        lat_note = "8x8 area-pooled frames (tiny VAE encoder overflows)"
    flow = fl.estimate_flow(clean)  # metric only, on the clean clip (the fast pipeline estimates its own, timed)

    sampler = nd.DistilledSampler.execute(a.eta, 1.0, True).args[0]
    sigmas = nd.distilled_sigmas(model, "trailing", 4, a.denoise, 50)

    from temporal_restore.nodes import noise_share as nns
    from temporal_restore.pipelines import noise_share as nsh

    def fast(strength, group=1, shared=False):
        def go():
            smp, noise = sampler, None
            if shared:  # TR_NoiseShare (flow-blended initial noise) + TR_NoiseShareSampler (step noise)
                share = nsh.NoiseShare(0, fl.estimate_flow(frames, out_size=tuple(latent.shape[-2:])))
                smp, noise = nns.NoiseShareSampler(sampler, share), nns.SharedNoise(share)
            with torch.inference_mode():
                return nr.recurrent_sample(model, pos, neg, smp, sigmas, {"samples": latent}, frames, 0, a.cfg,
                                           strength, control_net=cn, vae=vae if a.hint == "aligned" else None,
                                           group=group, noise=noise)[0]["samples"]
        return go

    def tdm():
        with torch.inference_mode():
            p, n = comfy_nodes.ControlNetApplyAdvanced().apply_controlnet(pos, neg, cn, frames, 1.0, 0.0, 1.0, vae=vae)
            inv = ddim_invert.invert(model, p, n, {"samples": latent}, 10, a.cfg, 1.0, 0)
            return ddim_invert.restore(model, p, n, inv, 32, a.cfg)["samples"]

    G = a.group
    configs = {"fast (recurrent, 4-step)": fast(a.strength), f"fast, group {G}": fast(a.strength, G),
               "fast + NoiseShare": fast(a.strength, shared=True),
               f"fast, group {G} + NoiseShare": fast(a.strength, G, shared=True),
               "per-frame 4-step (s=0)": fast(0.0), "TDM default (10 inv + 32)": tdm}
    with torch.inference_mode():  # warm-up: load the models once (first-call costs)
        comfy_nodes.common_ksampler(model, 0, 1, 1.0, "euler", "simple", pos, neg, {"samples": latent[:1]}, denoise=0.5)
        vae.decode(latent[:1])
    outs = {}
    times = {k: [] for k in configs}
    for _ in range(a.repeats):
        for k, fn in configs.items():
            t = time.perf_counter()
            outs[k] = fn()
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}

    lat_flow = flow.resized(latent.shape[-2], latent.shape[-1])

    def ewarp_latent(z):
        warped = fl.warp(z[:-1].float(), lat_flow.backward)
        m = 1.0 - lat_flow.occlusion_bwd
        return float(((warped - z[1:]).abs().mean(1, keepdim=True) * m).sum() / m.sum().clamp_min(1))

    decoded = {}

    def image(z):
        if id(z) not in decoded:
            with torch.inference_mode():
                decoded[id(z)] = vae.decode(z).reshape(T, H, W, 3).float().clamp(0, 1)
        return decoded[id(z)]

    def ewarp_image(z):
        img = image(z)
        if float(img.std()) < 1e-6:
            return float("nan")  # the random tiny VAE decodes these latents to a constant image
        return metrics.warping_error(img, flow=flow)

    what = f"demo restorer, task {a.task}" if a.model == "demo" else "random tiny SD1.5 + ControlNet"
    print(f"{what}, {T} frames {W}x{H} ({source}), latent: {lat_note}, cfg {a.cfg}, eta {a.eta}, "
          f"denoise {a.denoise}, strength {a.strength}, hint {a.hint}, median of {a.repeats} "
          f"interleaved runs, torch threads {torch.get_num_threads()}")
    base = med["TDM default (10 inv + 32)"]
    for k, v in med.items():
        print(f"  {k:28s} {v:8.2f}s   {v / base:6.3f}x TDM")
    for k in configs:
        if k.startswith("fast"):
            print(f"time {k} / TDM default: {med[k] / base:.3f} (target <= 0.125)")
    per = outs["per-frame 4-step (s=0)"]
    el_p, ei_p = ewarp_latent(per), ewarp_image(per)

    def ratio(x, y):
        return f"{x / y:.3f}" if y > 0 and x == x else "n/a"

    print(f"E_warp (occluded pixels excluded), per-frame 4-step without alignment: latent {el_p:.4f}, image {ei_p:.4f}")
    for k, z in outs.items():
        if k == "per-frame 4-step (s=0)":
            continue
        el, ei = ewarp_latent(z), ewarp_image(z)
        psnr = f"   PSNR vs clean {metrics.psnr(image(z), clean):.2f} dB" if a.model == "demo" else ""
        print(f"  {k:28s} latent {el:.4f} ({ratio(el, el_p)}x per-frame)   image {ei:.4f} ({ratio(ei, ei_p)}x "
              f"per-frame){psnr}")
    if a.model == "demo":
        print(f"  per-frame 4-step PSNR vs clean {metrics.psnr(image(per), clean):.2f} dB; degraded input "
              f"{metrics.psnr(frames, clean):.2f} dB; clean clip E_warp {metrics.warping_error(clean, flow=flow):.4f}")
    print(f"E_warp of the input clip itself: image {metrics.warping_error(frames, flow=flow):.4f}, "
          f"latent {ewarp_latent(latent):.4f}")

if __name__ == "__main__":
    main()
