"""Benchmark: SW-CFA attention time / stock self-attention time, measured side by side in one run.

Shapes are SD1.5-like attn1 calls: 16 frames, 8 heads, 4096 tokens x 320 channels (64x64 latent,
first level) and 1024 tokens x 640 channels (second level). Stock = torch SDPA attention the way
ComfyUI's ``attention_pytorch`` calls it. Runs are interleaved; the ratio of the minima (least
disturbed by other processes on a shared machine) and of the medians are both printed, plus the
averaging alone (``window_mean_only``: both K and V) as a fraction of stock attention, and the ratio for
the whole attn1 layer (q/k/v/out projections + attention, what a UNet step pays; the projections are
the same for both, so this ratio is the smaller one).

    .venv/bin/python bench/bench_sw_cfa.py [--repeats 5] [--frames 16] [--quick] [--all-modes]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_pack():
    """Import the repo as package ``temporal_restore`` (the repo root must not go on sys.path)."""
    if "temporal_restore" not in sys.modules:
        spec = importlib.util.spec_from_file_location("temporal_restore", os.path.join(REPO, "__init__.py"),
                                                      submodule_search_locations=[REPO])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["temporal_restore"] = mod
        spec.loader.exec_module(mod)
    from temporal_restore.pipelines import sw_cfa

    return sw_cfa


def _time(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    dt = time.perf_counter() - t
    del out
    return dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--radius", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="quarter token counts (smoke run)")
    ap.add_argument("--all-modes", action="store_true", help="also time the first_frame mode")
    args = ap.parse_args()
    sw_cfa = _load_pack()
    torch.manual_seed(0)
    shapes = [(4096, 320), (1024, 640)]
    if args.quick:
        shapes = [(t // 4, c) for t, c in shapes]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, frames {args.frames}, heads {args.heads}, "
          f"N={args.radius}, repeats {args.repeats}")
    for tokens, ch in shapes:
        q, k, v = (torch.randn(args.frames, tokens, ch) for _ in range(3))
        stock = lambda: sw_cfa.sdpa_attention(q, k, v, args.heads)  # noqa: E731
        runs = {
            "sw_cfa": lambda: sw_cfa.sw_cfa_attention(q, k, v, args.heads, n_chunks=1, mode="sw_cfa", radius=args.radius),
            "window_mean_only": lambda: (sw_cfa.window_mean(k, 1, args.radius), sw_cfa.window_mean(v, 1, args.radius)),
        }
        if args.all_modes:
            runs["first_frame"] = lambda: sw_cfa.sw_cfa_attention(q, k, v, args.heads, n_chunks=1, mode="first_frame")
        # the whole attn1 layer as the UNet runs it (SD1.5: to_q/to_k/to_v without bias, to_out with bias)
        proj = [torch.nn.Linear(ch, ch, bias=False) for _ in range(3)] + [torch.nn.Linear(ch, ch)]
        x = torch.randn(args.frames, tokens, ch)

        def layer(attn):
            return lambda: proj[3](attn(proj[0](x), proj[1](x), proj[2](x)))

        runs["layer_stock"] = layer(lambda q_, k_, v_: sw_cfa.sdpa_attention(q_, k_, v_, args.heads))
        runs["layer_sw_cfa"] = layer(lambda q_, k_, v_: sw_cfa.sw_cfa_attention(q_, k_, v_, args.heads, n_chunks=1,
                                                                               mode="sw_cfa", radius=args.radius))
        with torch.inference_mode():
            stock(); [f() for f in runs.values()]  # warm-up
            times = {"stock": []} | {name: [] for name in runs}
            for _ in range(args.repeats):
                times["stock"].append(_time(stock))
                for name, f in runs.items():
                    times[name].append(_time(f))
        med = {name: statistics.median(ts) for name, ts in times.items()}
        best = {name: min(ts) for name, ts in times.items()}
        print(f"\n{tokens} tokens x {ch} channels: stock SDPA min {best['stock'] * 1e3:.1f} ms, "
              f"median {med['stock'] * 1e3:.1f} ms")
        for name in [n for n in runs if not n.startswith("layer_")]:
            print(f"  {name:17s} min {best[name] * 1e3:8.1f} ms  ratio {best[name] / best['stock']:.3f}   "
                  f"median {med[name] * 1e3:8.1f} ms  ratio {med[name] / med['stock']:.3f}")
        print(f"  attn1 layer (projections + attention): sw_cfa / stock  min ratio "
              f"{best['layer_sw_cfa'] / best['layer_stock']:.3f}   median ratio "
              f"{med['layer_sw_cfa'] / med['layer_stock']:.3f}")


if __name__ == "__main__":
    main()
