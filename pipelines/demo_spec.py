"""Architecture of the embedded demo model (plain dicts): what the runtime loader (``nodes/_demo_arch.py``)
and the trainer (``scripts/train_demo_model.py``, through ``pipelines.train_tasks``) build, so the files
always match the loader. Pure Python; the loader imports this, never a training module.
"""
from __future__ import annotations

# SD1.5 block layout (num_res_blocks 2, attention at input 1,2,4,5,7,8 / middle / output 3-11) at a small
# width: model_channels 32, context_dim 64, 2 heads.
DEMO_UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
    "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 32,
    "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "channel_mult": [1, 2, 2, 2], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
    "context_dim": 64, "num_heads": 2, "num_head_channels": -1,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
# CLIP text model behind the real SD1 tokenizer: 2 layers, 64 wide (HF CLIPTextConfig keys).
DEMO_CLIP_CONFIG = {
    "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
    "eos_token_id": 49407, "hidden_act": "quick_gelu", "hidden_size": 64, "initializer_factor": 1.0,
    "initializer_range": 0.02, "intermediate_size": 128, "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77, "model_type": "clip_text_model", "num_attention_heads": 2,
    "num_hidden_layers": 2, "pad_token_id": 1, "projection_dim": 64, "torch_dtype": "float32",
    "vocab_size": 49408,
}
# VAE: TAESD-shaped (ComfyUI recognises it by its keys): x8 downsampling to 4 latent channels like SD's VAE.
DEMO_VAE_LATENT_CHANNELS = 4
SD15_SCALE_FACTOR = 0.18215  # comfy.latent_formats.SD15
