"""The pack inside a real headless ComfyUI server on 127.0.0.1."""
import json
import os
import pytest

pytestmark = pytest.mark.server


def test_object_info_lists_every_pack_node(server, comfy_host):
    info = server.object_info()
    pack_module = comfy_host.nodes.LOADED_MODULE_DIRS["temporal_restore"]
    pack_ids = {nid for nid, cls in comfy_host.nodes.NODE_CLASS_MAPPINGS.items()
                if getattr(cls, "RELATIVE_PYTHON_MODULE", "") == "custom_nodes.temporal_restore"}
    assert pack_module and pack_ids, "the pack registered no nodes in-process"
    assert all(n.startswith("TR_") for n in pack_ids)
    missing = sorted(pack_ids - set(info))
    assert not missing, f"server does not list pack nodes: {missing}"
    for nid in pack_ids:  # every input carries a tooltip
        spec = info[nid]["input"]
        for group in ("required", "optional"):
            for name, entry in spec.get(group, {}).items():
                opts = entry[1] if len(entry) > 1 else {}
                assert opts.get("tooltip"), f"{nid}.{name} has no tooltip"


def test_checkpoint_ksampler_batch_with_pack_node_over_http(server, tiny):
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny["checkpoint"]}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "remove the noise", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 4}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                     "latent_image": ["4", 0], "seed": 3, "steps": 4, "cfg": 2.0,
                                                     "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "TR_VideoMetrics", "inputs": {"restored": ["6", 0], "filename_prefix": "harness/metrics"}},
    }
    entry = server.run(prompt)
    assert "7" in entry["outputs"], f"pack node produced no output: {entry['outputs']}"
    files = [f for f in server.output_files(entry) if f.endswith(".json")]
    assert files and os.path.exists(files[0])
    metrics = json.load(open(files[0]))
    assert metrics["frames"] == 4
    assert server.alive()
