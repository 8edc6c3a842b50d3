"""Peak memory of a tiled vs an untiled TE-3D VAE decode, side by side in one run (issue 21, item 3).

Each decode runs in a fresh child process (so its peak RSS is its own): the demo VAE
(models/demo/demo_sd15.safetensors, TAESD-shaped) with its shipped temporal weights
(models/demo/demo_te3d_vae.safetensors, ``auto``) decodes ``--frames`` random latents of a
``--width`` x ``--height`` clip through TR_TE3DVAEDecode's path, untiled and then with ``--tile`` /
``--overlap`` pixel tiles. Reported: peak RSS during the decode (VmHWM reset after loading), its growth
over the RSS before decoding, seconds, and the tiled/untiled ratios and the max / mean pixel difference.

    flock /work/bigmem.lock nice -n 10 .venv/bin/python bench/bench_te3d_tiled.py \\
        [--width 1280 --height 720 --frames 8 --chunk 2 --tile 512 --overlap 64]

Memory: an untiled decode holds about 2.1 KB of activations per pixel and frame of a chunk on the demo VAE
(measured), so an untiled 1280x720 chunk of 2 frames needs ~4 GB (hence the lock) and a chunk of 8 ~16 GB.
Measured (640x360, 8 frames, chunk 4, 256 px tiles, 32 px overlap, OMP_NUM_THREADS=1): peak RSS 2907 ->
2068 MB (0.71x; decode growth 1970 -> 1136 MB, 0.58x), time 66.9 -> 199.9 s, |tiled - untiled| mean 1.8e-3.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import _comfy  # bench/ helper (this script's folder is on sys.path)
from bench_tiling import _reset_peak, _status_mb

TESTS = os.path.join(_comfy.REPO, "tests")


def child(a) -> None:
    import logging

    logging.disable(logging.WARNING)
    sys.path.insert(0, TESTS)
    from harness import paths
    from harness.inprocess import ComfyHost
    import torch

    host = ComfyHost(paths.base_dir("bench"))
    _comfy.setup()
    from temporal_restore.nodes import te3d_vae as node

    vae = host.run({"1": {"class_type": "TR_DemoModelLoader", "inputs": {"directory": ""}}}, outputs=["1"])
    vae = vae["outputs"]["1"][2]
    weights, _ = node.resolve_weights(vae, "auto")
    z = torch.randn(a.frames, 4, a.height // 8, a.width // 8, generator=torch.Generator().manual_seed(0))
    tile = a.tile if a.tiled else 0
    with torch.inference_mode():
        node.te3d_decode(vae, z[:2, :, :8, :8], "te3d", a.chunk, 1, weights=weights)  # warm-up, builds the decoder
        _reset_peak()
        before = _status_mb("VmRSS")
        t0 = time.perf_counter()
        img = node.te3d_decode(vae, z, "te3d", a.chunk, 1, weights=weights, tile_size=tile, tile_overlap=a.overlap)
        dt = time.perf_counter() - t0
        peak = _status_mb("VmHWM")
    torch.save(img, a.out)
    print("RESULT " + json.dumps({"seconds": dt, "peak_mb": peak, "rss_before_mb": before,
                                  "weights": os.path.basename(weights)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--chunk", type=int, default=2)
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--child", action="store_true")
    p.add_argument("--tiled", type=int, default=0)
    p.add_argument("--out", default="")
    a = p.parse_args()
    if a.child:
        return child(a)
    import tempfile

    import torch

    res, imgs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for tiled in (0, 1):
            out = os.path.join(tmp, f"{tiled}.pt")
            cmd = [sys.executable, os.path.abspath(__file__), "--child", "--tiled", str(tiled), "--out", out] + [
                f"--{k}={getattr(a, k)}" for k in ("width", "height", "frames", "chunk", "tile", "overlap")]
            res[tiled] = _comfy.child_result(cmd)
            imgs[tiled] = torch.load(out)
    u, t = res[0], res[1]
    d = (imgs[1] - imgs[0]).abs()
    print(f"TE-3D decode, demo VAE + {u['weights'] or 'no temporal weights'}, {a.frames} frames {a.width}x{a.height}, "
          f"chunk {a.chunk}; tiles {a.tile} px, overlap {a.overlap} px")
    for name, r in (("untiled", u), ("tiled", t)):
        print(f"  {name:8s}: {r['seconds']:.1f} s, peak RSS while decoding {r['peak_mb']:.0f} MB "
              f"(growth over {r['rss_before_mb']:.0f} MB before: {r['peak_mb'] - r['rss_before_mb']:.0f} MB)")
    grow = (t["peak_mb"] - t["rss_before_mb"]) / max(u["peak_mb"] - u["rss_before_mb"], 1e-9)
    print(f"tiled/untiled: peak RSS {t['peak_mb'] / u['peak_mb']:.3f}, decode growth {grow:.3f}, "
          f"time {t['seconds'] / u['seconds']:.2f}; |tiled - untiled| max {d.max():.3g} mean {d.mean():.3g}")


if __name__ == "__main__":
    main()
