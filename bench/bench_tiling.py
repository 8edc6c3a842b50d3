"""Benchmark: TR_TiledSampling on HD frames with the tiny SD1.5-shaped model, side by side in one run.

Prints (each restore in its own fresh subprocess, same settings; tiles 512 px with 64 px overlap):
* peak RSS of a tiled 1280x720 x 16-frame img2img vs the same run untiled while sampling (VmHWM reset
  after the VAE encode), and its growth over the RSS just before sampling (the sampling's own memory;
  target <= 0.25x),
* time per frame tiled / untiled (target <= 1.3x),
* the seam metric on a synthetic HD clip with true flow (``pipelines/synthetic.py``): warping error of
  the restored frames on bands of +-8 px around inner tile edges / warping error elsewhere
  (target <= 1.05x), with SW-CFA (radius 3) as a temporal patch on the tiles.

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_tiling.py [--width 1280 --height 720 --frames 16 --steps 2]

Not part of CI (minutes on 2 cores).
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
    img, dt, peak, rss0 = restore(clip.frames)
    result = {"seconds": dt, "rss_before_mb": rss0, "peak_mb": peak,
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--tiled", type=int, default=1)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--tile", type=int, default=512, help="tile side, pixels")
    ap.add_argument("--overlap", type=int, default=64, help="tile overlap, pixels")
    a = ap.parse_args()
    if a.child:
        return child(a)
    print(f"tiling bench: {a.width}x{a.height} x {a.frames} frames, tiny SD1.5 + SW-CFA r3, {a.steps} euler steps "
          f"(denoise 0.5), tiles {a.tile} px / overlap {a.overlap} px; one fresh subprocess per run")
    u = run_child(a, False)
    t = run_child(a, True)
    for name, r in (("untiled", u), ("tiled", t)):
        print(f"  {name:8s}: sampling {r['seconds']:.1f} s ({r['seconds'] / a.frames:.2f} s/frame), peak RSS while "
              f"sampling {r['peak_mb']:.0f} MB (+{r['peak_mb'] - r['rss_before_mb']:.0f} MB over pre-sampling; "
              f"process peak with VAE {r['process_peak_mb']:.0f} MB)")
    grow = (t["peak_mb"] - t["rss_before_mb"]) / max(u["peak_mb"] - u["rss_before_mb"], 1.0)
    print(f"peak RSS while sampling tiled/untiled: {t['peak_mb'] / u['peak_mb']:.3f}; sampling growth over "
          f"pre-sampling RSS {grow:.3f} (target <= 0.25)")
    print(f"time per frame tiled/untiled: {t['seconds'] / u['seconds']:.3f} (target <= 1.3)")
    print(f"seam: warping error on +-8 px tile-edge bands {t['band']:.4f} vs interior {t['interior']:.4f} "
          f"-> ratio {t['band'] / t['interior']:.3f} (target <= 1.05); input clip {t['input_band']:.4f} vs "
          f"{t['input_interior']:.4f} -> {t['input_band'] / t['input_interior']:.3f}; {t['tiles']} tiles, bands "
          f"{100 * t['band_share']:.1f}% of the frame")


if __name__ == "__main__":
    main()
