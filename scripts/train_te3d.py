"""Fine-tune the temporal layers of a TE-3D VAE decoder (DiffVSR §3.3) on video clips.

The 2D decoder comes from a checkpoint (``first_stage_model.*`` keys, e.g. an SD1.5 checkpoint or
the tiny test checkpoint) or a standalone VAE file; only the inserted temporal layers are trained,
with L1 reconstruction + temporal consistency (L1 between consecutive-frame differences), on
latents encoded from clean clips and jittered per frame (the frame-wise inconsistency a diffusion
restorer leaves). Without ``--clips`` a synthetic moving-pattern clip is used (smoke test / demo).

    .venv/bin/python scripts/train_te3d.py --checkpoint tests/.../tiny_sd15.safetensors --steps 200 \
        --out models/vae/te3d_temporal.safetensors [--clips a.mp4 b.mp4]

The output holds only the temporal layers; load it in TR_TE3DVAEDecode (``temporal_weights``).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMFY = os.environ.get("TR_COMFY_DIR", os.path.join(REPO, ".host", "ComfyUI"))


def _pack():
    """The repo as package ``temporal_restore`` without putting the repo root on sys.path."""
    if "temporal_restore" not in sys.modules:
        spec = importlib.util.spec_from_file_location("temporal_restore", os.path.join(REPO, "__init__.py"),
                                                      submodule_search_locations=[REPO])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["temporal_restore"] = mod
        spec.loader.exec_module(mod)
    from temporal_restore.pipelines import te3d_vae

    return te3d_vae


def load_vae(path: str):
    if COMFY not in sys.path:
        sys.path.append(COMFY)
    import comfy.options  # noqa: F401  (ComfyUI's args stay unparsed: set the device below)
    from comfy.cli_args import args

    if not torch.cuda.is_available():
        args.cpu = True
    import comfy.sd
    import comfy.utils

    sd = comfy.utils.load_torch_file(path)
    if any(k.startswith("first_stage_model.") for k in sd):
        sd = {k[len("first_stage_model."):]: v for k, v in sd.items() if k.startswith("first_stage_model.")}
    vae = comfy.sd.VAE(sd=sd)
    return vae.first_stage_model.float().cpu().eval()


def read_clip(path: str, frames: int, size: int) -> torch.Tensor:
    import av
    import numpy as np

    out = []
    with av.open(path) as c:
        for f in c.decode(video=0):
            out.append(torch.from_numpy(np.asarray(f.to_ndarray(format="rgb24"))).permute(2, 0, 1).float() / 255)
            if len(out) == frames:
                break
    x = torch.stack(out)
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def encode_raw(model, x01: torch.Tensor) -> tuple[torch.Tensor, torch.nn.Module, torch.Tensor]:
    """(latents, 2D decoder, target in the decoder's output range) for images in [0, 1]."""
    with torch.no_grad():
        if hasattr(model, "taesd_decoder"):
            return model.taesd_encoder(x01), model.taesd_decoder, x01
        z = model.encode(x01 * 2 - 1)
        return model.post_quant_conv(z) if hasattr(model, "post_quant_conv") else z, model.decoder, x01 * 2 - 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, help="checkpoint or VAE .safetensors holding the 2D VAE")
    ap.add_argument("--out", help="output .safetensors (temporal layers only, fp16)")
    ap.add_argument("--clips", nargs="*", default=[], help="training clips (video files); default: synthetic")
    ap.add_argument("--synthetic", type=int, default=24, help="synthetic training clips when no --clips")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--temporal-weight", type=float, default=1.0)
    ap.add_argument("--jitter", type=float, default=0.25,
                    help="largest per-frame latent jitter (relative to the latent std); each step draws 0..jitter")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 = bit-reproducible on CPU)")
    ap.add_argument("--eval", metavar="WEIGHTS", nargs="?", const="", default=None,
                    help="only measure: 2D vs TE-3D with WEIGHTS (default --out) on the held-out synthetic clips")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.frames < 2:
        ap.error("--steps must be >= 1 and --frames >= 2")
    if args.eval is None and not args.out:
        ap.error("--out is required unless --eval")
    torch.set_num_threads(max(1, args.threads))
    torch.use_deterministic_algorithms(True)
    te3d_vae = _pack()
    from temporal_restore.pipelines import te3d_train

    torch.manual_seed(args.seed)
    vae = load_vae(args.checkpoint)
    enc = lambda x: encode_raw(vae, x)[0]  # noqa: E731
    dec2d = encode_raw(vae, torch.zeros(1, 3, 8, 8))[1]
    model = te3d_vae.TE3DDecoder(dec2d)
    taesd = hasattr(vae, "taesd_decoder")
    to01 = (lambda y: y) if taesd else (lambda y: (y + 1) / 2)  # noqa: E731  (SD decoders return [-1, 1])
    import safetensors.torch

    if args.eval is not None:
        path = args.eval or args.out
        te3d_vae.load_temporal_state_dict(model, {k: v.float() for k, v in safetensors.torch.load_file(path).items()},
                                          source=path)
        model.eval()
        for s in (0.0, 0.1, 0.15, 0.25):
            res = te3d_train.measure(enc, {"2d": lambda z: to01(dec2d(z)), "te3d": lambda z: to01(model(z))},
                                     strength=s, frames=args.frames, size=args.size)
            for name, r in res.items():
                print(f"jitter {s:.2f} {name:5s} PSNR {r['psnr']:.2f} dB  warping error {r['warping_error']:.4f}  "
                      f"flicker {r['flicker']:.4f}")
        return 0
    clips = [read_clip(p, args.frames, args.size) for p in args.clips] or \
        te3d_train.training_clips(args.synthetic, args.frames, args.size, args.seed)
    data = [encode_raw(vae, c)[::2] for c in clips]  # (latents, target)
    opt = te3d_vae.make_optimizer(model, args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    g = torch.Generator().manual_seed(args.seed)
    for step in range(args.steps):
        z, target = data[step % len(data)]
        s = args.jitter * float(torch.rand((), generator=g))
        stats = te3d_vae.train_step(model, opt, te3d_train.jitter(z, s, g), target, args.temporal_weight)
        sched.step()
        print(f"step {step} loss={stats['loss']:.6f} l1={stats['l1']:.6f} temporal={stats['temporal']:.6f}",
              flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    meta = {"decoder_sha256": te3d_train.decoder_fingerprint(dec2d), "format": "te3d temporal layers",
            "command": "scripts/train_te3d.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    safetensors.torch.save_file({k: v.to(torch.float16).contiguous()
                                 for k, v in te3d_vae.temporal_state_dict(model).items()}, tmp, metadata=meta)
    os.replace(tmp, args.out)
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
