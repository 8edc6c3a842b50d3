"""Fine-tune a task-prompt ControlNet (TDM §2.2, Task Prompt Guidance) over any SD1.5-architecture checkpoint.

    .venv/bin/python scripts/train_controlnet.py --base models/checkpoints/v1-5-pruned-emaonly.safetensors \
        --out models/controlnet/tdm_task_prompt.safetensors --steps 20000 --size 512
    # interrupted? run the same command again: it resumes from <out>.state.pt

Training pairs: crops of natural images (``--images DIR`` of png/jpg, or scikit-image's bundled training images
by default), degraded with ``pipelines/degrade.py`` (``--tasks denoise sr_x4 derain deblur ...``; SR inputs are
bicubic-upsampled back to the crop size), the task prompt ("remove the noise", ...) as text. The base UNet and
text encoder stay frozen; only the ControlNet learns (initialised from the UNet encoder with zero convs, or from
``--init-controlnet``, e.g. a tile ControlNet as in TDM). eps-prediction loss on the base's own noise schedule.
Defaults follow the issue: AdamW lr 1e-5, batch 4, gradient checkpointing on, seeded. The output holds
``control_model.*`` weights: ComfyUI's ControlNetLoader and TR_TaskPromptControlNet load it for that base.

The base is loaded with ``comfy.sd.load_checkpoint_guess_config`` (so it must be a checkpoint ComfyUI
recognises); ``--demo`` uses the pack's embedded demo model (models/demo/) instead.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_demo_model as common  # noqa: E402  (shared helpers: init, ControlNet from UNet, control forward)


def load_base(a, arch):
    """(BaseModel, CLIP, VAE) of the base checkpoint, fp32 on the CPU."""
    import comfy.sd

    if a.demo:
        model, clip, vae, _ = arch.load_demo()
    else:
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
            a.base, output_vae=True, output_clip=True, model_options={"dtype": torch.float32})
        if model is None or clip is None or vae is None:
            raise SystemExit(f"--base {a.base}: expected a full checkpoint (UNet + CLIP + VAE)")
    base = model.model
    if base.diffusion_model.in_channels != 4 or not hasattr(base.model_sampling, "sigmas"):
        raise SystemExit("--base: expected an SD1.5-architecture eps model (4 latent channels, discrete schedule)")
    return base, clip, vae


def enable_checkpointing(*modules):
    """Gradient checkpointing per ResBlock / SpatialTransformer of the given UNet-like modules (instance-level
    forward wrappers in this training process only)."""
    from torch.utils.checkpoint import checkpoint
    from comfy.ldm.modules.attention import SpatialTransformer
    from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

    for mod in modules:
        for layer in mod.modules():
            if isinstance(layer, (ResBlock, SpatialTransformer)) and not hasattr(layer, "_tr_ckpt"):
                orig = layer.forward

                def fwd(*args, _orig=orig, **kw):
                    if not torch.is_grad_enabled():
                        return _orig(*args, **kw)
                    return checkpoint(functools.partial(_orig, **kw), *args, use_reentrant=False)

                layer.forward = fwd
                layer._tr_ckpt = True


def read_images(a, tt):
    if not a.images:
        return tt.load_images(tt.TRAIN_IMAGES)
    import numpy as np
    from PIL import Image

    out = []
    for name in sorted(os.listdir(a.images)):
        if name.lower().endswith((".png", ".jpg", ".jpeg", ".webp", ".bmp")):
            img = np.asarray(Image.open(os.path.join(a.images, name)).convert("RGB"), dtype=np.float32) / 255.0
            if min(img.shape[:2]) >= a.size:
                out.append(torch.from_numpy(img).permute(2, 0, 1)[None])
    if not out:
        raise SystemExit(f"--images {a.images}: no png/jpg images of at least {a.size}x{a.size} pixels")
    return out


def train(a) -> str:
    tt, arch = common.setup()
    import comfy.cldm.cldm as cldm
    import comfy.ops
    from safetensors.torch import save_file

    torch.set_num_threads(a.threads)
    base, clip, vae = load_base(a, arch)
    unet = base.diffusion_model.float()
    unet.requires_grad_(False)
    common.make_control_trainable(unet)
    ccfg = {k: v for k, v in base.model_config.unet_config.items()
            if k not in ("out_channels", "dtype", "device", "operations")}
    cn = cldm.ControlNet(**ccfg, hint_channels=3, operations=comfy.ops.disable_weight_init, dtype=torch.float32,
                         device="cpu")
    if a.init_controlnet:
        import comfy.utils

        sd = comfy.utils.load_torch_file(a.init_controlnet, safe_load=True)
        sd = {k[len("control_model."):] if k.startswith("control_model.") else k: v.float() for k, v in sd.items()}
        missing, _ = cn.load_state_dict(sd, strict=False)
        if missing:
            raise SystemExit(f"--init-controlnet: does not fit this base (missing {missing[:3]}...)")
    else:
        common.init_params(cn, a.seed + 40)
        common.controlnet_from_unet(cn, unet)
    cn.train()
    if a.grad_checkpointing:
        enable_checkpointing(unet, cn)

    # data: crops, degraded hints, latents, prompt embeddings (prepared once, small for the CPU sizes)
    imgs = read_images(a, tt)
    clean = tt.random_crops(imgs, a.crops, a.size, seed=a.seed)
    degraded, tasks = tt.task_pairs(clean, a.tasks, seed=a.seed + 1)
    with torch.no_grad():
        lat = torch.cat([base.latent_format.process_in(vae.encode(clean[i:i + 8]).float())
                         for i in range(0, clean.shape[0], 8)])
        emb = {t: clip.encode_from_tokens(clip.tokenize(tt.TASK_PROMPTS[t])).float().cpu() for t in set(tasks)}
    if not torch.isfinite(lat).all():
        raise SystemExit("--base: its VAE encodes the training crops to non-finite latents")
    ctx = torch.cat([emb[t] for t in tasks])
    hints = degraded.permute(0, 3, 1, 2).contiguous()
    sig = base.model_sampling.sigmas.float().cpu()

    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    state = a.out + ".state.pt"
    st = common.Stage(state, cn.parameters(), a.lr, weight_decay=1e-2)
    if st.load({"controlnet": cn}):
        print(f"resuming at step {st.step}")

    def step(i):
        g = torch.Generator().manual_seed(a.seed * 7919 + 5000 + i)
        idx = torch.randint(lat.shape[0], (a.batch,), generator=g)
        t = torch.randint(0, sig.shape[0], (a.batch,), generator=g)
        s = sig[t]
        noise = torch.randn(lat[idx].shape, generator=g)
        eps = common.control_forward(unet, cn, tt.noisy_input(lat[idx], s, noise), t.float(), ctx[idx], hints[idx])
        return tt.eps_loss(eps, noise, s, "eps")

    deadline = time.time() + 60 * a.minutes if a.minutes > 0 else float("inf")
    done = common.run_loop(st, {"controlnet": cn}, a.steps, a.lr, deadline, step, "controlnet")
    if not done:
        print(f"stopped at step {st.step}/{a.steps}: run the same command again to resume")
        return ""
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    dtype = torch.float16 if a.half else torch.float32
    save_file({"control_model." + k: v.detach().to(dtype).contiguous() for k, v in cn.state_dict().items()}, a.out,
              metadata={"temporal_restore": "task-prompt ControlNet", "tasks": ",".join(a.tasks)})
    print(f"wrote {a.out}")
    return a.out


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--base", help="SD1.5-architecture checkpoint (.safetensors / .ckpt)")
    src.add_argument("--demo", action="store_true", help="use the embedded demo model (models/demo/) as the base")
    ap.add_argument("--out", required=True, help="output ControlNet file (.safetensors); state kept in <out>.state.pt")
    ap.add_argument("--init-controlnet", help="start from this ControlNet instead of the UNet encoder")
    ap.add_argument("--images", help="folder of training images (default: scikit-image's bundled images)")
    ap.add_argument("--tasks", nargs="+", default=["denoise", "sr_x4", "derain", "deblur"])
    ap.add_argument("--size", type=int, default=512, help="crop size in pixels (multiple of 8)")
    ap.add_argument("--crops", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--grad-checkpointing", type=int, default=1)
    ap.add_argument("--minutes", type=float, default=0, help="stop after this wall time (0 = no limit); resumable")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=max(1, torch.get_num_threads()))
    ap.add_argument("--half", type=int, default=1, help="save fp16 weights")
    a = ap.parse_args(argv)
    if a.size % 8:
        ap.error("--size: expected a multiple of 8")
    return a


if __name__ == "__main__":
    train(parse())
