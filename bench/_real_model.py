"""Full-size random SD1.5 checkpoint + ControlNet built in code with ComfyUI's own classes (bench only).

No download: the UNet (859 M, model_channels 320, context_dim 768, 8 heads), the ViT-L/14 text
encoder (ComfyUI's sd1_clip_config.json), the SD KL-f8 VAE and a tile-shaped ControlNet (361 M) are
built with ComfyUI's classes, every parameter initialised from a fixed seed (ComfyUI leaves layers
uninitialised), and written once as fp16 safetensors to a cache folder outside git
(``.host/bench-cache`` by default). ComfyUI detects them as a stock SD1.5 model (no registration).
"""
from __future__ import annotations

import gc
import json
import os

import torch

BUILD_VERSION = "1"
CKPT_NAME = "random_sd15_full.safetensors"
CONTROLNET_NAME = "random_controlnet_full.safetensors"


def _unet_config() -> dict:
    import tiny_models

    cfg = tiny_models.unet_config()
    cfg.update(model_channels=320, context_dim=768, num_heads=8, image_size=32)
    return cfg


def _save(module_sd: dict, prefix: str, out: dict, skip=()) -> None:
    for k, v in module_sd.items():
        if not any(k.startswith(s) for s in skip):
            out[prefix + k] = v.to(torch.float16).contiguous()


def build(cache_dir: str, seed: int = 0) -> dict:
    """Write the checkpoint and ControlNet to ``cache_dir`` unless already there; return their paths."""
    import safetensors.torch

    ckpt_path = os.path.join(cache_dir, CKPT_NAME)
    cn_path = os.path.join(cache_dir, CONTROLNET_NAME)
    stamp = os.path.join(cache_dir, f".built-{BUILD_VERSION}-{seed}")
    if os.path.exists(stamp) and os.path.exists(ckpt_path) and os.path.exists(cn_path):
        return {"checkpoint_path": ckpt_path, "controlnet_path": cn_path}
    os.makedirs(cache_dir, exist_ok=True)
    import comfy.cldm.cldm as cldm
    import comfy.ldm.modules.diffusionmodules.openaimodel as oam
    import comfy.ops
    import comfy.sd1_clip
    from comfy.clip_model import CLIPTextModel
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from tiny_models import _init_params

    ops = comfy.ops.manual_cast
    cfg = _unet_config()
    out: dict = {}
    unet = oam.UNetModel(**cfg, operations=ops, dtype=torch.float32, device="cpu")
    _init_params(unet, seed)
    with torch.no_grad():
        unet.out[2].weight.mul_(0.1)
    _save(unet.state_dict(), "model.diffusion_model.", out)
    del unet
    gc.collect()
    with open(os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_clip_config.json")) as f:
        clip_cfg = json.load(f)
    clip = CLIPTextModel(clip_cfg, dtype=torch.float32, device="cpu", operations=ops)
    _init_params(clip, seed + 1)
    with torch.no_grad():
        clip.text_model.embeddings.token_embedding.weight.mul_(0.1)
        clip.text_model.embeddings.position_embedding.weight.mul_(0.1)
    _save(clip.state_dict(), "cond_stage_model.transformer.", out, skip=("text_projection",))
    del clip
    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    vae = AutoencoderKL(ddconfig=ddconfig, embed_dim=4)
    _init_params(vae, seed + 2)
    _save(vae.state_dict(), "first_stage_model.", out)
    del vae
    safetensors.torch.save_file(out, ckpt_path + ".tmp")
    os.replace(ckpt_path + ".tmp", ckpt_path)
    del out
    gc.collect()
    cn_cfg = {k: v for k, v in cfg.items() if k not in ("out_channels", "transformer_depth_output",
                                                          "use_temporal_attention", "use_temporal_resblock")}
    cn = cldm.ControlNet(hint_channels=3, **cn_cfg, operations=ops, dtype=torch.float32, device="cpu")
    _init_params(cn, seed + 3)
    with torch.no_grad():
        for zc in list(cn.zero_convs) + [cn.middle_block_out]:
            for p in zc.parameters():
                p.mul_(0.1)
    cn_sd: dict = {}
    _save(cn.state_dict(), "control_model.", cn_sd)
    del cn
    safetensors.torch.save_file(cn_sd, cn_path + ".tmp")
    os.replace(cn_path + ".tmp", cn_path)
    open(stamp, "w").close()
    return {"checkpoint_path": ckpt_path, "controlnet_path": cn_path}
