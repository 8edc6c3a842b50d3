"""TE-3D decode vs the stock VAE decode at full SD1.5 VAE shapes (issue 20), side by side (prints ratios).

The full-size SD KL-f8 VAE (84 M) of the bench's random SD1.5 checkpoint (bench/_real_model.py, built once
into ``.host/bench-cache``) decodes the same random latent clip ``[frames, 4, size/8, size/8]`` three ways:
* ``stock``: ComfyUI's ``VAE.decode`` (what VAEDecode runs);
* ``te3d``: ``TR_TE3DVAEDecode`` mode te3d without temporal weights: every temporal layer is an exact
  identity and is skipped, so the output must equal a 2D decode (checked: max |difference| is printed);
* ``te3d_weights``: the same with temporal weights (every temporal tensor seeded random, scaled 0.02, so
  the layers run and change the output): the cost of DiffVSR's temporal layers on this VAE.

Each run is a fresh subprocess (peak RSS its own); variants alternate (stock, te3d, te3d_weights, stock, ...).
One temporal chunk covers the clip (chunk = frames), as stock decodes the clip at once. A 1-frame 64 px decode
warms each process first (VAE load, decoder build, weights read), as a workflow's VAEEncode has loaded the VAE.

    .venv/bin/python bench/bench_te3d_real.py [--sizes 256,512] [--frames 8] [--repeats 2] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import _comfy  # bench/ helper (this script's folder is on sys.path)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CACHE = os.environ.get("TR_BENCH_CACHE", os.path.join(REPO, ".host", "bench-cache"))
VARIANTS = ("stock", "te3d", "te3d_weights")


def _vae(ckpt: str):
    import safetensors.torch

    import comfy.sd

    sd = safetensors.torch.load_file(ckpt)
    sd = {k[len("first_stage_model."):]: v for k, v in sd.items() if k.startswith("first_stage_model.")}
    return comfy.sd.VAE(sd=sd)


def _weights_file(vae, path: str) -> str:
    """Random temporal weights for this VAE's TE-3D decoder (nonzero, so no layer is an identity)."""
    import safetensors.torch
    import torch

    from temporal_restore.nodes.te3d_vae import build_decoder
    from temporal_restore.pipelines import te3d_vae

    model = build_decoder(vae, "te3d")
    gen = torch.Generator().manual_seed(0)
    sd = {k: (torch.randn(v.shape, generator=gen) * 0.02).to(v.dtype).contiguous()
          for k, v in te3d_vae.temporal_state_dict(model).items()}
    safetensors.torch.save_file(sd, path)
    return path


def worker(spec: dict) -> dict:
    import resource

    import torch

    torch.set_num_threads(spec["threads"])
    _comfy.setup()
    from temporal_restore.nodes.te3d_vae import te3d_decode

    vae = _vae(spec["checkpoint"])
    z = torch.randn(spec["frames"], 4, spec["size"] // 8, spec["size"] // 8, generator=torch.Generator().manual_seed(1))
    weights = ""
    if spec["variant"] == "te3d_weights":
        weights = _weights_file(vae, os.path.join(CACHE, f"te3d_random_{spec['size']}.safetensors"))

    @torch.inference_mode()  # as ComfyUI's executor runs every node (no autograd graph kept)
    def decode(lat):
        if spec["variant"] == "stock":
            return vae.decode(lat)
        return te3d_decode(vae, lat, "te3d", chunk=lat.shape[0], overlap=0, weights=weights)

    decode(z[:1, :, :8, :8])  # warm-up: model load, decoder build and weights read are not the decode's cost
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    t0 = time.process_time()
    out = decode(z)
    dt = time.process_time() - t0
    res = {"s": dt, "rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, "rss_before": base}
    if spec["variant"] != "stock":  # the 2D decode of the same latent, to show what the temporal layers change
        with torch.inference_mode():
            ref = vae.decode(z)
        res["max_diff"] = float((out.float() - ref.float()).abs().max())
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print("RESULT " + json.dumps(worker(json.loads(a.worker))), flush=True)
        return
    sys.path.insert(0, os.path.join(REPO, "tests"))
    _comfy.setup()
    import _real_model

    ckpt = _real_model.build(CACHE)["checkpoint_path"]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    rows = []
    for size in [int(s) for s in a.sizes.split(",")]:
        res = {v: [] for v in VARIANTS}
        for _ in range(a.repeats):
            for v in VARIANTS:
                spec = {"variant": v, "size": size, "frames": a.frames, "threads": a.threads, "checkpoint": ckpt}
                res[v].append(_comfy.child_result([sys.executable, os.path.abspath(__file__), "--worker",
                                                   json.dumps(spec)], env=env))
                print(f"  {size}px {v}: {res[v][-1]}", flush=True)
        rows.append((size, res))
    print(f"\nVAE decode of {a.frames} frames, full-size SD KL-f8 VAE (random weights), {a.threads} threads, CPU time, "
          f"median of {a.repeats} interleaved repeats")
    print("| size | variant | decode s | vs stock | peak RSS GiB (rise over load) | max abs diff vs 2D decode |")
    print("|---|---|---|---|---|---|")
    for size, res in rows:
        st = statistics.median(r["s"] for r in res["stock"])
        for v in VARIANTS:
            s = statistics.median(r["s"] for r in res[v])
            rss = statistics.median(r["rss_gib"] for r in res[v])
            rise = statistics.median(r["rss_gib"] - r["rss_before"] for r in res[v])
            diff = "-" if v == "stock" else f"{max(r['max_diff'] for r in res[v]):.3g}"
            print(f"| {size} | {v} | {s:.2f} | {s / st:.2f}x | {rss:.2f} ({rise:+.2f}) | {diff} |")


if __name__ == "__main__":
    main()
