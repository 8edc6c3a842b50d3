"""Train the pack's embedded demo model (models/demo/) on the CPU, reproducibly, in resumable pieces.

    .venv/bin/python scripts/train_demo_model.py --minutes 60       # ~27 min on 2 cores; or repeat a
                                                                    # shorter run until it prints "all stages done"
    .venv/bin/python scripts/train_demo_model.py --stage eval       # figures on the held-out images

Stages (state in --work, default out/demo_train/; every stage resumes where it stopped and is skipped
once its step count is reached; batches are drawn from generators seeded by (seed, stage, step), so the
result depends on the step counts, not on where a run was interrupted):

1. ``data``: 64x64 crops of the training images (pipelines.train_tasks.TRAIN_IMAGES: skimage.data images
   bundled with scikit-image, incl. both views of stereo_motorcycle) with their TPG training triples
   (pipelines.train_tasks.prompt_pairs: degraded hint, target, prompt; a quarter of them "off-task": a
   prompt not naming the degradation, target = the unchanged input), and a larger pool of 48x48 crops for
   the VAE. Crops are degraded at their own size, then upsampled to the working scale (--work-scale 2, as the
   demo workflow's ImageScaleBy). The held-out images (the sample clip's astronaut and rocket) are never trained on.
2. ``vae``: the TAESD-shaped autoencoder ComfyUI recognises by its keys (``taesd_encoder.*`` /
   ``taesd_decoder.*``, 64 channels, x8, 4 latent channels; ComfyUI 0.3.75 reads no width from the keys of
   an LDM AutoencoderKL, which is fixed at SD's 128-channel size), started as a linear x8 codec and trained
   as a plain autoencoder (MSE + L1) on 32x32 sub-crops; its held-out round-trip PSNR is printed as it
   trains (monitoring only). Then vae_scale / vae_shift are set so the UNet sees unit-variance latents with
   SD1.5's scale factor.
3. ``unet``: the base UNet (SD1.5 layout, 32 channels), eps-prediction on clean latents, empty prompt.
4. ``controlnet``: the task-prompt ControlNet (TDM §2.2), initialised from the UNet encoder, trained on
   the TPG triples; hint = degraded image at full size. For the demo the UNet is fine-tuned with it
   (--train-unet, default on), the loss is x0-weighted, and 3/4 of the samples build x_t from the
   *degraded* latent at t 200-400 with the eps target that implies the clean x0 (--degraded-start: what an
   img2img restore at denoise ~0.3 starts from): all three make a 32-channel model converge in minutes on a
   CPU (TDM freezes its SD1.5 base and trains on clean-latent x_t).
5. ``export``: fp16 safetensors in models/demo/ (checkpoint layout + control_model.* layout).

The learning rates are far above the generic 1e-5 of scripts/train_controlnet.py: the demo model is
tiny and trained from scratch for a few hundred steps.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMFY_DIR = os.environ.get("TR_COMFY_DIR", os.path.join(REPO, ".host", "ComfyUI"))


def setup():
    """Import ComfyUI (CPU) and the pack as ``temporal_restore``; returns (train_tasks, demo_arch)."""
    if COMFY_DIR not in sys.path:
        sys.path.insert(0, COMFY_DIR)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    if "temporal_restore" not in sys.modules:
        spec = importlib.util.spec_from_file_location("temporal_restore", os.path.join(REPO, "__init__.py"),
                                                      submodule_search_locations=[REPO])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["temporal_restore"] = mod
        spec.loader.exec_module(mod)
    from temporal_restore.nodes import _demo_arch
    from temporal_restore.pipelines import train_tasks

    return train_tasks, _demo_arch


# ----------------------------------------------------------------------------------------------- helpers
def init_params(module: torch.nn.Module, seed: int, zero_suffixes=()) -> None:
    """Deterministic init (ComfyUI builds layers uninitialised): fan-in normal weights, zero biases, unit
    norm scales; parameters whose name ends with one of ``zero_suffixes`` are zeroed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if any(name.endswith(s) for s in zero_suffixes):
                p.zero_()
            elif p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            elif name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()


def lr_at(step: int, total: int, lr: float, warmup: int = 20) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1))))


