"""Tiny real-architecture SD2.1-768-v, SDXL and SD x4 upscaler models for tests (test-only).

Each family keeps the block structure and conditioning of the real model at tiny widths, is written
as a checkpoint in the usual single-file layout and is loaded back through ComfyUI's own detection
(``comfy.sd.load_checkpoint_guess_config``), so the model is a real ``model_base`` class:

* ``sd21v``: SD2.1-768-v. ``SD20`` layout (4 levels, attention on the first three, linear
  projections, head width 16 instead of a head count), penultimate-layer OpenCLIP-H-style text
  encoder (96 wide), v-prediction detected by ComfyUI from the decoder's last ``norm1.bias`` spread
  (``SD20.model_type``), as for the real 768-v checkpoint. Plus a matching ControlNet.
* ``sdxl``: 3 levels, transformer depth ``[0, 2, 3]`` (real: ``[0, 2, 10]``), middle depth 3,
  ADM conditioning ``adm_in_channels = pooled (96) + 6 x 256`` size embeddings, two text
  encoders (CLIP-L 64 + bigG 96 wide, concatenated to a 160-wide context). Plus a ControlNet.
* ``x4``: the x4 upscaler: 7 input channels (latent + low-res RGB), ``num_classes`` noise-level
  embedding fed by the noise augmentation, attention on levels 1-3 of 4 with self-attention
  disabled (attn1 attends to the text) on levels 1-2; only level 3 and the middle have
  self-attention. No ControlNet exists for it. Its VAE is TAESD-shaped: ComfyUI builds the x4 KL
  VAE only at its full 128-channel width (``comfy/sd.py``), 200 MB; the UNet and conditioning are real.

``register()`` adds a ``supported_models`` subclass per family (the real class with tiny
``unet_config``) whose text encoders are the real ComfyUI classes built from tiny configs behind
the real tokenizers. Every parameter is initialised from a fixed seed.
"""
from __future__ import annotations

import hashlib
import os

import torch

try:
    import tiny_models
except ImportError:  # loaded by file path in a test server (tests/comfy_test_nodes/tr_tiny_models)
    import importlib.util
    import sys

    _spec = importlib.util.spec_from_file_location(
        "tr_tests_tiny_models", os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_models.py"))
    tiny_models = sys.modules.get("tr_tests_tiny_models") or importlib.util.module_from_spec(_spec)
    if "tr_tests_tiny_models" not in sys.modules:
        _spec.loader.exec_module(tiny_models)

BUILD_VERSION = "2"  # bump when a builder changes, so cached files are rebuilt


def _clip_cfg(width: int) -> dict:
    """3 layers: these encoders output the penultimate layer (ComfyUI asserts it is not the first)."""
    if width == 64:  # CLIP-L of SDXL
        return {**tiny_models.TINY_CLIP, "num_hidden_layers": 3}
    return {**tiny_models.TINY_CLIP, "hidden_size": width, "projection_dim": width, "intermediate_size": 2 * width,
            "hidden_act": "gelu", "num_attention_heads": 2, "num_hidden_layers": 3}


_BASE = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
         "legacy": False, "model_channels": 32, "use_linear_in_transformer": True, "num_heads": -1,
         "num_head_channels": 16, "use_temporal_attention": False, "use_temporal_resblock": False}

#: family -> (UNetModel kwargs, ComfyUI base class name, checkpoint prefix -> text encoder width).
#: ``transformer_depth_output`` lists the decoder's levels shallowest first, 3 blocks each (UNetModel pops it).
FAMILIES = {
    "sd21v": ({**_BASE, "in_channels": 4, "adm_in_channels": None, "context_dim": 96, "num_res_blocks": [2] * 4,
               "channel_mult": [1, 2, 4, 4], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
               "transformer_depth_middle": 1, "transformer_depth_output": [1] * 9 + [0] * 3},
              "SD20", {"cond_stage_model.model.transformer.": 96}),
    "sdxl": ({**_BASE, "in_channels": 4, "adm_in_channels": 96 + 6 * 256, "num_classes": "sequential",
              "context_dim": 160, "num_res_blocks": [2] * 3, "channel_mult": [1, 2, 4],
              "transformer_depth": [0, 0, 2, 2, 3, 3], "transformer_depth_middle": 3,
              "transformer_depth_output": [0, 0, 0, 2, 2, 2, 3, 3, 3]},
             "SDXL", {"conditioner.embedders.0.transformer.": 64, "conditioner.embedders.1.model.transformer.": 96}),
    "x4": ({**_BASE, "in_channels": 7, "adm_in_channels": None, "num_classes": 1000, "context_dim": 80,
            "num_heads": 4, "num_head_channels": -1, "disable_self_attentions": [True, True, True, False],
            "num_res_blocks": [2] * 4, "channel_mult": [1, 2, 2, 4], "transformer_depth": [0, 0, 1, 1, 1, 1, 1, 1],
            "transformer_depth_middle": 1, "transformer_depth_output": [0] * 3 + [1] * 9},
           "SD_X4Upscaler", {"cond_stage_model.model.transformer.": 80}),
}
HAS_CONTROLNET = ("sd21v", "sdxl")
#: keys of the UNet config ComfyUI matches on (detected from the state dict)
_MATCH = ("model_channels", "context_dim", "use_linear_in_transformer", "adm_in_channels", "in_channels")
_EXTRA = ("num_heads", "num_head_channels", "disable_self_attentions", "num_classes")


