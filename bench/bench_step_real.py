"""One sampling step at full SD1.5 shapes: each per-step patch vs stock, side by side (prints ratios).

The full-size random SD1.5 + ControlNet of bench/_real_model.py is loaded once in an in-process ComfyUI;
``--frames`` frames of the bench clip at each ``--sizes`` square are VAE-encoded and ControlNet-conditioned
(ControlNetApplyAdvanced, strength 1) exactly as the bundled workflows do. Each variant is a MODEL made
by the pack's own nodes (run through ComfyUI, with the workflow's settings):

* stock: CheckpointLoaderSimple's model;
* sw_cfa: TR_SWCFAPatch (tdm_restore: sw_cfa, radius 3, all blocks);
* slr: TR_SLRAttention on TR_FlowEstimate's flow (zvrd_restore settings);
* diffir2vr: TR_LatentWarp -> TR_TokenMerge on the same flow (diffir2vr_restore settings);
* diffir2vr_auto: the same with TR_TokenMerge levels "auto" (merges only where the joint attention pays);
* ilt: the stock model sampled by TR_ILTChunker's ``chunked_sample`` (mode post, ``--ilt-window`` /
  ``--ilt-overlap``: several windows on the bench frames, so the blending runs).

One model evaluation is what ComfyUI's sampler makes per step: a custom KSAMPLER calls the sampler's
model (CFGGuider -> sampling_function -> ControlNet + UNet with cond and uncond in one batch, pre/post-CFG
functions, the patches through the ModelPatcher) at a chosen sigma of a 20-step ``normal`` schedule at
denoise 0.75 (diffir2vr_restore's), and the CPU time of that call is taken; setup (model load, conds) is
not. "early" is the first step (latent warping and the merge's early ratio active), "late" the last step
(SLR's trajectory attention active, token merging's annealed ratio). Variants alternate within each
repeat; the median over repeats is reported, per UNet frame-evaluation (one frame of one of cond / uncond)
so ILT's overlapping windows compare fairly. "peak +GiB" is the largest rise of the process RSS during
the evaluation (sampled every 10 ms) over its RSS just before; "process peak" the RSS at that peak (all
models resident).

    flock /work/bigmem.lock nice -n 10 .venv/bin/python bench/bench_step_real.py [--sizes 256,512] \\
        [--frames 8] [--repeats 2] [--threads 2]
    .venv/bin/python bench/bench_step_real.py --quick      # tiny model, 64 px, 4 frames: a smoke run

TR_FlowEstimate's own time (once per clip, not per step) is printed under the table.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_real_shapes as brs  # noqa: E402

VARIANTS = ("stock", "sw_cfa", "slr", "diffir2vr", "diffir2vr_auto", "ilt")
LATE = ("slr", "diffir2vr", "diffir2vr_auto")  # variants whose cost depends on the step: timed at the last step too
CFG = 4.0


def graph(size: int, frames: int, models: dict) -> dict:
    """API prompt: the models, the encoded frames, ControlNet conditioning, flow and every patched MODEL."""
    p = brs.stock_prompt(size, frames, 1, CFG, models)
    for nid in ("12", "13", "99"):
        p.pop(nid, None)
    p["20"] = {"class_type": "TR_FlowEstimate", "inputs": {"images": ["2", 0], "backend": "dis", "dis_preset": "medium",
                                                            "keyframe_stride": 8, "grid": "latent (1/8)"}}
    p["21"] = {"class_type": "TR_SWCFAPatch", "inputs": {"model": ["3", 0], "mode": "sw_cfa", "radius": 3,
                                                          "blocks": "all"}}
    p["22"] = {"class_type": "TR_SLRAttention", "inputs": {"model": ["3", 0], "flow": ["20", 0],
                                                            "trajectory_start": 0.9, "strength": 1.0,
                                                            "search_radius": 3, "patch_radius": 1, "x0_flow": True}}
    p["23"] = {"class_type": "TR_LatentWarp", "inputs": {"model": ["3", 0], "flow": ["20", 0], "fraction": 0.1,
                                                          "batch_size": 10, "keyframe_mode": "middle", "seed": 0,
                                                          "strength": 1.0, "keyframe_flow": "direct"}}
    p["24"] = {"class_type": "TR_TokenMerge", "inputs": {
        "model": ["23", 0], "flow": ["20", 0], "ratio": 0.75, "chunk_size": 10, "keyframe_mode": "middle", "seed": 0,
        "anneal_start": 0.0, "anneal_end": 1.0, "delta": 1.0, "radius": 4.0, "down_blocks": "flow",
        "up_blocks": "cosine", "pad_bottom": 0, "pad_right": 0, "merge_mode": "replace", "levels": "top2"}}
    p["25"] = {"class_type": "TR_TokenMerge", "inputs": {**p["24"]["inputs"], "levels": "auto"}}
    return p


class PeakRSS:
    """Largest process RSS (bytes) seen while the block runs, sampled from /proc/self/statm."""

    def __enter__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.before = self.peak = self._rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _poll(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())


def timed_sampler(points: list[str], out: list):
    """KSAMPLER whose sampler function evaluates the model once at each of ``points`` ("early": sigma of the
    first step, "late": of the last step) and appends (point, CPU seconds, frame-evals, peak RSS rise)."""
    import comfy.model_base
    import comfy.samplers

    def fn(model, x, sigmas, extra_args=None, callback=None, disable=None, *args, **kwargs):
        s_in = x.new_ones([x.shape[0]])
        for point in points:
            sigma = sigmas[0] if point == "early" else sigmas[-2]
            seen = [0]
            original = comfy.model_base.BaseModel.apply_model

            def counting(self, xx, *a, **k):
                seen[0] += int(xx.shape[0])
                return original(self, xx, *a, **k)

            comfy.model_base.BaseModel.apply_model = counting  # bench process only: counts frame-evaluations
            try:
                with PeakRSS() as mem:
                    t0 = time.process_time()
                    model(x, sigma * s_in, **(extra_args or {}))
                    dt = time.process_time() - t0
            finally:
                comfy.model_base.BaseModel.apply_model = original
            out.append((point, dt, seen[0], (mem.peak - mem.before) / 2 ** 30, mem.peak / 2 ** 30))
        return x

    return comfy.samplers.KSAMPLER(fn)


def evaluate(name: str, models: dict, pos, neg, latent: dict, ilt: tuple, late=LATE, early=True) -> dict:
    """Time ``name``'s evaluation(s); returns {point: (seconds per frame-eval, frame-evals, peak rise GiB)}.
    ``ilt``: (window, overlap, the chunked_sample of the pack as ComfyUI loaded it)."""
    import comfy.samplers
    import torch

    model = models[name]
    points = (["early"] if early else []) + (["late"] if name in late else [])
    out: list = []
    sampler = timed_sampler(points, out)
    sigmas = comfy.samplers.KSampler(model, steps=20, device=model.load_device, sampler="euler",
                                     scheduler="normal", denoise=0.75).sigmas
    with torch.inference_mode():  # as ComfyUI's executor runs nodes
        if name == "ilt":
            ilt[2](model, pos, neg, latent, 0, CFG, sampler, sigmas, window=ilt[0], overlap=ilt[1], mode="post",
                   noise_mode="rescheduled", carry_state=True, progress=False)
        else:
            guider = comfy.samplers.CFGGuider(model)
            guider.set_conds(pos, neg)
            guider.set_cfg(CFG)
            x = latent["samples"]
            noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
            guider.sample(noise, x, sampler, sigmas, seed=0)
    res = {}
    for point in points:
        got = [r for r in out if r[0] == point]
        secs, evals = sum(r[1] for r in got), sum(r[2] for r in got)
        res[point] = (secs / max(evals, 1), evals, max(r[3] for r in got), max(r[4] for r in got))
    return res


def run_size(host, models_spec: dict, size: int, frames: int, repeats: int, ilt: tuple, a) -> tuple:
    prompt = graph(size, frames, models_spec)
    t0 = time.process_time()
    host.run(prompt, outputs=["20"])
    flow_s = time.process_time() - t0
    o = host.run(prompt, outputs=["3", "4", "8", "21", "22", "24", "25"])["outputs"]
    models = {"stock": o["3"][0], "sw_cfa": o["21"][0], "slr": o["22"][0], "diffir2vr": o["24"][0],
              "diffir2vr_auto": o["25"][0]}
    models["ilt"] = models["stock"]
    pos, neg = o["8"][0], o["8"][1]
    latent = o["4"][0]
    variants = a.variants.split(",")
    late = a.late.split(",")
    runs = {v: [] for v in variants}
    if not a.no_warmup:
        evaluate("stock", models, pos, neg, latent, ilt)  # warm-up: loads the models, first-touch allocations
    for r in range(repeats):
        order = variants if r % 2 == 0 else variants[::-1]
        for v in order:
            early = v == "stock" or v not in a.late_only.split(",")
            runs[v].append(evaluate(v, models, pos, neg, latent, ilt, late, early))
            print(f"  {size}px repeat {r + 1} {v}: {runs[v][-1]}", flush=True)
    return runs, flow_s


def table(results: list, a) -> str:
    lines = [f"one sampling step (cond + uncond, ControlNet, CFG {CFG}) per UNet frame-evaluation, "
             f"{'tiny model' if a.quick else 'full-size random SD1.5 + ControlNet'}, {a.frames} frames, {a.threads} threads, {a.attention} attention, CPU time, median of {a.repeats} "
             f"interleaved repeats; ilt: window {a.ilt_window} overlap {a.ilt_overlap} (mode post)",
             "| size | variant | step | s / frame-eval | vs stock | frame-evals | peak RSS rise GiB (stock) "
             "| process peak RSS GiB |",
             "|---|---|---|---|---|---|---|---|"]
    for size, runs, flow_s in results:
        ref = statistics.median(r["early"][0] for r in runs["stock"])
        ref_mem = statistics.median(r["early"][2] for r in runs["stock"])
        for v in runs:
            for point in runs[v][0]:
                s = statistics.median(r[point][0] for r in runs[v])
                mem = statistics.median(r[point][2] for r in runs[v])
                peak = max(r[point][3] for r in runs[v])
                lines.append(f"| {size} | {v} | {point} | {s:.3f} | {s / ref:.3f}x | {runs[v][0][point][1]} "
                             f"| {mem:.2f} ({ref_mem:.2f}) | {peak:.2f} |")
        lines.append(f"| {size} | (TR_FlowEstimate, once per clip) | - | {flow_s:.2f} s total | - | - | - | - |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ilt-window", type=int, default=4)
    ap.add_argument("--ilt-overlap", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="evaluated in this order (reversed every other "
                    "repeat); stock is the reference")
    ap.add_argument("--late", default=",".join(LATE), help="variants also timed at the last step")
    ap.add_argument("--late-only", default="", help="variants timed at the last step only (saves time at 512)")
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed stock evaluation first")
    ap.add_argument("--attention", choices=("pytorch", "sub_quad"), default="pytorch",
                    help="ComfyUI attention backend (bench_real_shapes.py's docstring); the stop-3 table used sub_quad")
    ap.add_argument("--quick", action="store_true", help="tiny model, 64 px, 4 frames, 1 repeat: a smoke run")
    a = ap.parse_args()
    if a.quick:
        a.sizes, a.frames, a.repeats, a.threads, a.ilt_window, a.ilt_overlap = "64", 4, 1, 1, 2, 1
    models_spec = brs._models(a.quick)
    host = brs.open_host({"threads": a.threads, "quick": a.quick, "models": models_spec, "attention": a.attention})
    chunked = sys.modules[host.node("TR_ILTChunker").__module__].chunked_sample  # the pack as ComfyUI loaded it
    results = []
    for size in [int(s) for s in a.sizes.split(",")]:
        runs, flow_s = run_size(host, models_spec, size, a.frames, a.repeats, (a.ilt_window, a.ilt_overlap, chunked), a)
        results.append((size, runs, flow_s))
        print(table(results[-1:], a), flush=True)
    if len(results) > 1:
        print("\n" + table(results, a))


if __name__ == "__main__":
    main()
