"""Sampling-time overhead of each ZVRD component over stock sampling, measured side by side in one run.

Tiny SD1.5-shaped model (tests/tiny_models.py), 16 frames, CFG (cond + uncond chunks), Euler /
Euler ancestral. Times are the process CPU time of each sampling run with torch on one thread (on a
shared, oversubscribed machine wall time mostly measures the neighbours); runs are interleaved
round-robin; the median and min per configuration and the median of per-round ratios to the stock run
are reported.

    .venv/bin/python bench/bench_zvrd.py [--frames 16] [--size 128] [--steps 10] [--repeats 3]

Targets (issue): SLR <= 1.3x, NoiseShare <= 1.05x. On the tiny model the UNet is very cheap, so the
fixed per-step costs of the patches weigh far more than they would on a real SD1.5.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _comfy  # noqa: E402

REPO, COMFY = _comfy.REPO, _comfy.COMFY


def _setup():
    _comfy.setup()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    _setup()
    import torch

    torch.set_num_threads(1)  # oversubscribed OpenMP spinning makes timings meaningless on a shared box
    import comfy.sample
    import comfy.samplers
    import comfy.sd
    import tiny_models

    from temporal_restore.nodes import early_stop, noise_share, slr_attention, tc_guidance
    from temporal_restore.pipelines import noise_share as nsh
    from temporal_restore.pipelines.flow import estimate_flow

    tiny_models.register()
    cached = os.path.join(REPO, ".host", "test-work", "inprocess", "models")  # the test harness's cache
    paths = tiny_models.build(cached if os.path.isdir(cached) else os.path.join(tempfile.gettempdir(), "tr_bench_models"))
    print("tiny model ready", flush=True)
    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(paths["checkpoint_path"], output_vae=True, output_clip=True)
    enc = lambda t: clip.encode_from_tokens_scheduled(clip.tokenize(t))  # noqa: E731
    pos, neg = enc("a clean photo"), enc("")
    T, S, lat = a.frames, a.size, a.size // 8
    g = torch.Generator().manual_seed(0)
    # a moving texture so flow / trajectories have something to track
    yy, xx = torch.meshgrid(torch.arange(S + 2 * T, dtype=torch.float32), torch.arange(S + 2 * T, dtype=torch.float32), indexing="ij")
    tex = torch.stack([torch.sin(xx * 0.21 + yy * 0.05), torch.cos(yy * 0.17), torch.sin((xx + yy) * 0.11)], -1) * 0.5 + 0.5
    frames = torch.stack([tex[T:T + S, t:t + S] for t in range(T)])
    t0 = time.perf_counter()
    flow = estimate_flow(frames, out_size=(lat, lat))
    t_flow = time.perf_counter() - t0
    latent = torch.randn(T, 4, lat, lat, generator=g)
    noise = torch.randn(T, 4, lat, lat, generator=g)
    sig = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", a.steps).cpu()

    def run(m, sampler):
        guider = comfy.samplers.CFGGuider(m)
        guider.set_conds(pos, neg)
        guider.set_cfg(2.0)
        t = time.process_time()
        guider.sample(noise.clone(), latent.clone(), sampler, sig.clone(), disable_pbar=True, seed=0)
        return time.process_time() - t

    eul = comfy.samplers.sampler_object("euler")
    anc = comfy.samplers.sampler_object("euler_ancestral")
    share = nsh.NoiseShare(0, flow)
    configs = {
        "stock euler": (model, eul),
        "SLR (x0 flow + input flow)": (slr_attention.install_slr(model, flow=flow)[0], eul),
        "SLR (input flow only)": (slr_attention.install_slr(model, flow=flow, x0_flow=False)[0], eul),
        "SLR cross-neighbour only": (slr_attention.install_slr(model, trajectory_start=1.0)[0], eul),
        "TC guidance (input flow)": (tc_guidance.install_tc_guidance(model, 0.1, 0.5, flow=flow)[0], eul),
        "TC guidance (x0 flow)": (tc_guidance.install_tc_guidance(model, 0.1, 0.5)[0], eul),
        "stock euler_ancestral": (model, anc),
        "NoiseShare euler_ancestral": (model, noise_share.NoiseShareSampler(anc, share)),
        "EarlyStop 0.8": (model, early_stop.EarlyStopSampler(eul, 0.8)),
    }
    for k, (m, s) in configs.items():  # warm-up (first-call costs, DIS init)
        print(f"  warm-up {k}: {run(m, s):.2f}s", flush=True)
    times = {k: [] for k in configs}
    for _ in range(a.repeats):
        for k, (m, s) in configs.items():
            times[k].append(run(m, s))
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}  # least disturbed by neighbours on a shared box
    print(f"ZVRD overhead, tiny SD1.5 model, {T} frames {S}x{S} (latent {lat}x{lat}), {a.steps} steps, CFG 2, "
          f"median and min CPU time of {a.repeats} interleaved runs (1 thread); input flow estimation (once per clip, not counted): {t_flow:.2f}s")
    ref = {"stock euler_ancestral": "stock euler_ancestral", "NoiseShare euler_ancestral": "stock euler_ancestral"}
    print(f"  {'':32s} {'median':>8s}  ratio   {'min':>8s}  ratio   paired")
    for k, v in med.items():
        base = ref.get(k, "stock euler")
        # each round's time over the same round's stock run: slow drifts of the machine cancel
        paired = statistics.median(t / b for t, b in zip(times[k], times[base]))
        print(f"  {k:32s} {v:7.3f}s  {v / med[base]:5.2f}x   {best[k]:7.3f}s  {best[k] / best[base]:5.2f}x   {paired:5.2f}x")
    # NoiseShare's own work, timed inside the run (robust against machine noise): the per-step sampler
    spent = [0.0]

    class TimedShare(nsh.NoiseShare):
        def step_sampler(self, x, frame_index=None):
            inner = super().step_sampler(x, frame_index)

            def timed(*args):
                t = time.process_time()
                out = inner(*args)
                spent[0] += time.process_time() - t
                return out
            return timed

    total = run(model, noise_share.NoiseShareSampler(anc, TimedShare(0, flow)))
    print(f"  NoiseShare step-noise work inside one run: {spent[0] * 1000:.1f} ms of {total:.3f}s "
          f"= {1 + spent[0] / max(total - spent[0], 1e-9):.3f}x")
    print("targets: SLR <= 1.3x, NoiseShare <= 1.05x")


if __name__ == "__main__":
    main()
