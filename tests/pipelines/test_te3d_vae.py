"""TE-3D VAE decoder: zero-initialised inflation equals the 2D decoder, chunking, K/V sharing,
weights round trip, the training script, and the ComfyUI node."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from temporal_restore.pipelines import te3d_vae

from harness.paths import REPO


@pytest.fixture
def taesd_decoder(comfy_host, tiny):
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny["checkpoint"]}}}
    vae = comfy_host.run(prompt, outputs=["1"])["outputs"]["1"][2]
    return vae, vae.first_stage_model.taesd_decoder


@pytest.fixture
def sd_decoder(comfy_host):
    """A small decoder of the full SD-VAE structure (ResnetBlocks, mid-block + up-path attention)."""
    from comfy.ldm.modules.diffusionmodules.model import Decoder

    dec = Decoder(ch=32, out_ch=3, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=[8], in_channels=3,
                  resolution=16, z_channels=4)
    te3d_vae.init_like_comfy(dec, seed=3)
    return dec.eval()


def _z(frames=5, hw=4, seed=0):
    return torch.randn(frames, 4, hw, hw, generator=torch.Generator().manual_seed(seed))


def test_zero_init_equals_2d_taesd_from_checkpoint(taesd_decoder):
    _, dec = taesd_decoder
    z = _z(6)
    with torch.no_grad():
        ref = dec(z)
        te = te3d_vae.TE3DDecoder(dec)
        n_temporal = len(te.temporal_parameters())
        out = te(z)
        chunked = te3d_vae.decode_chunked(te, z, chunk=4, overlap=2)
    assert n_temporal > 0
    assert ref.abs().max() > 1e-3
    assert (out - ref).abs().max() <= 1e-5
    assert (chunked - ref).abs().max() <= 1e-5


def test_identity_skip_runs_no_temporal_layer(taesd_decoder):
    """Untrained (zero-init) temporal layers are not run at all: same cost as the 2D decoder, bit-identical
    output; a single trained layer is run (and only while its last layer is non-zero)."""
    _, dec = taesd_decoder
    te = te3d_vae.TE3DDecoder(dec).eval()
    calls = []
    temporal = [m for m in te.modules() if isinstance(m, (te3d_vae.TemporalResBlock, te3d_vae.TemporalAttention))]
    for m in temporal:
        m.register_forward_hook(lambda mod, args, out: calls.append(type(mod).__name__))
    z = _z(4)
    with torch.no_grad():
        ref = dec(z)
        out = te(z)
    assert te.is_identity() and calls == []
    assert torch.equal(out, ref)
    with torch.no_grad():
        temporal[0].conv2.bias.fill_(1e-3)
        out = te(z)
    assert not te.is_identity() and calls == ["TemporalResBlock"]
    assert not torch.equal(out, ref)


def test_trained_temporal_layers_mix_frames(taesd_decoder):
    _, dec = taesd_decoder
    te = te3d_vae.TE3DDecoder(dec)
    with torch.no_grad():
        for p in te.temporal_parameters():
            p.add_(torch.randn_like(p) * 0.05)
        z = _z(4)
        a = te(z)
        z2 = z.clone()
        z2[0] += 1.0
        b = te(z2)
    assert (a[1] - b[1]).abs().max() > 1e-5  # frame 1 now sees frame 0
    with torch.no_grad():
        single = torch.cat([te(z[i:i + 1]) for i in range(4)])
    assert (single - a).abs().max() > 1e-5


def test_sd_vae_structure_zero_init_and_shared_kv(sd_decoder):
    dec = sd_decoder
    z = _z(4, hw=8)
    with torch.no_grad():
        ref = dec(z)
        te = te3d_vae.TE3DDecoder(dec)
        assert (te(z) - ref).abs().max() <= 1e-5
        names = [type(m).__name__ for m in te.modules()]
        assert "TemporalAttention" in names and "TemporalResBlock" in names
        kv = te3d_vae.TE3DDecoder(dec, temporal_attention=False, temporal_res=False, share_kv_radius=1)
        static = z[:1].expand(4, -1, -1, -1).contiguous()
        # identical frames: attending to copies of the same keys/values changes nothing
        assert (kv(static) - dec(static)).abs().max() <= 1e-5
        # different frames: the neighbours' K/V change the result
        assert (kv(z) - ref).abs().max() > 1e-4


def test_weights_roundtrip_and_mismatch(taesd_decoder, tmp_path):
    import safetensors.torch

    _, dec = taesd_decoder
    te = te3d_vae.TE3DDecoder(dec)
    with torch.no_grad():
        for p in te.temporal_parameters():
            p.normal_(0, 0.02)
    path = str(tmp_path / "t.safetensors")
    safetensors.torch.save_file(te3d_vae.temporal_state_dict(te), path)
    te2 = te3d_vae.TE3DDecoder(dec)
    te3d_vae.load_temporal_state_dict(te2, safetensors.torch.load_file(path), source="temporal_weights")
    z = _z(3)
    with torch.no_grad():
        assert torch.equal(te(z), te2(z))
    sd = safetensors.torch.load_file(path)
    sd.pop(next(iter(sd)))
    with pytest.raises(ValueError, match="temporal_weights"):
        te3d_vae.load_temporal_state_dict(te2, sd, source="temporal_weights")


@pytest.mark.slow
def test_train_script_few_steps(tiny, tmp_path):
    out = str(tmp_path / "te3d.safetensors")
    cmd = [sys.executable, os.path.join(REPO, "scripts", "train_te3d.py"), "--checkpoint", tiny["checkpoint_path"],
           "--steps", "4", "--frames", "4", "--size", "32", "--out", out, "--seed", "1", "--synthetic", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("step")]
    assert len(lines) == 4
    first, last = (float(ln.split("loss=")[1].split()[0]) for ln in (lines[0], lines[-1]))
    assert last < first
    import safetensors.torch

    sd = safetensors.torch.load_file(out)
    assert sd and any(v.abs().max() > 0 for k, v in sd.items() if "conv2" in k or "proj" in k)


def test_node_equals_vaedecode_and_modes(comfy_host, tiny):
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny["checkpoint"]}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 5}},
        "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "TR_TE3DVAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 2], "mode": "te3d",
                                                           "chunk": 3, "overlap": 1, "kv_radius": 1}},
    }
    out = comfy_host.run(prompt, outputs=["3", "4"])["outputs"]
    ref, img = out["3"][0], out["4"][0]
    assert img.shape == ref.shape == (5, 32, 32, 3)
    assert (img - ref).abs().max() <= 1e-5
    prompt["4"]["inputs"]["mode"] = "share_kv"  # TAESD has no attention: clear error
    with pytest.raises(Exception, match="share_kv"):
        comfy_host.run(prompt, outputs=["4"])
    schema = comfy_host.node("TR_TE3DVAEDecode").define_schema()
    assert all(i.tooltip for i in schema.inputs)


def test_node_loads_temporal_weights(comfy_host, tiny, taesd_decoder, tmp_path):
    import safetensors.torch

    _, dec = taesd_decoder
    te = te3d_vae.TE3DDecoder(dec)
    with torch.no_grad():
        for p in te.temporal_parameters():
            p.normal_(0, 0.05)
    path = str(tmp_path / "temporal.safetensors")
    safetensors.torch.save_file({k: v.contiguous() for k, v in te3d_vae.temporal_state_dict(te).items()}, path)
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny["checkpoint"]}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 4}},
        "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "TR_TE3DVAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 2], "mode": "te3d",
                                                           "chunk": 4, "overlap": 1, "kv_radius": 1,
                                                           "temporal_weights": path}},
    }
    out = comfy_host.run(prompt, outputs=["3", "4"])["outputs"]
    assert out["4"][0].shape == out["3"][0].shape
    assert (out["4"][0] - out["3"][0]).abs().max() > 1e-4
    prompt["4"]["inputs"]["temporal_weights"] = str(tmp_path / "missing.safetensors")
    with pytest.raises(Exception, match="temporal_weights"):
        comfy_host.run(prompt, outputs=["4"])


def test_node_path_on_sd_style_vae(comfy_host):
    """TR_TE3DVAEDecode's decode on a ComfyUI VAE of the SD (AutoencoderKL) family: te3d equals
    VAE.decode; share_kv equals it on a static clip and differs on a moving one."""
    import comfy.sd
    from temporal_restore.nodes import te3d_vae as node

    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 32,
                "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    vae = comfy.sd.VAE(sd={}, config={"params": {"embed_dim": 4, "ddconfig": ddconfig}})
    te3d_vae.init_like_comfy(vae.first_stage_model, seed=5)
    z = _z(5, hw=4, seed=1)
    static = z[:1].expand(5, -1, -1, -1).contiguous()
    with torch.inference_mode():
        ref = vae.decode(z)
        out = node.te3d_decode(vae, z, "te3d", chunk=3, overlap=1)
        assert out.shape == ref.shape == (5, 8, 8, 3)
        assert torch.equal(out, ref)  # identity skip: bit-identical
        assert torch.equal(node.te3d_decode(vae, z, "2d", chunk=3, overlap=1), ref)
        # ... decoded by ComfyUI's VAE.decode itself, in the batches it sizes to the free memory (a whole
        # chunk at once peaked 1.24x VAEDecode's RSS at 512 px x 8 frames)
        seen = []
        inner = vae.first_stage_model.decode
        vae.first_stage_model.decode = lambda x, *a, **k: seen.append(x.shape[0]) or inner(x, *a, **k)
        try:
            node.te3d_decode(vae, z, "te3d", chunk=3, overlap=1)
        finally:
            del vae.first_stage_model.decode
        assert sum(seen) == 5
        ref_s = vae.decode(static)
        kv_s = node.te3d_decode(vae, static, "share_kv", chunk=3, overlap=1, kv_radius=1)
        kv = node.te3d_decode(vae, z, "share_kv", chunk=3, overlap=1, kv_radius=1)
    assert (kv_s - ref_s).abs().max() <= 1e-5
    assert (kv - ref).abs().max() > 1e-4
