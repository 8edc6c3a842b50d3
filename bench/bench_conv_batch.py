"""Why a batch-1 recurrent sampler costs more per frame on CPU than a batched one: conv2d per batch item.

TR_RecurrentRestore with ``group 1`` calls the UNet (+ ControlNet) with one frame, cond + uncond: batch 2.
The stock batched KSampler calls it with every frame at once (8 frames x 2 = batch 16). Profiling both at
full SD1.5 size (bench_real_shapes.py with TR_BENCH_PROFILE) shows linear layers and attention costing the
same per item, and the whole difference in ``torch.conv2d``. This times every 3x3 conv shape of SD1.5's UNet
(one of each, fp32, the sizes its levels have at ``--size``) at batch 2 and at batch ``--batch``, interleaved,
and prints the CPU time per batch item and the ratio.

    .venv/bin/python bench/bench_conv_batch.py [--size 256] [--batch 16] [--repeats 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

# (in channels, out channels, latent downscale) of SD1.5's 3x3 convs, one per distinct shape
SD15_CONVS = [(320, 320, 1), (320, 640, 2), (640, 640, 2), (640, 1280, 4), (1280, 1280, 4), (1280, 1280, 8),
              (2560, 1280, 8), (2560, 1280, 4), (1920, 640, 2), (960, 320, 1)]


def per_item(conv: torch.nn.Conv2d, batch: int, side: int) -> float:
    x = torch.randn(batch, conv.in_channels, side, side)
    t = time.process_time()
    conv(x)
    return (time.process_time() - t) / batch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256, help="frame side in pixels (latent side = size / 8)")
    ap.add_argument("--batch", type=int, default=16, help="the batched run's batch (8 frames x cond/uncond)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    latent = a.size // 8
    print(f"conv2d CPU time per batch item, fp32, {a.threads} threads, {a.size} px frames (latent {latent}), "
          f"median of {a.repeats} interleaved repeats")
    print("| conv (in -> out, side) | batch 2 ms/item | batch %d ms/item | ratio |\n|---|---|---|---|" % a.batch)
    tot = {2: 0.0, a.batch: 0.0}
    with torch.inference_mode():
        for cin, cout, down in SD15_CONVS:
            conv = torch.nn.Conv2d(cin, cout, 3, padding=1)
            side = latent // down
            per_item(conv, 2, side)  # warm-up
            res = {2: [], a.batch: []}
            for _ in range(a.repeats):
                for b in (2, a.batch):
                    res[b].append(per_item(conv, b, side))
            m = {b: statistics.median(v) for b, v in res.items()}
            for b in m:
                tot[b] += m[b]
            print(f"| {cin} -> {cout}, {side}x{side} | {m[2] * 1e3:.2f} | {m[a.batch] * 1e3:.2f} | {m[2] / m[a.batch]:.2f}x |")
    print(f"| all shapes, one each | {tot[2] * 1e3:.2f} | {tot[a.batch] * 1e3:.2f} | {tot[2] / tot[a.batch]:.2f}x |")


if __name__ == "__main__":
    main()