def ckpt_name(family: str) -> str:
    return f"tiny_{family}.safetensors"


def controlnet_name(family: str) -> str:
    return f"tiny_{family}_controlnet.safetensors"


def _text_classes(family: str):
    """(tokenizer class, text encoder class): ComfyUI's own, with tiny text-model configs."""
    import comfy.sd1_clip as sd1_clip
    import comfy.sdxl_clip as sdxl_clip
    import comfy.text_encoders.sd2_clip as sd2_clip

    widths = list(FAMILIES[family][2].values())
    if family == "sdxl":
        class TinyClipG(sd1_clip.SDClipModel):
            def __init__(self, device="cpu", dtype=None, model_options={}):
                super().__init__(device=device, layer="hidden", layer_idx=-2, textmodel_json_config=_clip_cfg(widths[1]),
                                 dtype=dtype, special_tokens={"start": 49406, "end": 49407, "pad": 0},
                                 layer_norm_hidden_state=False, return_projected_pooled=True,
                                 model_options={**model_options, "model_name": "clip_g"})

        class TinySDXLClipModel(sdxl_clip.SDXLClipModel):
            def __init__(self, device="cpu", dtype=None, model_options={}):
                torch.nn.Module.__init__(self)
                self.clip_l = sd1_clip.SDClipModel(layer="hidden", layer_idx=-2, device=device, dtype=dtype,
                                                   textmodel_json_config=_clip_cfg(64),
                                                   layer_norm_hidden_state=False, model_options=model_options)
                self.clip_g = TinyClipG(device=device, dtype=dtype, model_options=model_options)
                self.dtypes = {dtype}

        return sdxl_clip.SDXLTokenizer, TinySDXLClipModel

    class TinyClipH(sd1_clip.SDClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}, **kwargs):
            super().__init__(device=device, layer="hidden", layer_idx=-2, textmodel_json_config=_clip_cfg(widths[0]),
                             dtype=dtype, special_tokens={"start": 49406, "end": 49407, "pad": 0},
                             return_projected_pooled=True, model_options=model_options)

    class TinySD2ClipModel(sd2_clip.SD2ClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}, **kwargs):
            sd1_clip.SD1ClipModel.__init__(self, device=device, dtype=dtype, model_options=model_options,
                                           clip_name="h", clip_model=TinyClipH, **kwargs)

    return sd2_clip.SD2Tokenizer, TinySD2ClipModel


def _model_class(family: str):
    import comfy.supported_models as sm
    import comfy.supported_models_base as smb

    cfg, base_name, _ = FAMILIES[family]
    base = getattr(sm, base_name)
    tok, te = _text_classes(family)
    match = {**base.unet_config, **{k: cfg[k] for k in _MATCH}}
    if base_name == "SDXL":
        match["transformer_depth"] = cfg["transformer_depth"]
    extra = {**base.unet_extra_config, **{k: cfg[k] for k in _EXTRA if k in cfg}}
    extra.pop("num_classes", None) if family == "sdxl" else None  # detected from label_emb

    def clip_target(self, state_dict={}):
        return smb.ClipTarget(tok, te)

    return type(f"Tiny_{family}", (base,), {"unet_config": match, "unet_extra_config": extra,
                                            "clip_target": clip_target, "__module__": __name__})


