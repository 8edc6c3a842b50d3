"""Benchmark: long-clip restore (TR_ILTChunker + TE-3D chunked decode) on the tiny SD1.5 model.

Prints, measured side by side in one run (each restore in its own subprocess, same settings):
* peak RSS of a 256-frame restore / peak RSS of a 16-frame restore (whole process, and the growth
  over the RSS just before the restore; target <= 1.25),
* time per frame at 256 frames / time per frame at 16 frames (target <= 1.1),
* the seam metric (flicker at window seams / flicker elsewhere, ``pipelines.metrics.seam_ratio``)
  with state carrying (rescheduled noise, carried overlap predictions, ILT blend) and without
  (independent noise, no carry, hard cut).

Frames are 32x32 (4x4 latents), img2img at denoise 0.6 of a smoothly moving synthetic latent clip.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_long_clip.py [--steps 4] [--long 256] [--short 16]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import sys
import time

from _comfy import child_result, tiny_model_and_prompts  # bench/ helper (this script's folder is on sys.path)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _pack():
    if "temporal_restore" not in sys.modules:
        spec = importlib.util.spec_from_file_location("temporal_restore", os.path.join(REPO, "__init__.py"),
                                                      submodule_search_locations=[REPO])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["temporal_restore"] = mod
        spec.loader.exec_module(mod)


def child(a) -> None:
    import logging

    logging.disable(logging.WARNING)
    sys.path.insert(0, TESTS)  # the test harness (in-process ComfyUI) and the tiny models
    from harness import paths
    from harness.inprocess import ComfyHost
    import tiny_models
    import torch

    base = paths.base_dir("bench")
    host = ComfyHost(base)
    tiny_models.register()
    tiny = tiny_models.build(os.path.join(base, "models"))
    _pack()
    from temporal_restore.nodes import ilt as ilt_node
    from temporal_restore.pipelines import ilt, metrics, te3d_vae
    import comfy.samplers

    model, vae, pos, neg = tiny_model_and_prompts(host, tiny["checkpoint"])
    if a.patch == "sw_cfa":  # cross-frame attention over the whole window: frames agree inside a window
        from temporal_restore.nodes.sw_cfa import install_sw_cfa

        model = install_sw_cfa(model, "sw_cfa", radius=a.window, blocks="all")
    g = torch.Generator().manual_seed(0)
    field = torch.nn.functional.interpolate(torch.randn(1, 4, 8, 8, generator=g), size=(64, 64), mode="bilinear")
    sampler = comfy.samplers.sampler_object("euler")
    sigmas = comfy.samplers.KSampler(model, steps=a.steps, device=model.load_device, sampler="euler",
                                     scheduler="normal", denoise=0.6).sigmas
    decoder = te3d_vae.TE3DDecoder(vae.first_stage_model.taesd_decoder).eval()

    def restore(frames):
        latent = torch.cat([field[:, :, (t // 4) % 60: (t // 4) % 60 + 4, 8:12] for t in range(frames)]).contiguous()
        t0 = time.perf_counter()
        with torch.inference_mode():
            res = ilt_node.chunked_sample(model, pos, neg, {"samples": latent}, 0, 3.0, sampler, sigmas,
                                          window=a.window, overlap=a.overlap, mode=a.mode, noise_mode=a.noise,
                                          carry_state=a.carry, blend_mode=a.blend, progress=False,
                                          boundary_kv=a.boundary_kv)["samples"]
            img = te3d_vae.decode_chunked(decoder, res, chunk=8, overlap=2).clamp(0, 1)
        return img, time.perf_counter() - t0

    if a.time_vs:  # time per frame of both lengths in this one process, interleaved, medians
        import statistics

        restore(a.time_vs)  # warm-up
        short, long_ = [], []
        for _ in range(a.repeats):
            short.append(restore(a.time_vs)[1] / a.time_vs)
            long_.append(restore(a.frames)[1] / a.frames)
        print("RESULT " + json.dumps({"short_tpf": statistics.median(short), "long_tpf": statistics.median(long_)}))
        return
    restore(min(a.frames, a.window))  # warm-up: first-call costs would otherwise land on the timed restore
    rss0 = _rss_mb()
    img, dt = restore(a.frames)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    plan = ilt.WindowPlan(a.frames, a.window, a.overlap)
    seam = float("nan")
    if plan.boundaries():
        seam = metrics.seam_ratio(img.permute(0, 2, 3, 1).contiguous(), plan.boundaries(), mode="lowpass")
    print("RESULT " + json.dumps({"frames": a.frames, "seconds": dt, "rss_before_mb": rss0, "peak_mb": peak,
                                  "seam": seam, "windows": len(plan)}))


def run_child(frames, steps, mode="fused", noise="rescheduled", carry=True, blend="ilt", window=8, overlap=4,
              patch="none", boundary_kv=0, time_vs=0, repeats=2):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--frames", str(frames), "--steps", str(steps),
           "--mode", mode, "--noise", noise, "--blend", blend, "--window", str(window), "--overlap", str(overlap),
           "--patch", patch, "--boundary-kv", str(boundary_kv), "--time-vs", str(time_vs), "--repeats", str(repeats)]
    if carry:
        cmd.append("--carry")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return child_result(cmd, env)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--mode", default="fused")
    ap.add_argument("--noise", default="rescheduled")
    ap.add_argument("--carry", action="store_true")
    ap.add_argument("--blend", default="ilt")
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--overlap", type=int, default=4)
    ap.add_argument("--long", type=int, default=256)
    ap.add_argument("--short", type=int, default=16)
    ap.add_argument("--seam-frames", type=int, default=64)
    ap.add_argument("--patch", default="none", choices=["none", "sw_cfa"])
    ap.add_argument("--only-seam", action="store_true")
    ap.add_argument("--boundary-kv", type=int, default=0)
    ap.add_argument("--time-vs", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    if a.child:
        return child(a)
    if a.only_seam:
        return seams(a)
    print(f"long-clip bench: 32x32 frames, {a.steps} euler steps (denoise 0.6), window 8 / overlap 4, one subprocess per run")
    for mode in ("fused", "sequential"):
        s = run_child(a.short, a.steps, mode)
        l = run_child(a.long, a.steps, mode)
        print(f"[{mode}] {a.short} frames: {s['seconds']:.2f} s, peak RSS {s['peak_mb']:.0f} MB "
              f"(+{s['peak_mb'] - s['rss_before_mb']:.0f} MB over pre-restore); "
              f"{a.long} frames: {l['seconds']:.2f} s, peak RSS {l['peak_mb']:.0f} MB "
              f"(+{l['peak_mb'] - l['rss_before_mb']:.0f} MB)")
        print(f"[{mode}] peak RSS ratio {a.long}/{a.short}: {l['peak_mb'] / s['peak_mb']:.3f} (target <= 1.25); "
              f"growth ratio {(l['peak_mb'] - l['rss_before_mb']) / max(s['peak_mb'] - s['rss_before_mb'], 1):.2f}")
        tpf = (l["seconds"] / a.long) / (s["seconds"] / a.short)
        work = (l["windows"] * 8 / a.long) / (s["windows"] * 8 / a.short)
        t = run_child(a.long, a.steps, mode, time_vs=a.short, repeats=a.repeats)
        one = t['long_tpf'] / t['short_tpf']
        print(f"[{mode}] time/frame ratio {a.long}/{a.short}: {tpf:.3f} across processes (warm); "
              f"{one:.3f} in one process (interleaved, median of {a.repeats}) (target <= 1.1)")
        # window 8 / overlap 4 samples every inner frame twice: a 16-frame clip has 8 of its 16 frames
        # in single-covered ends, a 256-frame clip 8 of 256, so the sampling work per frame itself grows
        print(f"[{mode}]   ILT window-frames per frame {a.long}/{a.short}: {work:.3f} (the overlap's arithmetic); "
              f"time per window-frame ratio {tpf / work:.3f} across processes, {one / work:.3f} in one process")
    s = run_child(a.short, a.steps, "fused", overlap=2)
    l = run_child(a.long, a.steps, "fused", overlap=2)
    work = (l["windows"] / a.long) / (s["windows"] / a.short)
    print(f"[fused, overlap 2] time/frame ratio {a.long}/{a.short}: "
          f"{(l['seconds'] / a.long) / (s['seconds'] / a.short):.3f} (window-frames per frame ratio {work:.3f}); "
          f"peak RSS ratio {l['peak_mb'] / s['peak_mb']:.3f}")
    seams(a)


def seams(a) -> None:
    n = a.seam_frames
    for patch in ("none", "sw_cfa"):
        without = run_child(n, a.steps, "sequential", noise="independent", carry=False, blend="cut", patch=patch)
        with_seq = run_child(n, a.steps, "sequential", noise="rescheduled", carry=True, blend="ilt", patch=patch)
        fused = run_child(n, a.steps, "fused", noise="rescheduled", carry=True, blend="ilt", patch=patch)
        fused_kv = run_child(n, a.steps, "fused", noise="rescheduled", carry=True, blend="ilt", patch=patch,
                             boundary_kv=2)
        what = "plain tiny SD1.5 (frames independent)" if patch == "none" else "with SW-CFA over the window (frames agree inside a window)"
        print(f"seam ratio, {what}; {n} frames, lowpass flicker at window seams / elsewhere (1 = invisible seams):")
        print(f"  without state carrying (independent noise, no carry, hard cut): {without['seam']:.3f}")
        print(f"  sequential with carrying (rescheduled noise, carried overlap, ILT): {with_seq['seam']:.3f}")
        print(f"  fused (all windows advanced together, ILT every step):           {fused['seam']:.3f}")
        print(f"  fused + boundary K/V of 2 frames carried into the next window:   {fused_kv['seam']:.3f}")


if __name__ == "__main__":
    main()
