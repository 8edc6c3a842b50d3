"""Token merging speed and flow cost, measured side by side in one run (prints ratios).

1. Self-attention (q/k/v/out projections + SDPA, 8 heads, as SD1.5's first-level attn1) on chunks of
   ``--frames`` frames x ``--tokens`` tokens x ``--channels`` channels: TR_TokenMerge at r = 0.5 /
   0.75 / 0.9 (matching + merging + attention on the merged chunk + unmerging, cosine/Eq. 7 and
   flow/Eq. 5 matching) divided by stock per-frame attention.  Target: <= 0.9 at r = 0.75.
2. OpenCV DIS (medium) flow per frame pair (forward + backward + fb check) as a share of one UNet
   step (cond + uncond for one frame) of the tiny SD1.5-shaped UNet (tests/tiny_models.py).

Configurations are interleaved round-robin over ``--repeats`` rounds and medians are reported, so
load from other processes hits all of them alike.  One torch thread by default (``--threads``).

    .venv/bin/python bench/bench_token_merge.py [--tokens 4096] [--channels 320] [--frames 4] [--repeats 3]
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import statistics
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMFY = os.environ.get("TR_COMFY_DIR", os.path.join(REPO, ".host", "ComfyUI"))


def _pack():
    if "temporal_restore" not in sys.modules:  # the pack as a package, without the repo on sys.path
        spec = importlib.util.spec_from_file_location("temporal_restore", os.path.join(REPO, "__init__.py"),
                                                      submodule_search_locations=[REPO])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["temporal_restore"] = mod
        spec.loader.exec_module(mod)
    from temporal_restore.pipelines import flow, token_merge
    return flow, token_merge


class Attn(torch.nn.Module):
    def __init__(self, c, heads=8):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = (torch.nn.Linear(c, c, bias=False) for _ in range(3))
        self.o = torch.nn.Linear(c, c)

    def forward(self, x):
        b, n, c = x.shape
        h = self.heads

        def split(t):
            return t.view(b, n, h, c // h).transpose(1, 2)
        y = torch.nn.functional.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)))
        return self.o(y.transpose(1, 2).reshape(b, n, c))


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--channels", type=int, default=320)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ratios", default="0.5,0.75,0.9")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 by default: on a shared 2-core box more threads make small ops 10x+ slower)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    flowlib, tm = _pack()
    torch.manual_seed(0)
    side = int(math.isqrt(a.tokens))
    h = w = side
    N, C, F = h * w, a.channels, a.frames
    attn = Attn(C).eval()
    base = torch.randn(1, N, C)
    # frames: the same content drifting by one token per frame plus noise (a plausible video chunk)
    x = torch.cat([base.view(1, h, w, C).roll(t, dims=2).view(1, N, C) + 0.3 * torch.randn(1, N, C) for t in range(F)])
    zero = torch.zeros(2, h, w)
    shift = torch.zeros(2, h, w)
    shift[0] = 1.0

    def flow_lookup(a_, b_):
        f = shift * (b_ - a_)
        return f, torch.zeros(1, h, w), torch.ones(1, h, w)

    ratios = [float(r) for r in a.ratios.split(",")]
    configs = {"stock per-frame": None}
    for r in ratios:
        configs[f"merge r={r} cosine"] = (r, "cosine")
        configs[f"merge r={r} flow"] = (r, "flow")
    times = {k: [] for k in configs}
    shapes = {}

    @torch.no_grad()
    def run(cfg):
        if cfg is None:
            return attn(x)
        r, mode = cfg
        plan = tm.plan_merge(x, 1, h, w, list(range(F)), r, chunk_size=F, mode=mode,
                             flow=flow_lookup if mode == "flow" else None, R=4.0, keyframe_mode="stride")
        merge, unmerge = plan
        m = merge(x)
        shapes[cfg] = tuple(m.shape)
        return unmerge(attn(m))

    for k, cfg in configs.items():  # warm-up
        run(cfg)
    for _ in range(a.repeats):
        for k, cfg in configs.items():
            times[k].append(_timed(lambda: run(cfg)))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"self-attention, chunk of {F} frames x {N} tokens x {C} channels, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {a.repeats}")
    print(f"  {'stock per-frame':28s} {med['stock per-frame'] * 1000:9.1f} ms   ratio 1.000")
    for k, cfg in configs.items():
        if cfg is None:
            continue
        print(f"  {k:28s} {med[k] * 1000:9.1f} ms   ratio {med[k] / med['stock per-frame']:.3f}   "
              f"merged tokens {shapes[cfg][1]} of {F * N}")

    # ---- DIS flow vs one UNet step of the tiny model --------------------------------------------
    sys.path.insert(0, COMFY)
    sys.path.insert(0, os.path.join(REPO, "tests"))
    import comfy.options  # noqa: F401
    from comfy.cli_args import args as cargs

    cargs.cpu = True
    import comfy.ldm.modules.diffusionmodules.openaimodel as oam
    import comfy.ops
    import tiny_models

    unet = oam.UNetModel(**tiny_models.unet_config(), dtype=torch.float32, device="cpu",
                         operations=comfy.ops.disable_weight_init).eval()
    tiny_models._init_params(unet, 0)
    from skimage import data, transform
    import numpy as np

    img = data.astronaut().astype(np.float32) / 255.0
    print("DIS medium flow per frame pair (fwd + bwd + fb check) vs one tiny-UNet step (cond+uncond, 1 frame)")
    for size in (128, 512):
        a0 = torch.from_numpy(transform.resize(img, (size, size)).astype(np.float32))
        a1 = torch.roll(a0, (1, 2), (0, 1))
        frames = torch.stack([a0, a1])
        lat = torch.randn(2, 4, size // 8, size // 8)
        ts = torch.full((2,), 500.0)
        ctx = torch.randn(2, 77, 64)
        t_flow, t_unet = [], []
        with torch.no_grad():
            unet(lat, ts, ctx)
            flowlib.estimate_flow(frames)
            for _ in range(a.repeats):
                t_flow.append(_timed(lambda: flowlib.estimate_flow(frames)))
                t_unet.append(_timed(lambda: unet(lat, ts, ctx)))
        f_, u_ = statistics.median(t_flow), statistics.median(t_unet)
        print(f"  {size}x{size}: flow {f_ * 1000:8.1f} ms, tiny UNet step {u_ * 1000:8.1f} ms, "
              f"flow / step = {f_ / u_:.2f}")
    print("  (a real SD1.5 UNet step is far more expensive than the tiny one, so the share there is smaller;"
          " flow is estimated once per clip, not per step)")


if __name__ == "__main__":
    main()
