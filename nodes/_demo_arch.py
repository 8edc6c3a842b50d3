"""The embedded demo model as ComfyUI objects: a pack-local SD1.5 model config and the builders that turn
state dicts into MODEL / CLIP / VAE / CONTROL_NET with ComfyUI's own classes.

``DemoSD15`` subclasses ``comfy.supported_models.SD15`` with the small UNet config and a small CLIP text
model behind the real SD1 tokenizer. It is instantiated and used directly, never added to
``comfy.supported_models.models``: ComfyUI's model detection is left exactly as it was. Because the
model is a real ``comfy.model_base.BaseModel`` (SD15 latent format, discrete eps schedule) inside a
``ModelPatcher``, sampling, ControlNet application and the pack's patches run on it as on SD1.5.

Files (``models/demo/``): ``demo_sd15.safetensors`` in the usual checkpoint layout
(``model.diffusion_model.*``, ``cond_stage_model.transformer.*``, ``first_stage_model.*``; the VAE is a
TAESD-shaped autoencoder, which ComfyUI's VAE class recognises by its keys) and ``demo_controlnet.safetensors`` in the
usual ``control_model.*`` layout. The training script (``scripts/train_demo_model.py``) builds the raw
torch modules with the same functions from the same spec (``pipelines/demo_spec.py``; this loader imports
no training module), so the files always match the loader.
"""
from __future__ import annotations

import functools
import logging
import os

import torch

from ..pipelines import demo_spec as spec

log = logging.getLogger("temporal_restore")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_DIR = os.path.join(REPO, "models", "demo")
CHECKPOINT = "demo_sd15.safetensors"
CONTROLNET = "demo_controlnet.safetensors"
UNET_PREFIX = "model.diffusion_model."
CLIP_PREFIX = "cond_stage_model.transformer."
VAE_PREFIX = "first_stage_model."
CONTROL_PREFIX = "control_model."


@functools.lru_cache(maxsize=1)
def demo_classes():
    """(DemoSD15, DemoSD1Tokenizer, DemoSD1ClipModel), created once per process."""
    import comfy.sd1_clip as sd1_clip
    import comfy.supported_models as sm
    import comfy.supported_models_base as smb

    width = spec.DEMO_CLIP_CONFIG["hidden_size"]

    class DemoClipModel(sd1_clip.SDClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}):
            super().__init__(device=device, textmodel_json_config=dict(spec.DEMO_CLIP_CONFIG),
                             return_projected_pooled=False, dtype=dtype, model_options=model_options)

    class DemoTokenizer(sd1_clip.SDTokenizer):
        def __init__(self, embedding_directory=None, tokenizer_data={}):
            super().__init__(embedding_directory=embedding_directory, embedding_size=width,
                             tokenizer_data=tokenizer_data)

    class DemoSD1Tokenizer(sd1_clip.SD1Tokenizer):
        def __init__(self, embedding_directory=None, tokenizer_data={}):
            super().__init__(embedding_directory=embedding_directory, tokenizer_data=tokenizer_data,
                             tokenizer=DemoTokenizer)

    class DemoSD1ClipModel(sd1_clip.SD1ClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}, **kwargs):
            super().__init__(device=device, dtype=dtype, model_options=model_options, clip_model=DemoClipModel,
                             **kwargs)

    class DemoSD15(sm.SD15):
        """SD1.5 with the demo's small widths. Not registered in comfy.supported_models.models."""
        unet_config = {**sm.SD15.unet_config, "model_channels": spec.DEMO_UNET_CONFIG["model_channels"],
                       "context_dim": spec.DEMO_UNET_CONFIG["context_dim"]}
        unet_extra_config = {"num_heads": spec.DEMO_UNET_CONFIG["num_heads"], "num_head_channels": -1}

        def clip_target(self, state_dict={}):
            return smb.ClipTarget(DemoSD1Tokenizer, DemoSD1ClipModel)

    return DemoSD15, DemoSD1Tokenizer, DemoSD1ClipModel


def model_config():
    """A fresh DemoSD15 instance (its ``unet_config`` is the full config the UNet is built from)."""
    DemoSD15 = demo_classes()[0]
    return DemoSD15(dict(spec.DEMO_UNET_CONFIG))


def controlnet_config(cfg) -> dict:
    c = dict(cfg.unet_config)
    c.pop("out_channels", None)
    c["hint_channels"] = 3
    return c


# ------------------------------------------------------------------------- raw modules (training, export)
def raw_unet(dtype=torch.float32):
    import comfy.ldm.modules.diffusionmodules.openaimodel as oam
    import comfy.ops

    return oam.UNetModel(**model_config().unet_config, operations=comfy.ops.disable_weight_init, dtype=dtype,
                         device="cpu")


def raw_controlnet(dtype=torch.float32):
    import comfy.cldm.cldm as cldm
    import comfy.ops

    return cldm.ControlNet(**controlnet_config(model_config()), operations=comfy.ops.disable_weight_init,
                           dtype=dtype, device="cpu")


def raw_clip(dtype=torch.float32):
    import comfy.ops
    from comfy.clip_model import CLIPTextModel

    return CLIPTextModel(dict(spec.DEMO_CLIP_CONFIG), dtype=dtype, device="cpu", operations=comfy.ops.disable_weight_init)


