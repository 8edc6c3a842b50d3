"""Ablation tables (issue 9; TDM Table 4, ZVRD Table 5, DiffIR2VR-Zero Table 2 style) on a clip with ground
truth, one markdown table per task.

    .venv/bin/python scripts/evaluate.py                       # demo model, bundled sample clip, denoise, all rows
    .venv/bin/python scripts/evaluate.py --tasks all --frames 8 --out out/ablation.md
    .venv/bin/python scripts/evaluate.py --tasks sr_x4 --groups tdm,zvrd

Rows: the degraded input, then the configurations of ``scripts/eval_configs.py`` (groups tdm, zvrd,
diffir2vr, distilled; all with the same model, ControlNet hint = the degraded frames, cfg 1).
Columns: PSNR / SSIM against the clean clip, warping error (with the clip's true flow), flicker, seconds per
frame. Model: the embedded demo model (models/demo/) unless --checkpoint/--controlnet name an SD1.5 pair.

Colour correction (issue 23): ``--color "TDM full"`` adds a second table per task: the named rows' outputs
with each fix of ``eval_configs.COLOR_FIXES`` (``pipelines.color``, reference = the degraded input), with
PSNR / SSIM, colour difference (CIEDE2000 on low-passed frames) and colour flicker against the clean clip
(``pipelines.color_diff``), and the PSNR / SSIM change the fix makes. ``--rows`` runs only the rows whose
names start with one of the given prefixes. ``--synthetic rocket`` evaluates on a synthetic clip of a
held-out image (``pipelines.synthetic.make_clip``, 128x96, pan, seed 1) instead of ``--ground-truth``:

    .venv/bin/python scripts/evaluate.py --frames 8 --rows "TDM full" --color "TDM full" --tasks denoise,sr_x4
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_demo_model as common  # noqa: E402
from eval_configs import COLOR_FIXES, DEFAULT_GROUPS, GROUPS  # noqa: E402

REPO = common.REPO


def load_clip(a):
    from temporal_restore.pipelines import synthetic

    if a.synthetic:
        clip = synthetic.make_clip(a.synthetic, a.frames, 96, 128, "pan", seed=1)
        return clip.frames.float(), clip.flow_field()
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
    return arch.load_demo(a.demo_dir) if a.demo_dir else arch.load_demo()


def run(a):
    tt, arch = common.setup()
    torch.set_num_threads(a.threads)
    import eval_configs
    from temporal_restore.pipelines import metrics

    groups = [g.strip() for g in a.groups.split(",") if g.strip()]
    rows = [r.strip() for r in a.rows.split(",") if r.strip()] or [""]
    color_rows = [r.strip() for r in (a.color or "").split(",") if r.strip()]
    clip_name = f"synthetic {a.synthetic} clip (held out)" if a.synthetic else os.path.basename(a.ground_truth)

    def color_fixes(name, out, degraded, before):
        """The rows of the colour table for one restored clip ``out``: each fix of COLOR_FIXES."""
        from temporal_restore.pipelines import color

        res = []
        for label, method, radius in COLOR_FIXES:
            m = before if method == "none" else metrics.video_metrics(
                color.color_match(out, degraded, method, radius), reference=clean, flow=flow)
            res.append((name, label, m, before))
        return res

    tasks = list(tt.DEMO_TASKS) if a.tasks == "all" else [t.strip() for t in a.tasks.split(",") if t.strip()]
    # checked before any model is loaded
    for t in tasks:
        if t not in tt.TASK_PROMPTS:
            raise SystemExit(f"--tasks: expected names from {sorted(tt.TASK_PROMPTS)} or 'all', got {t!r}")
    if a.synthetic and a.synthetic not in tt.HELDOUT_IMAGES:
        raise SystemExit(f"--synthetic: expected a held-out image from {tt.HELDOUT_IMAGES}, got {a.synthetic!r}")
    if set(groups) - set(GROUPS):
        raise SystemExit(f"--groups: expected names from {GROUPS}, got {sorted(set(groups) - set(GROUPS))}")
    clean, flow = load_clip(a)
    ws = a.work_scale if a.work_scale is not None else (1 if a.checkpoint else 2)
    model, clip, vae, control = load_models(a, arch)
    texts = []
    for task in tasks:
        degraded = tt.degraded_input(clean, task, seed=a.seed)
        work = tt.to_work_scale(degraded, ws)  # what the workflow's ImageScaleBy hands the VAE and the ControlNet
        ctx = types.SimpleNamespace(model=model, clip=clip, vae=vae, control=control, degraded=work,
                                    latent=vae.encode(work), task=task, steps=a.steps, denoise=a.denoise,
                                    seed=a.seed, radius=a.radius, tt=tt)
        table, colour = [], []

        def measure(name, frames, secs):
            m = metrics.video_metrics(frames, reference=clean, flow=flow)
            table.append((name, m["psnr"], m["ssim"], m["warping_error"], m["flicker"], secs))
            return m

        colour.append(("input (degraded)", "-", measure("input (degraded)", degraded, 0.0), None))
        for _, name, fn, *decode in eval_configs.configurations(ctx, groups):
            if not any(name.startswith(r) for r in rows):
                continue
            t0 = time.time()
            samples = fn()
            decoded = decode[0](samples) if decode else vae.decode(samples)  # a row may bring its own decoder
            out = tt.from_work_scale(decoded.reshape(work.shape).clamp(0, 1), ws)
            m = measure(name, out, (time.time() - t0) / clean.shape[0])
            if any(name.startswith(c) for c in color_rows):
                colour += color_fixes(name, out, degraded, m)
            print(f"{task} / {name}: done", file=sys.stderr)
        head = (f"Ablation on {clip_name} ({clean.shape[0]} frames {clean.shape[2]}x{clean.shape[1]}), "
                f"task {task} ({tt.TASK_PROMPTS[task]!r}), model {'demo' if not a.checkpoint else os.path.basename(a.checkpoint)}, "
                f"{a.steps} steps, denoise {a.denoise}, SW-CFA radius {a.radius}, working scale x{ws}\n\n"
                "| configuration | PSNR (dB) | SSIM | warping error | flicker | s/frame |\n|---|---|---|---|---|---|\n")
        body = "".join(f"| {n} | {p:.2f} | {s:.3f} | {w:.4f} | {f:.4f} | {t:.2f} |\n" for n, p, s, w, f, t in table)
        texts.append(head + body)
        if color_rows:
            texts.append(color_table(clip_name, task, colour))
        print("\n".join(texts[-2 if color_rows else -1:]), flush=True)
    text = "\n".join(texts)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            f.write(text)
    return text


def color_table(clip_name, task, rows) -> str:
    """Markdown: PSNR / SSIM / colour difference / colour flicker per (row, colour fix), with the change the
    fix makes to PSNR and SSIM (``rows``: ``(row, fix label, metrics, metrics without the fix)``)."""
    head = (f"Colour correction on {clip_name}, task {task} (reference of the fix: the degraded input; "
            "dE00 = CIEDE2000 on 1/8-frame block means; colour flicker = frame-to-frame change of the mean "
            "L*a*b* cast, CIE76)\n\n| configuration | colour fix | PSNR (dB) | SSIM | dE00 | colour flicker | "
            "dPSNR | dSSIM |\n|---|---|---|---|---|---|---|---|\n")
    body = ""
    for name, label, m, before in rows:
        dp = "" if before is None else f"{m['psnr'] - before['psnr']:+.2f}"
        ds = "" if before is None else f"{m['ssim'] - before['ssim']:+.3f}"
        body += (f"| {name} | {label} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['color_delta_e']:.3f} | "
                 f"{m['color_flicker']:.3f} | {dp} | {ds} |\n")
    return head + body


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ground-truth", default=os.path.join(REPO, "samples", "sample_clip_gt.npz"),
                    help="clean clip + true flow (pipelines.synthetic.save_ground_truth format)")
    ap.add_argument("--tasks", default="denoise", help="comma-separated tasks, or 'all' (the demo's training tasks)")
    ap.add_argument("--groups", default=",".join(DEFAULT_GROUPS),
                    help=f"comma-separated row groups from {GROUPS} (default: all but te3d)")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--denoise", type=float, default=0.3)
    ap.add_argument("--radius", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", help="SD1.5 checkpoint path (default: the embedded demo model)")
    ap.add_argument("--controlnet", help="ControlNet path (with --checkpoint)")
    ap.add_argument("--demo-dir", help="folder of a demo model (default models/demo/; e.g. a new training run's --out)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work-scale", type=int, help="upsample the clip by this before the VAE and the ControlNet and "
                    "area-average the result back (default: 2 for the demo model, as its workflow; 1 with --checkpoint)")
    ap.add_argument("--out", help="also write the markdown table here")
    ap.add_argument("--rows", default="", help="comma-separated prefixes of the rows to run (default: all)")
    ap.add_argument("--color", help="comma-separated row-name prefixes whose outputs get the colour-fix table "
                    "(e.g. 'TDM full'; issue 23)")
    ap.add_argument("--synthetic", help="evaluate on a synthetic clip of this held-out image (e.g. rocket) "
                    "instead of --ground-truth")
    a = ap.parse_args(argv)
    if a.checkpoint and not a.controlnet:
        ap.error("--checkpoint needs --controlnet")
    run(a)


if __name__ == "__main__":
    main()
