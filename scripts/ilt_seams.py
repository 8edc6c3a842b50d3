"""Seams of TR_ILTChunker's modes (DiffVSR §3.4): PSNR, warping error, flicker and seam ratio (flicker across
the window seams / flicker elsewhere, 1 = seamless) on the bundled clip with ground truth, demo model.

    .venv/bin/python scripts/ilt_seams.py                    # 16 frames, window 8, overlap 4, all modes

The demo UNet treats frames independently, so with shared noise every window would agree on its overlap
and all modes would coincide; SW-CFA (TDM Eq. 7-9, ``--radius``, 0 = off) makes a frame's result depend on
its window, which is what ILT exists for. Same model, conditioning (task prompt + ControlNet on the degraded frames, cfg 1), DDIM sampler, denoise and
seed as ``scripts/evaluate.py``; every mode uses the rescheduled noise. Seams are ``WindowPlan.boundaries()``.
"""
from __future__ import annotations

import argparse
import os
import sys
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import evaluate  # noqa: E402


def run(a):
    tt, arch = evaluate.common.setup()
    torch.set_num_threads(a.threads)
    import comfy.samplers

    from temporal_restore.nodes import sw_cfa, task_prompt
    from temporal_restore.nodes._chunked import MODES, chunked_sample
    from temporal_restore.pipelines import ilt, metrics

    clean, flow = evaluate.load_clip(a)
    model, clip, vae, control = evaluate.load_models(a, arch)
    if a.radius > 0:
        model = sw_cfa.install_sw_cfa(model, "sw_cfa", a.radius)
    degraded = tt.degraded_input(clean, a.task, seed=a.seed)
    work = tt.to_work_scale(degraded, a.work_scale)
    latent = vae.encode(work)
    enc = lambda t: clip.encode_from_tokens_scheduled(clip.tokenize(t))  # noqa: E731
    pos, neg = task_prompt.apply_controlnet(enc(tt.TASK_PROMPTS[a.task]), enc(""), control, work, 1.0, 0.0, 1.0)
    sigmas = comfy.samplers.KSampler(model, steps=a.steps, device=model.load_device, sampler="ddim",
                                     scheduler="normal", denoise=a.denoise).sigmas
    seams = ilt.WindowPlan(clean.shape[0], a.window, a.overlap).boundaries()
    rows = []
    for mode in MODES:
        out = chunked_sample(model, pos, neg, {"samples": latent}, a.seed, 1.0, comfy.samplers.sampler_object("ddim"),
                             sigmas, window=a.window, overlap=a.overlap, mode=mode, progress=False)["samples"]
        frames = tt.from_work_scale(vae.decode(out).reshape(work.shape).clamp(0, 1), a.work_scale)
        m = metrics.video_metrics(frames, reference=clean, flow=flow, boundaries=seams)
        rows.append((mode, m["psnr"], m["warping_error"], m["flicker"], m["seam_ratio"], m["seam_ratio_lowpass"]))
        print(f"{mode}: done", file=sys.stderr)
    text = (f"ILT modes on {os.path.basename(a.ground_truth)} ({clean.shape[0]} frames), task {a.task}, demo model, "
            f"{a.steps} DDIM steps, denoise {a.denoise}, SW-CFA radius {a.radius}, window {a.window}, overlap {a.overlap}, seams {seams}\n\n"
            "| mode | PSNR (dB) | warping error | flicker | seam ratio | seam ratio (low-pass) |\n|---|---|---|---|---|---|\n"
            + "".join(f"| {n} | {p:.2f} | {w:.4f} | {f:.4f} | {s:.3f} | {sl:.3f} |\n" for n, p, w, f, s, sl in rows))
    print(text, flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ground-truth", default=os.path.join(evaluate.REPO, "samples", "sample_clip_gt.npz"))
    ap.add_argument("--task", default="denoise")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--overlap", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--denoise", type=float, default=0.3)
    ap.add_argument("--radius", type=int, default=3, help="SW-CFA radius (0 = off: frame-independent UNet)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work-scale", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    a.checkpoint = a.controlnet = a.demo_dir = None
    run(a)


if __name__ == "__main__":
    main()