class Stage:
    """Resumable training loop state: module(s), AdamW, step; saved to ``path``."""

    def __init__(self, path, params, lr, weight_decay=0.0):
        self.path = path
        self.opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        self.step = 0
        self.log = []

    def load(self, modules: dict):
        if os.path.exists(self.path):
            st = torch.load(self.path, map_location="cpu", weights_only=False)
            for k, m in modules.items():
                m.load_state_dict(st["modules"][k])
            self.opt.load_state_dict(st["opt"])
            self.step, self.log = st["step"], st.get("log", [])
            return True
        return False

    def save(self, modules: dict):
        tmp = self.path + ".tmp"
        torch.save({"modules": {k: m.state_dict() for k, m in modules.items()}, "opt": self.opt.state_dict(),
                    "step": self.step, "log": self.log}, tmp)
        os.replace(tmp, self.path)


def run_loop(stage: Stage, modules: dict, total: int, lr: float, deadline: float, step_fn, name: str,
             every: int = 10):
    t0, last_save = time.time(), time.time()
    start = stage.step
    while stage.step < total and time.time() < deadline:
        for gr in stage.opt.param_groups:
            gr["lr"] = lr_at(stage.step, total, lr)
        loss = step_fn(stage.step)
        stage.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in stage.opt.param_groups for p in g["params"]], 1.0)
        stage.opt.step()
        stage.log.append(float(loss.detach()))
        stage.step += 1
        if stage.step % every == 0 or stage.step == total:
            rate = (time.time() - t0) / max(stage.step - start, 1)
            recent = sum(stage.log[-every:]) / len(stage.log[-every:])
            bar = "#" * int(30 * stage.step / total)
            print(f"\r[{name}] {bar:<30} {stage.step}/{total} loss {recent:.4f} {rate:.2f}s/step", end="", flush=True)
        if time.time() - last_save > 60:
            stage.save(modules)
            last_save = time.time()
    stage.save(modules)
    print()
    return stage.step >= total


# ----------------------------------------------------------------------------------------------- stages
def stage_data(a, tt):
    path = os.path.join(a.work, "data.pt")
    if os.path.exists(path):
        data = torch.load(path, weights_only=False)
        if data.get("work_scale", 1) != a.work_scale:
            raise SystemExit(f"--work-scale {a.work_scale}: {a.work} holds data made at x{data.get('work_scale', 1)}; "
                             "use another --work folder")
        return data
    imgs = tt.load_images(tt.TRAIN_IMAGES)
    ws = a.work_scale
    # degrade at the crop's own resolution, then upsample everything to the working scale (as a user's clip)
    clean = tt.random_crops(imgs, a.crops, 64 // ws, seed=a.seed)
    degraded, target, prompts = tt.prompt_pairs(clean, tt.DEMO_TASKS, seed=a.seed + 1, off_task=a.off_task)
    clean, degraded, target = (tt.to_work_scale(x, ws) for x in (clean, degraded, target))
    # the VAE's own, larger pool of smaller crops (it trains on sub-crops of these)
    vae_pool = tt.to_work_scale(tt.random_crops(imgs, a.vae_crops, a.vae_pool_size // ws, seed=a.seed + 2), ws)
    data = {"clean": clean, "degraded": degraded, "target": target, "prompts": prompts,
            "vae_pool": vae_pool.permute(0, 3, 1, 2).contiguous(), "work_scale": ws}
    torch.save(data, path)
    print(f"[data] {clean.shape[0]} crops 64x64 + {vae_pool.shape[0]} VAE crops {a.vae_pool_size}x{a.vae_pool_size} "
          f"from {len(imgs)} images at working scale x{ws}, tasks {tt.DEMO_TASKS}, off-task prompts {a.off_task:.0%}")
    return data


# RGB -> (luma - 0.5, R - G, B - G) and back: the analytic start of the VAE's latent colour channels.
_TO_LAT = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1.0, -1.0, 0.0], [0.0, -1.0, 1.0]])
_TO_RGB = torch.linalg.inv(_TO_LAT)
_BLUR3 = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0
_BOX2 = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 1.0, 1.0]]) / 4.0  # stride 2: never reads the padding


