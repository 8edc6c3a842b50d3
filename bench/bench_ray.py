"""Benchmark: `tr_cli stream --ray` with 2 workers vs 1 on the same clip, and the seams of segmenting.

One local Ray cluster (``--cpus``, default 2) for the whole run; each run is a `python -m tr_cli stream` with
its own CPU ComfyUI per worker (``--workers-per-node``), the bundled ``demo_restore`` workflow (embedded demo
model, no download) on ``samples/sample_clip_noisy.mp4`` looped to ``--frames`` frames, lossless .mkv output.
Prints, measured in this one run:

* restored frames per second of 1 and of 2 workers (one math thread per ComfyUI in both) (the run's own clip-progress rate: restore time only,
  servers' start-up excluded; overlap frames count) and their ratio; the wall time of each run;
* whether the outputs of 1 and 2 workers are bit-identical (they must be: same segmenting);
* the seam ratio (``pipelines.metrics.seam_ratio``: flicker across the segment seams / flicker elsewhere,
  1 = invisible) of the segmented output (the same for 1 and 2 workers, sequential or parallel) and of the
  same clip restored in one segment (``--segment`` = all frames: every frame sees its SW-CFA neighbours,
  nothing is cut), at the same seam positions.

    .venv/bin/python bench/bench_ray.py [--frames 28 --segment 10 --context 4 --steps 4]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import time
from fractions import Fraction

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIP = os.path.join(REPO, "samples", "sample_clip_noisy.mp4")
STEPS = ("DDIM inversion (source prompt).steps", "DDIM restore (task prompt).steps")


def looped_clip(dst: str, frames: int) -> None:
    """The sample clip played forward then backward until ``frames`` frames, as lossless FFV1 (no audio)."""
    import av

    with av.open(CLIP) as c:
        src = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    order = src + src[-2:0:-1]
    out = [order[i % len(order)] for i in range(frames)]
    with av.open(dst, "w") as c:
        vs = c.add_stream("ffv1", rate=Fraction(8))
        vs.width, vs.height, vs.pix_fmt = out[0].shape[1], out[0].shape[0], "bgr0"
        for fr in out:
            for p in vs.encode(av.VideoFrame.from_ndarray(fr, format="rgb24")):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)


def read_frames(path: str) -> np.ndarray:
    import av

    with av.open(path) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def stream(inp: str, out: str, address: str, workers: int, a) -> tuple[float, float]:
    """(frames/s from the run's progress line, wall seconds) of one `stream --ray` run."""
    cmd = [sys.executable, "-m", "tr_cli", "stream", inp, "-o", out, "-w", "demo_restore", "--ray", address,
           "--workers-per-node", str(workers), "--cpu", "--segment", str(a.segment), "--context", str(a.context)]
    for s in STEPS:
        cmd += ["--set", f"{s}={a.steps}"]
    # one math thread per server in both runs (forwarded to the workers' servers): torch's CPU sums depend on
    # the thread count, so 1 and 2 workers only give the same bits with the same count
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.time()
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if res.returncode != 0:
        sys.exit(f"stream with {workers} workers failed:\n{res.stderr[-3000:]}")
    rates = re.findall(r"([0-9.]+) frames/s on", res.stderr)
    return float(rates[-1]), wall


def seam_ratio(frames: np.ndarray, boundaries: list[int]) -> float:
    """pipelines.metrics.seam_ratio, the pipelines package loaded by path (it never imports comfy)."""
    if "tr_pipelines" not in sys.modules:
        spec = importlib.util.spec_from_file_location("tr_pipelines", os.path.join(REPO, "pipelines", "__init__.py"),
                                                      submodule_search_locations=[os.path.join(REPO, "pipelines")])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["tr_pipelines"] = mod
        spec.loader.exec_module(mod)
    import torch

    from tr_pipelines import metrics

    return metrics.seam_ratio(torch.from_numpy(frames).double() / 255.0, boundaries)


def seams(frames: int, segment: int, context: int) -> list[int]:
    """Seam positions b (pair (b-1, b)) of the segmented output: segment k+1 starts at s = (k+1)(segment -
    context) and the Eq. 4 blend hands over from segment k to k+1 on frames [s, s + context): the pairs inside
    it (b = s+1 .. s+context-1; b = s when context < 2, a hard cut)."""
    step = segment - context
    out = []
    for s in range(step, frames - context, step):
        out += list(range(s + 1, s + context)) if context >= 2 else [s]
    return [b for b in out if b < frames]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=28, help="default: 4 segments of 10 (an even share for 2)")
    ap.add_argument("--segment", type=int, default=10)
    ap.add_argument("--context", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4, help="DDIM inversion and restore steps")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    a = ap.parse_args(argv)
    import ray

    ctx = ray.init(num_cpus=a.cpus, object_store_memory=200 * 1024 * 1024, include_dashboard=False,
                   log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="bench_ray_") as d:
            inp = os.path.join(d, "in.mkv")
            looped_clip(inp, a.frames)
            address = ctx.address_info["address"]
            outs, rates = {}, {}
            for workers in (1, 2):
                outs[workers] = os.path.join(d, f"out{workers}.mkv")
                rates[workers] = stream(inp, outs[workers], address, workers, a)
            whole = os.path.join(d, "whole.mkv")
            whole_args = argparse.Namespace(**{**vars(a), "segment": a.frames, "context": 0})
            stream(inp, whole, address, 1, whole_args)
            one, two, ref = (read_frames(p) for p in (outs[1], outs[2], whole))
    finally:
        ray.shutdown()
    b = seams(a.frames, a.segment, a.context)
    (r1, w1), (r2, w2) = rates[1], rates[2]
    print(f"demo_restore, {a.frames} frames {one.shape[2]}x{one.shape[1]}, {a.steps}+{a.steps} DDIM steps, segment "
          f"{a.segment} context {a.context}, Ray on {a.cpus} CPUs, {os.cpu_count()} cores on this machine")
    print(f"1 worker : {r1:.2f} frames/s (wall {w1:.0f}s)")
    print(f"2 workers: {r2:.2f} frames/s (wall {w2:.0f}s)")
    print(f"ratio 2/1: {r2 / r1:.2f}x")
    print(f"1 vs 2 workers bit-identical: {one.shape == two.shape and np.array_equal(one, two)}")
    print(f"seam ratio at segment seams {b}: segmented {seam_ratio(one, b):.3f} (1 and 2 workers alike), "
          f"whole clip in one segment {seam_ratio(ref, b):.3f}")


if __name__ == "__main__":
    main()