def raw_vae():
    import comfy.taesd.taesd as taesd

    return taesd.TAESD(latent_channels=spec.DEMO_VAE_LATENT_CHANNELS)


# ------------------------------------------------------------------------- ComfyUI objects
def build_model(sd: dict):
    """MODEL (ModelPatcher around a DemoSD15 BaseModel) from a checkpoint state dict."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.utils

    cfg = model_config()
    load_device = mm.get_torch_device()
    params = comfy.utils.calculate_parameters(sd, UNET_PREFIX)
    weight_dtype = comfy.utils.weight_dtype(sd, UNET_PREFIX)
    unet_dtype = mm.unet_dtype(model_params=params, supported_dtypes=list(cfg.supported_inference_dtypes),
                               weight_dtype=weight_dtype)
    manual_cast = mm.unet_manual_cast(unet_dtype, load_device, cfg.supported_inference_dtypes)
    cfg.set_inference_dtype(unet_dtype, manual_cast)
    model = cfg.get_model(sd, UNET_PREFIX, device=mm.unet_inital_load_device(params, unet_dtype))
    # The patcher class core's own loaders use: CoreModelPatcher (dynamic VRAM on NVIDIA) on ComfyUI 0.33+,
    # which wants the weights assigned rather than copied; plain ModelPatcher on 0.3.75.
    patcher_cls = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    patcher = patcher_cls(model, load_device=load_device, offload_device=mm.unet_offload_device())
    if getattr(patcher, "is_dynamic", lambda: False)():
        model.load_model_weights(dict(sd), UNET_PREFIX, assign=True)
    else:  # 0.3.75's load_model_weights has no assign parameter
        model.load_model_weights(dict(sd), UNET_PREFIX)
    return patcher


def build_clip(sd: dict, embedding_directory=None):
    import comfy.sd
    import comfy.utils

    cfg = model_config()
    clip_sd = cfg.process_clip_state_dict({k: v for k, v in sd.items() if k.startswith(CLIP_PREFIX)})
    clip = comfy.sd.CLIP(cfg.clip_target(), embedding_directory=embedding_directory, tokenizer_data=clip_sd,
                         parameters=comfy.utils.calculate_parameters(clip_sd))
    missing, _ = clip.load_sd(clip_sd, full_model=True)
    missing = [k for k in missing if "text_projection" not in k and "logit_scale" not in k]
    if missing:
        raise ValueError(f"demo checkpoint: the CLIP text model weights are incomplete (missing {missing[:3]}...)")
    return clip


def build_vae(sd: dict):
    import comfy.sd
    import comfy.utils

    vae_sd = comfy.utils.state_dict_prefix_replace(sd, {VAE_PREFIX: ""}, filter_keys=True)
    if not vae_sd:
        raise ValueError("demo checkpoint: it holds no VAE weights (first_stage_model.*)")
    if "taesd_decoder.1.weight" not in vae_sd:
        raise ValueError("demo checkpoint: expected a TAESD-shaped VAE (first_stage_model.taesd_*)")
    return comfy.sd.VAE(sd=vae_sd)


def build_controlnet(sd: dict):
    import comfy.controlnet
    import comfy.model_management as mm
    import comfy.ops
    import comfy.cldm.cldm as cldm

    cfg = model_config()
    data = {k[len(CONTROL_PREFIX):]: v for k, v in sd.items() if k.startswith(CONTROL_PREFIX)}
    if "input_hint_block.0.weight" not in data:
        raise ValueError("demo ControlNet: expected control_model.* weights with an input_hint_block")
    load_device = mm.get_torch_device()
    dtype = mm.unet_dtype(model_params=-1, supported_dtypes=list(cfg.supported_inference_dtypes),
                          weight_dtype=next(iter(data.values())).dtype)
    manual_cast = mm.unet_manual_cast(dtype, load_device)
    ccfg = controlnet_config(cfg)
    ccfg.update(operations=comfy.ops.pick_operations(dtype, manual_cast), dtype=dtype,
                device=mm.unet_offload_device())
    control_model = cldm.ControlNet(**ccfg)
    missing, _ = control_model.load_state_dict(data, strict=False)
    if missing:
        raise ValueError(f"demo ControlNet: missing weights {missing[:3]}...")
    return comfy.controlnet.ControlNet(control_model, load_device=load_device, manual_cast_dtype=manual_cast)


def missing_files(directory: str = DEMO_DIR) -> list[str]:
    return [n for n in (CHECKPOINT, CONTROLNET) if not os.path.isfile(os.path.join(directory, n))]


def load_demo(directory: str = DEMO_DIR, embedding_directory=None):
    """(MODEL, CLIP, VAE, CONTROL_NET) from ``directory``; ValueError naming the missing files otherwise."""
    import comfy.utils

    missing = missing_files(directory)
    if missing:
        raise ValueError(f"demo model: missing {', '.join(missing)} in {directory}; the files ship with the "
                         "repository (models/demo/) or are rebuilt with `.venv/bin/python scripts/train_demo_model.py`")
    sd = comfy.utils.load_torch_file(os.path.join(directory, CHECKPOINT), safe_load=True)
    cn_sd = comfy.utils.load_torch_file(os.path.join(directory, CONTROLNET), safe_load=True)
    model = build_model(sd)
    clip = build_clip(sd, embedding_directory)
    vae = build_vae(sd)
    control = build_controlnet(cn_sd)
    return model, clip, vae, control
