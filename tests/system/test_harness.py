"""The harnesses themselves: tiny models load through stock nodes, in-process and over HTTP."""
import pytest
import torch

pytestmark = pytest.mark.server


def _txt2img(tiny, batch=4, size=64, steps=4, seed=1):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny["checkpoint"]}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "remove the noise", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": batch}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                     "latent_image": ["4", 0], "seed": seed, "steps": steps, "cfg": 2.0,
                                                     "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
    }


def test_inprocess_tiny_checkpoint_samples_a_batch(comfy_host, tiny):
    out = comfy_host.run(_txt2img(tiny), outputs=["5", "6"])
    latent = out["outputs"]["5"][0]["samples"]
    image = out["outputs"]["6"][0]
    assert latent.shape == (4, 4, 8, 8)
    assert image.shape == (4, 64, 64, 3)
    assert torch.isfinite(latent).all() and torch.isfinite(image).all()
    # different seeds give different frames: the model really ran
    assert (latent[0] - latent[1]).abs().max() > 1e-3


def test_inprocess_is_deterministic(comfy_host, tiny):
    a = comfy_host.run(_txt2img(tiny, seed=7), outputs=["5"])["outputs"]["5"][0]["samples"]
    comfy_host.executor.caches.outputs.clear_all() if hasattr(comfy_host.executor.caches.outputs, "clear_all") else None
    b = comfy_host.run(_txt2img(tiny, seed=7, steps=5), outputs=["5"])["outputs"]["5"][0]["samples"]
    c = comfy_host.run(_txt2img(tiny, seed=7, steps=4), outputs=["5"])["outputs"]["5"][0]["samples"]
    assert torch.equal(a, c)
    assert not torch.equal(a, b)


def test_tiny_controlnet_loads_with_stock_loader(comfy_host, tiny):
    import comfy.controlnet
    import folder_paths

    cn = comfy.controlnet.load_controlnet(folder_paths.get_full_path_or_raise("controlnet", tiny["controlnet"]))
    assert cn is not None and cn.control_model.__class__.__name__ == "ControlNet"
