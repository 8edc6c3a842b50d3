"""Cost of token merging's joint attention against per-frame attention at one layer (prints seconds).

TR_TokenMerge (levels top2 / all) merges the frames of a chunk into ONE attention sequence; attention is
quadratic in its length, so at low (annealed) ratios the merged layer costs more than per-frame attention.
This times ``pipelines.token_merge.plan_merge`` (cosine matching, replace mode, chunk 10) + merge + SDPA on
the merged sequence + unmerge against SDPA per frame, on random ``[2 x frames, tokens, channels]`` (cond +
uncond) at the given ratios. One thread by default; no model.

    .venv/bin/python bench/bench_joint_attention.py [--side 64] [--channels 320] [--frames 8] \\
        [--ratios 0.75,0.3,0.06]
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _comfy  # noqa: E402

_comfy.setup()
from temporal_restore.pipelines import token_merge as tm  # noqa: E402


def attention(x, heads=8):
    B, N, C = x.shape
    q = x.view(B, N, heads, C // heads).transpose(1, 2)
    return F.scaled_dot_product_attention(q, q, q).transpose(1, 2).reshape(B, N, C)


def timed(fn, *args, **kwargs):
    t = time.process_time()
    out = fn(*args, **kwargs)
    return out, time.process_time() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", type=int, default=64, help="token grid side (64: SD1.5 first level at 512 px)")
    ap.add_argument("--channels", type=int, default=320)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--ratios", default="0.75,0.3,0.06")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    h = w = a.side
    x = torch.randn(2 * a.frames, h * w, a.channels, generator=torch.Generator().manual_seed(0))
    _, t_full = timed(attention, x)
    print(f"{h}x{w} tokens x {a.channels} ch, {a.frames} frames x cond+uncond: per-frame attention {t_full:.3f} s")
    for r in (float(s) for s in a.ratios.split(",")):
        plan, t_plan = timed(tm.plan_merge, x, 2, h, w, list(range(a.frames)), r, chunk_size=10, mode="cosine",
                             R=4.0, keyframe_mode="middle", merge_mode="replace", num_frames=a.frames)
        merge, unmerge = plan
        m, t_merge = timed(merge, x)
        o, t_attn = timed(attention, m)
        _, t_un = timed(unmerge, o)
        total = t_plan + t_merge + t_attn + t_un
        cost = tm.joint_cost([a.frames], h * w, r, a.channels)
        print(f"r {r}: merged sequence {m.shape[1]} tokens, joint_cost {cost:.2f}; "
              f"plan {t_plan:.3f} + merge {t_merge:.3f} + attention {t_attn:.3f} + unmerge {t_un:.3f} = {total:.3f} s "
              f"({total / t_full:.2f}x per-frame)")


if __name__ == "__main__":
    main()
