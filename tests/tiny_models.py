"""Tiny real-architecture SD1.5 models for tests (test-only: never imported by the shipped pack).

ComfyUI picks a model class by matching UNet config keys read off the state dict, and SD1.5 is
matched on model_channels=320 / context_dim=768. ``register()`` adds a class for the tiny shapes
(model_channels 32, context_dim 64, SD1.5 block layout), with a real SD1 tokenizer in front of a
2-layer 64-wide CLIP text model. ``build()`` writes a checkpoint that the stock
CheckpointLoaderSimple loads (UNet + CLIP + TAESD-shaped VAE) and a matching ControlNet that the
stock ControlNetLoader loads. Every parameter is initialised from a fixed seed: ComfyUI builds
layers without initialising them.
"""
from __future__ import annotations

import hashlib
import math
import os

import torch

TINY_UNET = {"context_dim": 64, "model_channels": 32}
TINY_CLIP = {
    "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
    "eos_token_id": 49407, "hidden_act": "quick_gelu", "hidden_size": 64, "initializer_factor": 1.0,
    "initializer_range": 0.02, "intermediate_size": 128, "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77, "model_type": "clip_text_model", "num_attention_heads": 2,
    "num_hidden_layers": 2, "pad_token_id": 1, "projection_dim": 64, "torch_dtype": "float32",
    "vocab_size": 49408,
}
CKPT_NAME = "tiny_sd15.safetensors"
CONTROLNET_NAME = "tiny_controlnet.safetensors"
BUILD_VERSION = "2"  # bump when the builder changes, so cached files are rebuilt


def _classes():
    import comfy.sd1_clip as sd1_clip
    import comfy.supported_models as sm
    import comfy.supported_models_base as smb

    class TinyClipModel(sd1_clip.SDClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}):
            super().__init__(device=device, textmodel_json_config=dict(TINY_CLIP), return_projected_pooled=False,
                             dtype=dtype, model_options=model_options)

    class TinyTokenizer(sd1_clip.SDTokenizer):
        def __init__(self, embedding_directory=None, tokenizer_data={}):
            super().__init__(embedding_directory=embedding_directory, embedding_size=64, tokenizer_data=tokenizer_data)

    class TinySD1Tokenizer(sd1_clip.SD1Tokenizer):
        def __init__(self, embedding_directory=None, tokenizer_data={}):
            super().__init__(embedding_directory=embedding_directory, tokenizer_data=tokenizer_data, tokenizer=TinyTokenizer)

    class TinySD1ClipModel(sd1_clip.SD1ClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}, **kwargs):
            super().__init__(device=device, dtype=dtype, model_options=model_options, clip_model=TinyClipModel, **kwargs)

    class TinySD15(sm.SD15):
        unet_config = {**sm.SD15.unet_config, **TINY_UNET}
        unet_extra_config = {"num_heads": 2, "num_head_channels": -1}

        def clip_target(self, state_dict={}):
            return smb.ClipTarget(TinySD1Tokenizer, TinySD1ClipModel)

    return TinySD15


def register() -> type:
    """Make ComfyUI recognise the tiny SD1.5 shapes (idempotent)."""
    import comfy.supported_models as sm

    for cls in sm.models:
        if cls.__name__ == "TinySD15":
            return cls
    cls = _classes()
    sm.models.insert(0, cls)
    return cls


def _init_params(module: torch.nn.Module, seed: int) -> None:
    """Deterministic, well-scaled values for every parameter and float buffer."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
            elif name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
        for name, b in module.named_buffers():
            if b.is_floating_point() and "position_ids" not in name:
                b.zero_()


def unet_config() -> dict:
    return {
        "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
        "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 32,
        "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
        "context_dim": 64, "num_heads": 2, "num_head_channels": -1, "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "use_temporal_attention": False, "use_temporal_resblock": False,
    }


def build_state_dicts(seed: int = 0) -> tuple[dict, dict]:
    """Return (checkpoint_sd, controlnet_sd) as CPU float32 tensors."""
    import comfy.cldm.cldm as cldm
    import comfy.ldm.modules.diffusionmodules.openaimodel as oam
    import comfy.ops
    import comfy.taesd.taesd as taesd
    from comfy.clip_model import CLIPTextModel

    ops = comfy.ops.manual_cast
    cfg = unet_config()
    unet = oam.UNetModel(**cfg, operations=ops, dtype=torch.float32, device="cpu")
    _init_params(unet, seed)
    with torch.no_grad():  # a UNet whose output is of order 1, like a trained eps model
        unet.out[2].weight.mul_(0.1)
    clip = CLIPTextModel(dict(TINY_CLIP), dtype=torch.float32, device="cpu", operations=ops)
    _init_params(clip, seed + 1)
    with torch.no_grad():
        clip.text_model.embeddings.token_embedding.weight.mul_(0.1)
        clip.text_model.embeddings.position_embedding.weight.mul_(0.1)
    vae = taesd.TAESD(latent_channels=4)
    _init_params(vae, seed + 2)
    with torch.no_grad():  # encode divides by vae_scale: zero would make every latent inf
        vae.vae_scale.fill_(1.0)
    cn_cfg = {k: v for k, v in cfg.items() if k not in ("out_channels", "transformer_depth_output", "use_temporal_attention", "use_temporal_resblock")}
    cn = cldm.ControlNet(hint_channels=3, **cn_cfg, operations=ops, dtype=torch.float32, device="cpu")
    _init_params(cn, seed + 3)
    with torch.no_grad():  # ControlNet residual scale comparable to the UNet features
        for zc in list(cn.zero_convs) + [cn.middle_block_out]:
            for p in zc.parameters():
                p.mul_(0.1)

    ckpt = {}
    for k, v in unet.state_dict().items():
        ckpt["model.diffusion_model." + k] = v.float().contiguous()
    for k, v in clip.state_dict().items():
        if k.startswith("text_projection"):
            continue
        ckpt["cond_stage_model.transformer." + k] = v.float().contiguous()
    for k, v in vae.state_dict().items():
        ckpt["first_stage_model." + k] = v.float().contiguous()
    cn_sd = {"control_model." + k: v.float().contiguous() for k, v in cn.state_dict().items()}
    return ckpt, cn_sd


def build(models_dir: str, seed: int = 0) -> dict:
    """Write the tiny checkpoint and ControlNet under models_dir/{checkpoints,controlnet} (cached)."""
    import safetensors.torch

    ckpt_path = os.path.join(models_dir, "checkpoints", CKPT_NAME)
    cn_path = os.path.join(models_dir, "controlnet", CONTROLNET_NAME)
    tag = hashlib.sha1(f"{BUILD_VERSION}-{seed}".encode()).hexdigest()[:10]
    stamp = os.path.join(models_dir, f".tiny-{tag}")
    if not (os.path.exists(stamp) and os.path.exists(ckpt_path) and os.path.exists(cn_path)):
        os.makedirs(os.path.dirname(ckpt_path), exist_ok=True)
        os.makedirs(os.path.dirname(cn_path), exist_ok=True)
        ckpt, cn_sd = build_state_dicts(seed)
        safetensors.torch.save_file(ckpt, ckpt_path + ".tmp")
        safetensors.torch.save_file(cn_sd, cn_path + ".tmp")
        os.replace(ckpt_path + ".tmp", ckpt_path)
        os.replace(cn_path + ".tmp", cn_path)
        open(stamp, "w").close()
    return {"checkpoint": CKPT_NAME, "controlnet": CONTROLNET_NAME, "checkpoint_path": ckpt_path, "controlnet_path": cn_path}