@torch.no_grad()
def init_vae_linear(vae, seed):
    """TAESD weights that compute a linear x8 codec at start: the encoder averages 2x2 blocks of RGB three
    times (stride-2 convs that never read the zero padding) and writes luma / two chroma differences into latent channels 0-2; the
    decoder maps them back to RGB and upsamples (nearest x2 + [1,2,1]^2) three times. Every Block starts as
    the identity (last conv zero; inputs are >= 0 so the ReLU passes them) and latent channel 3 starts empty:
    training adds detail on top of a codec that already works."""
    enc, dec = vae.taesd_encoder, vae.taesd_decoder
    init_params(vae, seed, zero_suffixes=("conv.4.weight", "conv.4.bias"))
    for m in list(enc) + list(dec):
        if isinstance(m, torch.nn.Conv2d) and not any(m is b.conv[i] for b in list(enc) + list(dec)
                                                      if hasattr(b, "conv") for i in (0, 2, 4)):
            m.weight.zero_()
            if m.bias is not None:
                m.bias.zero_()
    for c in range(3):
        enc[0].weight[c, c, 1, 1] = 1.0
        for i in (2, 6, 10):
            enc[i].weight[c, c] = _BOX2
        for i in (7, 12, 17):
            dec[i].weight[c, c] = _BLUR3
    g = torch.Generator().manual_seed(seed + 1)
    for m in list(enc) + list(dec):  # small random rest so every channel can start learning
        if isinstance(m, torch.nn.Conv2d):
            m.weight.add_(0.02 * torch.randn(m.weight.shape, generator=g) / math.sqrt(m.weight[0].numel()))
    enc[14].weight[:3, :3, 1, 1] = _TO_LAT
    enc[14].bias[0] = -0.5
    dec[1].weight[:3, :3, 1, 1] = _TO_RGB
    dec[1].bias[:3] = _TO_RGB @ torch.tensor([0.5, 0.0, 0.0])
    dec[19].weight[:3, :3, 1, 1] = torch.eye(3)


def vae_forward(vae, x01, frozen_full_res=True):
    """Encoder-decoder on [0, 1] images (TAESD's own domain); the full-resolution Blocks (encoder [1],
    decoder [18]) stay the identity during training and are skipped (ReLU of a non-negative input)."""
    enc, dec = vae.taesd_encoder, vae.taesd_decoder
    h = x01
    for i, m in enumerate(enc):
        h = torch.relu(h) if (frozen_full_res and i == 1) else m(h)
    z = h
    h = z
    for i, m in enumerate(dec):
        h = torch.relu(h) if (frozen_full_res and i == 18) else m(h)
    return z, h


def stage_vae(a, tt, arch, data, deadline):
    vae = arch.raw_vae()
    init_vae_linear(vae, a.seed + 10)
    vae.train()
    frozen = [] if a.vae_full_res else [vae.taesd_encoder[1], vae.taesd_decoder[18]]
    params = [p for n, p in vae.named_parameters() if not n.startswith("vae_")
              and not any(p is q for m in frozen for q in m.parameters())]
    st = Stage(os.path.join(a.work, "vae.pt"), params, a.vae_lr)
    st.load({"vae": vae})
    if st.step >= a.vae_steps:
        return vae, True
    pool = data["vae_pool"]
    span = (pool.shape[-1] - a.vae_crop) // 8 + 1

    held = tt.to_work_scale(heldout_frames(tt), a.work_scale).permute(0, 3, 1, 2)

    def step(i):
        if i % a.vae_monitor == 0:  # held-out reconstruction PSNR, printed only (never trained on)
            with torch.no_grad():
                rec = vae_forward(vae, held, frozen_full_res=not a.vae_full_res)[1].clamp(0, 1)
            mse = float(((rec - held) ** 2).mean())
            print(f"\n[vae] step {i}: held-out round trip {10 * math.log10(1 / max(mse, 1e-12)):.2f} dB", flush=True)
        g = torch.Generator().manual_seed(a.seed * 7919 + 1000 + i)
        idx = torch.randint(pool.shape[0], (a.vae_batch,), generator=g)
        oy, ox = (int(v) * 8 for v in torch.randint(0, span, (2,), generator=g))
        x = pool[idx, :, oy:oy + a.vae_crop, ox:ox + a.vae_crop]
        z, rec = vae_forward(vae, x, frozen_full_res=not a.vae_full_res)
        return F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)

    done = run_loop(st, {"vae": vae}, a.vae_steps, a.vae_lr, deadline, step, "vae")
    return vae, done


