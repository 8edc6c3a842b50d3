"""TDM ablation table (issue 9 / TDM Table 4) on a clip with ground truth, printed as markdown.

    .venv/bin/python scripts/evaluate.py                       # demo model, bundled sample clip, denoise
    .venv/bin/python scripts/evaluate.py --task sr_x4 --frames 8 --out out/ablation.md

Rows (all with the same model, ControlNet hint = the degraded frames, cfg 1):
  input            the degraded clip itself
  per-frame        img2img from the degraded latent with independent noise per frame (DDIM sampler)
  +DDIM inversion  the noise comes from DDIM-inverting the degraded latent (TDM Eq. 4) instead
  +SW-CFA          per-frame noise, Sliding-Window Cross-Frame Attention (radius 3)
  TDM full         task prompt + DDIM inversion + SW-CFA
  TDM w/o prompt   TDM full with an empty prompt instead of the task prompt (TPG ablation)
Columns: PSNR / SSIM against the clean clip, warping error (with the clip's true flow), flicker, seconds per
frame. Model: the embedded demo model (models/demo/) unless --checkpoint/--controlnet name an SD1.5 pair.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_demo_model as common  # noqa: E402

REPO = common.REPO


def load_clip(a):
    from temporal_restore.pipelines import synthetic

    gt = synthetic.load_ground_truth(a.ground_truth)
    n = min(a.frames, gt.frames.shape[0])
    frames = gt.frames[:n].float()
    flow = synthetic.SyntheticClip(frames=frames, flow=gt.flow[:n - 1], occlusion=gt.occlusion[:n - 1],
                                   flow_bwd=gt.flow_bwd[:n - 1], disocclusion=gt.disocclusion[:n - 1],
                                   object_mask=gt.object_mask[:n]).flow_field()
    return frames, flow


def load_models(a, arch):
    if a.checkpoint:
        import comfy.controlnet
        import comfy.sd

        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(a.checkpoint, output_vae=True, output_clip=True)
        return model, clip, vae, comfy.controlnet.load_controlnet(a.controlnet)
    return arch.load_demo()


def run(a):
    tt, arch = common.setup()
    torch.set_num_threads(a.threads)
    import comfy.sample
    from temporal_restore.nodes import ddim_invert, sw_cfa, task_prompt
    from temporal_restore.pipelines import metrics

    clean, flow = load_clip(a)
    degraded = tt.degraded_input(clean, a.task, seed=a.seed)
    model, clip, vae, control = load_models(a, arch)
    enc = lambda t: clip.encode_from_tokens_scheduled(clip.tokenize(t))  # noqa: E731
    latent = {"samples": vae.encode(degraded)}

    def conds(prompt):
        return task_prompt.apply_controlnet(enc(prompt), enc(""), control, degraded, 1.0, 0.0, 1.0)

    def per_frame(m, pos, neg):
        noise = comfy.sample.prepare_noise(latent["samples"], a.seed)
        return comfy.sample.sample(m, noise, a.steps, 1.0, "ddim", "normal", pos, neg, latent["samples"],
                                   denoise=a.denoise, seed=a.seed, disable_pbar=True)

    def inverted(m, pos, neg):
        inv = ddim_invert.invert(m, pos, neg, latent, a.steps, 1.0, a.denoise)
        return ddim_invert.restore(m, pos, neg, inv, a.steps, 1.0)["samples"]

    prompt = tt.TASK_PROMPTS[a.task]
    swm = sw_cfa.install_sw_cfa(model, "sw_cfa", a.radius)
    rows = [
        ("per-frame", lambda: per_frame(model, *conds(prompt))),
        ("+DDIM inversion", lambda: inverted(model, *conds(prompt))),
        ("+SW-CFA", lambda: per_frame(swm, *conds(prompt))),
        ("TDM full", lambda: inverted(swm, *conds(prompt))),
        ("TDM w/o task prompt", lambda: inverted(swm, *conds(""))),
    ]
    table = []

    def measure(name, frames, secs):
        m = metrics.video_metrics(frames, reference=clean, flow=flow)
        table.append((name, m["psnr"], m["ssim"], m["warping_error"], m["flicker"], secs))

    measure("input (degraded)", degraded, 0.0)
    for name, fn in rows:
        t0 = time.time()
        samples = fn()
        out = vae.decode(samples).reshape(clean.shape).clamp(0, 1)
        measure(name, out, (time.time() - t0) / clean.shape[0])
        print(f"{name}: done", file=sys.stderr)
    head = (f"Ablation on {os.path.basename(a.ground_truth)} ({clean.shape[0]} frames {clean.shape[2]}x{clean.shape[1]}), "
            f"task {a.task} ({prompt!r}), model {'demo' if not a.checkpoint else os.path.basename(a.checkpoint)}, "
            f"{a.steps} steps, denoise {a.denoise}, SW-CFA radius {a.radius}\n\n"
            "| configuration | PSNR (dB) | SSIM | warping error | flicker | s/frame |\n|---|---|---|---|---|---|\n")
    body = "".join(f"| {n} | {p:.2f} | {s:.3f} | {w:.4f} | {f:.4f} | {t:.2f} |\n" for n, p, s, w, f, t in table)
    text = head + body
    print(text)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            f.write(text)
    return text


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ground-truth", default=os.path.join(REPO, "samples", "sample_clip_gt.npz"),
                    help="clean clip + true flow (pipelines.synthetic.save_ground_truth format)")
    ap.add_argument("--task", default="denoise")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--denoise", type=float, default=0.3)
    ap.add_argument("--radius", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", help="SD1.5 checkpoint path (default: the embedded demo model)")
    ap.add_argument("--controlnet", help="ControlNet path (with --checkpoint)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="also write the markdown table here")
    a = ap.parse_args(argv)
    if a.checkpoint and not a.controlnet:
        ap.error("--checkpoint needs --controlnet")
    run(a)


if __name__ == "__main__":
    main()
