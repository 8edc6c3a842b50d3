"""Benchmark: TR_TiledSampling on HD frames with the tiny SD1.5-shaped model, side by side in one run.

Each restore runs in its own fresh subprocess with the same settings (tiny SD1.5 + SW-CFA radius 3, img2img
euler at denoise 0.5 on a synthetic clip with true flow, ``pipelines/synthetic.py``), untiled then tiled.
It prints one table (and the command that made it):

* peak RSS while sampling (VmHWM reset after the VAE encode), tiled / untiled (issue 21 target <= 0.25),
* the sampling's growth over the RSS just before it (the sampling's own memory),
* time per frame of the sampling, tiled / untiled (target <= 1.3),
* the seam metric: warping error of the tiled result on bands of +-8 px around inner tile edges / warping
  error elsewhere (target <= 1.05).

The issue's configuration (1280x720 x 16 frames, the hd_restore workflow's 512 / 64 px tiles; the untiled
half needs ~10 GB and tens of minutes on 2 cores, hence the lock and 1 step):

    OMP_NUM_THREADS=2 flock /work/bigmem.lock nice -n 10 .venv/bin/python bench/bench_tiling.py --steps 1

(the defaults: ``--width 1280 --height 720 --frames 16 --tile 512 --overlap 64``)

A quick one: ``--width 640 --height 360 --frames 16 --tile 256 --overlap 32``. On CPU ComfyUI's attention
(sub-quadratic) sizes its chunks from the free system memory, so the untiled peak depends on what else runs;
the table shows the free memory each half started with. Not part of CI.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import _comfy  # bench/ helper (this script's folder is on sys.path)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    """Reset the process's peak RSS (VmHWM) so it measures the sampling alone (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def child(a) -> None:
    import logging

    logging.disable(logging.WARNING)
    sys.path.insert(0, TESTS)  # the in-process ComfyUI harness and the tiny models
    from harness import paths
    from harness.inprocess import ComfyHost
    import tiny_models
    import torch

    base = paths.base_dir("bench")
    host = ComfyHost(base)
    tiny_models.register()
    tiny = tiny_models.build(os.path.join(base, "models"))
    _comfy.setup()
    import comfy.ldm.modules.attention
    import comfy.model_management
    import comfy.sample

    from temporal_restore.nodes import sw_cfa, tiled_sampling
    from temporal_restore.pipelines import metrics, synthetic, tiling

    model, vae, pos, neg = _comfy.tiny_model_and_prompts(host, tiny["checkpoint"])
    model = sw_cfa.install_sw_cfa(model, "sw_cfa", 3)
    if a.tiled:
        model = tiled_sampling.TiledSampling.execute(model, a.tile, a.overlap, "cosine").result[0]
    clip = synthetic.make_clip("astronaut", a.frames, a.height, a.width, motion="pan", seed=0)

    def restore(frames):
        """(decoded frames, sampling seconds, sampling peak RSS MB, RSS before sampling MB)"""
        with torch.inference_mode():
            lat = vae.encode(frames)
            noise = torch.randn(lat.shape, generator=torch.Generator().manual_seed(0))
            _reset_peak()
            before = _status_mb("VmRSS")
            t0 = time.perf_counter()
            res = comfy.sample.sample(model, noise, a.steps, 3.0, "euler", "normal", pos, neg, lat, denoise=0.5,
                                      seed=0, disable_pbar=True)
            dt = time.perf_counter() - t0
            peak = _status_mb("VmHWM")
            return vae.decode(res).clamp(0, 1), dt, peak, before

    restore(clip.frames[:2, :64, :64])  # warm-up at a small size: first-call costs off the measured run
    free_gb = comfy.model_management.get_free_memory(torch.device("cpu")) / 2**30
    img, dt, peak, rss0 = restore(clip.frames)
    result = {"seconds": dt, "rss_before_mb": rss0, "peak_mb": peak, "free_gb": free_gb,
              "attention": comfy.ldm.modules.attention.optimized_attention.__name__,
              "process_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if a.tiled:  # seam metric on the tiled result, with the clip's true flow
        tiles = tiling.tile_grid(a.height // 8, a.width // 8, a.tile // 8, a.overlap // 8)
        band = tiling.border_mask(tiles, 1)  # +-1 latent cell = +-8 px around inner tile edges
        band = band.repeat_interleave(8, 0).repeat_interleave(8, 1)[: a.height, : a.width]
        occ = clip.occlusion.bool()
        on_band = metrics.warping_error(img, clip.flow, occlusion=occ | ~band)
        inside = metrics.warping_error(img, clip.flow, occlusion=occ | band)
        base_band = metrics.warping_error(clip.frames, clip.flow, occlusion=occ | ~band)
        base_inside = metrics.warping_error(clip.frames, clip.flow, occlusion=occ | band)
        result.update(tiles=len(tiles), band=on_band, interior=inside, input_band=base_band,
                      input_interior=base_inside, band_share=float(band.float().mean()))
    print("RESULT " + json.dumps(result))


def run_child(a, tiled: bool) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--tiled", str(int(tiled)), "--width", str(a.width),
           "--height", str(a.height), "--frames", str(a.frames), "--steps", str(a.steps), "--tile", str(a.tile),
           "--overlap", str(a.overlap)]
    return _comfy.child_result(cmd)


def _table(a, u: dict, t: dict) -> str:
    """The figures as one markdown table."""
    def row(name, uv, tv, ratio, target=""):
        return f"| {name} | {uv} | {tv} | {ratio} | {target} |"

    gu, gt = u["peak_mb"] - u["rss_before_mb"], t["peak_mb"] - t["rss_before_mb"]
    fu, ft = u["seconds"] / a.frames, t["seconds"] / a.frames
    return "\n".join([
        "| | untiled | tiled | tiled / untiled | target |", "|---|---|---|---|---|",
        row("peak RSS while sampling", f"{u['peak_mb']:.0f} MB", f"{t['peak_mb']:.0f} MB",
            f"{t['peak_mb'] / u['peak_mb']:.3f}", "<= 0.25"),
        row("sampling's growth over the RSS before it", f"+{gu:.0f} MB", f"+{gt:.0f} MB",
            f"{gt / max(gu, 1.0):.3f}"),
        row("process peak RSS (with the VAE)", f"{u['process_peak_mb']:.0f} MB", f"{t['process_peak_mb']:.0f} MB",
            f"{t['process_peak_mb'] / u['process_peak_mb']:.3f}"),
        row("time per frame (sampling)", f"{fu:.2f} s", f"{ft:.2f} s", f"{ft / fu:.3f}", "<= 1.3"),
        row(f"warping error, +-8 px tile-edge bands / interior ({t['tiles']} tiles, bands "
            f"{100 * t['band_share']:.1f}%)", "", f"{t['band']:.4f} / {t['interior']:.4f}",
            f"{t['band'] / t['interior']:.3f}", "<= 1.05"),
        row("same on the input clip", "", f"{t['input_band']:.4f} / {t['input_interior']:.4f}",
            f"{t['input_band'] / t['input_interior']:.3f}"),
        row("free memory at start / attention", f"{u.get('free_gb', float('nan')):.1f} GB / {u.get('attention')}",
            f"{t.get('free_gb', float('nan')):.1f} GB / {t.get('attention')}", ""),
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tiled", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--width", type=int, default=1280, help="frame width, pixels (multiple of 8)")
    ap.add_argument("--height", type=int, default=720, help="frame height, pixels (multiple of 8)")
    ap.add_argument("--frames", type=int, default=16, help="frames of the clip")
    ap.add_argument("--steps", type=int, default=2, help="euler steps run (denoise 0.5)")
    ap.add_argument("--tile", type=int, default=512, help="tile side, pixels")
    ap.add_argument("--overlap", type=int, default=64, help="tile overlap, pixels")
    a = ap.parse_args()
    if a.child:
        return child(a)
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    command = f"OMP_NUM_THREADS={threads} {os.path.relpath(sys.executable)} bench/bench_tiling.py " + " ".join(
        f"--{k} {getattr(a, k)}" for k in ("width", "height", "frames", "steps", "tile", "overlap"))
    print(f"tiling bench: {a.width}x{a.height} x {a.frames} frames, tiny SD1.5 + SW-CFA r3, {a.steps} euler steps "
          f"(denoise 0.5), tiles {a.tile} px / overlap {a.overlap} px; one fresh subprocess per run", flush=True)
    u = run_child(a, False)
    t = run_child(a, True)
    print(f"\n{command}\n\n{_table(a, u, t)}")


if __name__ == "__main__":
    main()