@torch.no_grad()
def normalise_vae(vae, clean, scale_factor):
    """Set TAESD's scalar vae_scale / vae_shift so that ``latent * scale_factor`` (what the UNet sees) has
    zero mean and unit variance on ``clean [N, 3, H, W]`` (0..1)."""
    vae.eval()
    zs = torch.cat([vae.taesd_encoder(clean[i:i + 64]) for i in range(0, clean.shape[0], 64)])
    m, s = float(zs.mean()), float(zs.std())
    vae.vae_scale.fill_(s * scale_factor)
    vae.vae_shift.fill_(-m / (s * scale_factor))
    return {"mean": m, "std": s}


def encode(vae, images_nhwc, bs=64):
    x = images_nhwc.permute(0, 3, 1, 2) * 2 - 1
    with torch.no_grad():
        return torch.cat([vae.encode(x[i:i + bs]) for i in range(0, x.shape[0], bs)])


def decode(vae, z, bs=64):
    with torch.no_grad():
        out = torch.cat([vae.decode(z[i:i + bs]) for i in range(0, z.shape[0], bs)])
    return ((out + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)


def clip_state(arch, a):
    clip = arch.raw_clip()
    init_params(clip, a.seed + 20)
    with torch.no_grad():
        clip.text_model.embeddings.token_embedding.weight.mul_(0.1)
        clip.text_model.embeddings.position_embedding.weight.mul_(0.1)
    return {arch.CLIP_PREFIX + k: v for k, v in clip.state_dict().items() if not k.startswith("text_projection")}


def encode_prompts(arch, clip_sd, prompts):
    """Prompt -> context [1, 77, 64] exactly as CLIPTextEncode computes it with the demo CLIP."""
    clip = arch.build_clip(clip_sd)
    out = {}
    for p in prompts:
        out[p] = clip.encode_from_tokens(clip.tokenize(p)).float().cpu()
    return out


def unet_zero_suffixes():
    return ("out.2.weight", "out.2.bias", "out_layers.3.weight", "proj_out.weight")


def stage_unet(a, tt, arch, lat, ctx_empty, deadline):
    unet = arch.raw_unet()
    init_params(unet, a.seed + 30, zero_suffixes=unet_zero_suffixes())
    unet.train()
    st = Stage(os.path.join(a.work, "unet.pt"), unet.parameters(), a.unet_lr)
    st.load({"unet": unet})
    if st.step >= a.unet_steps:
        return unet, True
    sig = tt.sd_sigmas()

    def step(i):
        g = torch.Generator().manual_seed(a.seed * 7919 + 2000 + i)
        idx = torch.randint(lat.shape[0], (a.batch,), generator=g)
        z0 = lat[idx]
        t = tt.sample_timesteps(a.batch, g, focus=a.t_focus if a.unet_focus else 0, focus_frac=a.t_focus_frac)
        s = sig[t.long()]
        noise = torch.randn(z0.shape, generator=g)
        eps = unet(tt.noisy_input(z0, s, noise), t, context=ctx_empty.expand(a.batch, -1, -1))
        return tt.eps_loss(eps, noise, s, "eps")

    done = run_loop(st, {"unet": unet}, a.unet_steps, a.unet_lr, deadline, step, "unet")
    return unet, done


def controlnet_from_unet(cn, unet):
    """ControlNet init (Zhang et al.): copy the UNet encoder, zero the zero-convs and the hint output."""
    usd = unet.state_dict()
    with torch.no_grad():
        for k, p in cn.state_dict().items():
            if k in usd and usd[k].shape == p.shape:
                p.copy_(usd[k])
        for zc in list(cn.zero_convs) + [cn.middle_block_out]:
            for p in zc.parameters():
                p.zero_()
        for p in cn.input_hint_block[-1].parameters():
            p.zero_()


def make_control_trainable(unet):
    """ComfyUI's UNet adds ControlNet residuals to the stored skips in place (``h += ctrl``), but the next
    block saved that skip for backward. A pre-hook that hands every block a copy of its input keeps the
    stored skip free to be modified, so gradients flow (training only; values are unchanged)."""
    if getattr(unet, "_tr_trainable_control", False):
        return unet
    first_layers = [b[0] for b in list(unet.input_blocks)[1:]] + [unet.middle_block[0]]
    for layer in first_layers:
        layer.register_forward_pre_hook(lambda m, args: (args[0].clone(),) + tuple(args[1:]))
    unet._tr_trainable_control = True
    return unet


def control_forward(unet, cn, xc, t, ctx, hint):
    ctrl = cn(x=xc, hint=hint, timesteps=t, context=ctx)
    control = {"output": list(ctrl["output"]), "middle": list(ctrl["middle"])}
    return unet(xc, t, context=ctx, control=control)


def stage_controlnet(a, tt, arch, unet, lat, deg_lat, hints, ctx, deadline):
    """``lat``: target latents (clean, or the degraded crop itself for off-task prompts), ``deg_lat`` the
    degraded crops' latents, ``hints`` the degraded crops, ``ctx`` the prompt embeddings, one per crop
    (pipelines.train_tasks.prompt_pairs)."""
    make_control_trainable(unet)
    cn = arch.raw_controlnet()
    init_params(cn, a.seed + 40)
    controlnet_from_unet(cn, unet)
    cn.train()
    params = [{"params": list(cn.parameters()), "lr": a.cn_lr}]
    modules = {"controlnet": cn}
    if a.train_unet:
        unet.train()
        params.append({"params": list(unet.parameters()), "lr": a.cn_lr})
        modules["unet"] = unet
    st = Stage(os.path.join(a.work, "controlnet.pt"), params, a.cn_lr)
    st.load(modules)
    if st.step >= a.cn_steps:
        return cn, unet, True
    sig = tt.sd_sigmas()

    def step(i):
        g = torch.Generator().manual_seed(a.seed * 7919 + 3000 + i)
        idx = torch.randint(lat.shape[0], (a.batch,), generator=g)
        z0 = lat[idx]
        t = tt.sample_timesteps(a.batch, g, focus=a.t_focus, focus_frac=a.t_focus_frac)
        # img2img-matched samples: x_t built from the *degraded* latent, at the timesteps where a restore at
        # denoise ~0.3 takes its first steps; the eps target is the one that implies the clean x0: (x - z0) / sigma
        from_deg = torch.rand(a.batch, generator=g) < a.degraded_start
        t = torch.where(from_deg, torch.randint(a.degraded_t[0], a.degraded_t[1], (a.batch,), generator=g).float(), t)
        s = sig[t.long()]
        noise = torch.randn(z0.shape, generator=g)
        from_deg = from_deg.view(-1, 1, 1, 1)
        start = torch.where(from_deg, deg_lat[idx], z0)
        target = noise + (start - z0) / s.view(-1, 1, 1, 1)
        eps = control_forward(unet, cn, tt.noisy_input(start, s, noise), t, ctx[idx], hints[idx])
        return tt.eps_loss(eps, target, s, a.weighting)

    done = run_loop(st, modules, a.cn_steps, a.cn_lr, deadline, step, "controlnet")
    return cn, unet, done


def export(a, arch, vae, clip_sd, unet, cn):
    from safetensors.torch import save_file

    os.makedirs(a.out, exist_ok=True)
    half = lambda d: {k: v.detach().to(torch.float16).contiguous() for k, v in d.items()}  # noqa: E731
    ckpt = {arch.UNET_PREFIX + k: v for k, v in unet.state_dict().items()}
    ckpt.update(clip_sd)
    ckpt.update({arch.VAE_PREFIX + k: v for k, v in vae.state_dict().items()})
    meta = {"temporal_restore": "demo model", "trainer": "scripts/train_demo_model.py"}
    save_file(half(ckpt), os.path.join(a.out, arch.CHECKPOINT), metadata=meta)
    save_file(half({arch.CONTROL_PREFIX + k: v for k, v in cn.state_dict().items()}),
              os.path.join(a.out, arch.CONTROLNET), metadata=meta)
    size = sum(os.path.getsize(os.path.join(a.out, n)) for n in (arch.CHECKPOINT, arch.CONTROLNET))
    print(f"[export] {a.out}: {size / 1e6:.1f} MB")


# ----------------------------------------------------------------------------------------------- eval
def sigma_to_t(sig, s):
    ls = sig.log()
    x = torch.as_tensor(s).log().clamp(ls[0], ls[-1])
    i = int(torch.searchsorted(ls, x).clamp(1, len(ls) - 1))
    w = (x - ls[i - 1]) / (ls[i] - ls[i - 1])
    return float(i - 1 + w)


def restore_latents(tt, unet, cn, z_deg, hint, ctx, steps_inv=10, steps=10, denoise=1.0, ctx_inv=None):
    """TDM inference on raw modules: DDIM inversion of the degraded latent under ``ctx_inv`` (the source
    prompt, default ``ctx``) then DDIM sampling under ``ctx`` (sigma form)."""
    from temporal_restore.pipelines import ddim_inversion as di

    sig = tt.sd_sigmas()
    t_end, t_max = 0.0, 999.0
    t_start = t_end + denoise * (t_max - t_end)

    def sched(n):
        ts = torch.linspace(t_start, t_end, n)
        s = torch.stack([torch.exp(torch.lerp(sig.log()[int(math.floor(t))], sig.log()[min(int(math.floor(t)) + 1, 999)],
                                              t - math.floor(t))) for t in ts.tolist()])
        return torch.cat([s, s.new_zeros(1)])

    def model_for(c):
        def model(x, s):
            sv = float(s[0])
            t = torch.full((x.shape[0],), sigma_to_t(sig, sv))
            xc = x / math.sqrt(1 + sv * sv)
            with torch.no_grad():
                eps = control_forward(unet, cn, xc, t, c.expand(x.shape[0], -1, -1), hint)
            return x - sv * eps
        return model

    x = di.ddim_invert(model_for(ctx if ctx_inv is None else ctx_inv), z_deg, sched(steps_inv))
    return di.ddim_sample(model_for(ctx), x, sched(steps))


def heldout_frames(tt, n=4, size=64):
    """Held-out 'clips': native-resolution windows of the held-out images (astronaut, rocket), panning."""
    return torch.cat([tt.heldout_clip(name, frames=n, size=size) for name in tt.HELDOUT_IMAGES])


def stage_eval(a, tt, arch, vae, unet, cn, ctx_by_task):
    from temporal_restore.pipelines import metrics

    vae.eval(), unet.eval(), cn.eval()
    ws = a.work_scale
    up = lambda x: tt.to_work_scale(x, ws)  # noqa: E731
    out_img = lambda z: tt.from_work_scale(decode(vae, z / tt.SD15_SCALE_FACTOR), ws)  # noqa: E731
    clean = heldout_frames(tt)
    res = {"vae_psnr": metrics.psnr(tt.from_work_scale(decode(vae, encode(vae, up(clean))), ws), clean)}
    for task in ("denoise", "sr_x4"):
        deg = tt.degraded_input(clean, task, seed=123)
        z = encode(vae, up(deg)) * tt.SD15_SCALE_FACTOR
        hint = up(deg).permute(0, 3, 1, 2)
        res[f"{task}_input_psnr"] = metrics.psnr(deg, clean)
        res[f"{task}_vae_round_trip_psnr"] = metrics.psnr(out_img(z), clean)
        for dn in a.eval_denoise:  # inversion under the empty (source) prompt, restore under the task prompt
            out = restore_latents(tt, unet, cn, z, hint, ctx_by_task[task], denoise=dn, ctx_inv=ctx_by_task[""])
            res[f"{task}_psnr_d{dn}"] = metrics.psnr(out_img(out), clean)
        # TPG ablation: restore under the empty / another task's prompt (taught to leave the input unchanged)
        for name, c in (("empty", ctx_by_task[""]), ("wrong", ctx_by_task[tt.WRONG_TASK[task]])):
            out = restore_latents(tt, unet, cn, z, hint, c, denoise=0.3, ctx_inv=ctx_by_task[""])
            res[f"{task}_psnr_d0.3_{name}_prompt"] = metrics.psnr(out_img(out), clean)
    print(json.dumps({k: round(v, 3) for k, v in res.items()}, indent=1))
    return res


# ----------------------------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", default="all", choices=["all", "eval", "export"])
    ap.add_argument("--minutes", type=float, default=9.0, help="wall-time budget of this run (resume later)")
    ap.add_argument("--work", default=os.path.join(REPO, "out", "demo_train"))
    ap.add_argument("--out", default=os.path.join(REPO, "models", "demo"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--crops", type=int, default=4096)
    ap.add_argument("--off-task", type=float, default=0.25,
                    help="fraction of ControlNet pairs with a prompt not naming their degradation, target unchanged")
    ap.add_argument("--work-scale", type=int, default=2,
                    help="the clips' upsampling before the VAE (the demo workflow's ImageScaleBy); crops are degraded first")
    ap.add_argument("--vae-crops", type=int, default=8192)
    ap.add_argument("--vae-pool-size", type=int, default=48)
    ap.add_argument("--vae-crop", type=int, default=32)
    ap.add_argument("--vae-full-res", type=int, default=0, help="also train the full-resolution Blocks (slower)")
    ap.add_argument("--vae-monitor", type=int, default=250, help="print the held-out VAE PSNR every N steps")
    ap.add_argument("--vae-steps", type=int, default=3000)
    ap.add_argument("--vae-batch", type=int, default=8)
    ap.add_argument("--vae-lr", type=float, default=8e-4)
    ap.add_argument("--unet-steps", type=int, default=150)
    ap.add_argument("--unet-lr", type=float, default=1e-3)
    ap.add_argument("--unet-focus", type=int, default=0, help="1: the base UNet's timesteps are focused like the ControlNet's")
    ap.add_argument("--cn-steps", type=int, default=3000)
    ap.add_argument("--cn-lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--weighting", default="x0", choices=["x0", "eps"])
    ap.add_argument("--t-focus", type=int, default=400, help="timesteps below this get --t-focus-frac of the ControlNet samples")
    ap.add_argument("--t-focus-frac", type=float, default=0.75)
    ap.add_argument("--degraded-start", type=float, default=0.75,
                    help="fraction of ControlNet samples whose x_t is built from the degraded latent (img2img-matched)")
    ap.add_argument("--degraded-t", type=int, nargs=2, default=[200, 400],
                    help="timestep range [lo, hi) of the degraded-start samples")
    ap.add_argument("--train-unet", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="1 is much faster than 2 on a busy shared CPU")
    ap.add_argument("--eval-denoise", type=float, nargs="+", default=[1.0, 0.6, 0.3])
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    deadline = time.time() + (0 if a.stage in ("eval", "export") else 60 * a.minutes)
    tt, arch = setup()
    os.makedirs(a.work, exist_ok=True)
    data = stage_data(a, tt)

    vae, done = stage_vae(a, tt, arch, data, deadline)
    if not done:
        return print("vae: not finished, run again to resume")
    clean = data["clean"].permute(0, 3, 1, 2)
    norm_path = os.path.join(a.work, "vae_final.pt")
    if not os.path.exists(norm_path):
        stats = normalise_vae(vae, clean, tt.SD15_SCALE_FACTOR)
        torch.save({"vae": vae.state_dict(), "stats": stats}, norm_path)
    vae.load_state_dict(torch.load(norm_path, weights_only=False)["vae"])
    vae.eval()

    clip_sd = clip_state(arch, a)
    prompts = [""] + [tt.TASK_PROMPTS[t] for t in tt.DEMO_TASKS]
    emb = encode_prompts(arch, clip_sd, prompts)
    def latents(name, images):  # scaled latents of a crop set, encoded once per work folder
        path = os.path.join(a.work, name)
        if not os.path.exists(path):
            torch.save(encode(vae, images) * tt.SD15_SCALE_FACTOR, path)
        return torch.load(path, weights_only=False)

    tgt = latents("target_latents.pt", data["target"])
    lat = latents("latents.pt", data["clean"])

    unet, done = stage_unet(a, tt, arch, lat, emb[""], deadline)
    if not done:
        return print("unet: not finished, run again to resume")
    ctx = torch.cat([emb[p] for p in data["prompts"]])
    hints = data["degraded"].permute(0, 3, 1, 2).contiguous()
    deg_lat = latents("degraded_latents.pt", data["degraded"])
    cn, unet, done = stage_controlnet(a, tt, arch, unet, tgt, deg_lat, hints, ctx, deadline)
    if a.stage == "eval":
        return stage_eval(a, tt, arch, vae, unet, cn, {"": emb[""], **{t: emb[tt.TASK_PROMPTS[t]] for t in tt.DEMO_TASKS}})
    if not done and a.stage != "export":
        return print("controlnet: not finished, run again to resume")
    export(a, arch, vae, clip_sd, unet, cn)
    print("all stages done")


if __name__ == "__main__":
    main()