def register() -> dict:
    """Make ComfyUI recognise the tiny family shapes (idempotent). Returns {family: class}."""
    import comfy.supported_models as sm

    have = {c.__name__: c for c in sm.models}
    out = {}
    for family in FAMILIES:
        name = f"Tiny_{family}"
        if name not in have:
            have[name] = _model_class(family)
            sm.models.insert(0, have[name])
        out[family] = have[name]
    return out


def build_state_dicts(family: str, seed: int = 0) -> tuple[dict, dict | None]:
    """(checkpoint state dict, ControlNet state dict or None) as CPU float32 tensors."""
    import comfy.cldm.cldm as cldm
    import comfy.ldm.modules.diffusionmodules.openaimodel as oam
    import comfy.ops
    import comfy.taesd.taesd as taesd
    from comfy.clip_model import CLIPTextModel

    ops = comfy.ops.manual_cast
    cfg, _, clips = FAMILIES[family]
    unet = oam.UNetModel(**cfg, operations=ops, dtype=torch.float32, device="cpu")
    tiny_models._init_params(unet, seed)
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        unet.out[2].weight.mul_(0.1)
        if family == "sd21v":  # what ComfyUI's SD20.model_type reads to tell a v-prediction checkpoint
            nb = unet.output_blocks[11][1].transformer_blocks[0].norm1.bias
            nb.copy_(torch.randn(nb.shape, generator=g) * 0.2)
    ckpt = {"model.diffusion_model." + k: v.float().contiguous() for k, v in unet.state_dict().items()}
    for i, (prefix, width) in enumerate(clips.items()):
        clip = CLIPTextModel(_clip_cfg(width), dtype=torch.float32,
                             device="cpu", operations=ops)
        tiny_models._init_params(clip, seed + 1 + i)
        with torch.no_grad():
            clip.text_model.embeddings.token_embedding.weight.mul_(0.1)
            clip.text_model.embeddings.position_embedding.weight.mul_(0.1)
        for k, v in clip.state_dict().items():
            if k.startswith("text_projection") and prefix.startswith("conditioner.embedders.0"):
                continue  # CLIP-L's projection is not in SDXL checkpoints
            ckpt[prefix + k] = v.float().contiguous()
    vae = taesd.TAESD(latent_channels=4)
    tiny_models._init_params(vae, seed + 2)
    with torch.no_grad():
        vae.vae_scale.fill_(1.0)
    ckpt.update({"first_stage_model." + k: v.float().contiguous() for k, v in vae.state_dict().items()})
    if family not in HAS_CONTROLNET:
        return ckpt, None
    drop = ("out_channels", "transformer_depth_output", "use_temporal_attention", "use_temporal_resblock")
    cn = cldm.ControlNet(hint_channels=3, **{k: v for k, v in cfg.items() if k not in drop}, operations=ops,
                         dtype=torch.float32, device="cpu")
    tiny_models._init_params(cn, seed + 3)
    with torch.no_grad():
        for zc in list(cn.zero_convs) + [cn.middle_block_out]:
            for p in zc.parameters():
                p.mul_(0.1)
    return ckpt, {"control_model." + k: v.float().contiguous() for k, v in cn.state_dict().items()}


def build(models_dir: str, family: str, seed: int = 0) -> dict:
    """Write the family's checkpoint (and ControlNet) under models_dir/{checkpoints,controlnet} (cached)."""
    import safetensors.torch

    paths = {"checkpoint": os.path.join(models_dir, "checkpoints", ckpt_name(family))}
    if family in HAS_CONTROLNET:
        paths["controlnet"] = os.path.join(models_dir, "controlnet", controlnet_name(family))
    tag = hashlib.sha1(f"{BUILD_VERSION}-{family}-{seed}".encode()).hexdigest()[:10]
    stamp = os.path.join(models_dir, f".tiny-{family}-{tag}")
    if not (os.path.exists(stamp) and all(os.path.exists(p) for p in paths.values())):
        ckpt, cn_sd = build_state_dicts(family, seed)
        for kind, sd in (("checkpoint", ckpt), ("controlnet", cn_sd)):
            if sd is None:
                continue
            os.makedirs(os.path.dirname(paths[kind]), exist_ok=True)
            safetensors.torch.save_file(sd, paths[kind] + ".tmp")
            os.replace(paths[kind] + ".tmp", paths[kind])
        open(stamp, "w").close()
    out = {"family": family, "checkpoint": ckpt_name(family), "checkpoint_path": paths["checkpoint"]}
    if "controlnet" in paths:
        out.update(controlnet=controlnet_name(family), controlnet_path=paths["controlnet"])
    return out
