"""nodes/color_match: TR_ColorMatch in a real in-process ComfyUI, and the colour keys of TR_VideoMetrics."""
import json

import pytest
import torch

from harness.inprocess import PromptError

pytest.importorskip("skimage")


def graph(method="wavelet", window=2, strength=1.0, task="low_light", frames=5, restored=None, reference=None):
    """Clean synthetic clip (1), a colour-drifted copy (2: TR_Degrade), the drifted copy corrected towards
    the clean clip (3), metrics of the drifted (4) and of the corrected (5) clip against the clean one."""
    return {
        "1": {"class_type": "TR_SyntheticClip",
              "inputs": {"image": "astronaut", "frames": frames, "width": 40, "height": 32, "motion": "pan",
                         "moving_object": False, "seed": 0}},
        "2": {"class_type": "TR_Degrade", "inputs": {"images": ["1", 0], "task": task, "strength": -1.0,
                                                      "seed": 1}},
        "3": {"class_type": "TR_ColorMatch",
              "inputs": {"restored": restored or ["2", 0], "reference": reference or ["1", 0], "method": method,
                         "temporal_window": window, "strength": strength}},
        "4": {"class_type": "TR_VideoMetrics", "inputs": {"restored": ["2", 0], "reference": ["1", 0]}},
        "5": {"class_type": "TR_VideoMetrics", "inputs": {"restored": ["3", 0], "reference": ["1", 0]}},
    }


def test_schema_follows_the_conventions(comfy_host):
    schema = comfy_host.node("TR_ColorMatch").define_schema()
    assert schema.node_id == "TR_ColorMatch" and schema.display_name.endswith("(Temporal Restore)")
    assert schema.category.startswith("temporal_restore/")
    assert all(i.tooltip for i in schema.inputs)
    ref_tip = next(i.tooltip for i in comfy_host.node("TR_VideoMetrics").define_schema().inputs if i.id == "reference")
    assert "CIEDE2000" in ref_tip and "color_flicker" in ref_tip


@pytest.mark.parametrize("method", ["wavelet", "adain"])
def test_correction_lowers_the_colour_difference(comfy_host, method):
    res = comfy_host.run(graph(method), outputs=["1", "2", "3", "4", "5"])
    clean, drifted = res["outputs"]["1"][0], res["outputs"]["2"][0]
    (out,) = res["outputs"]["3"]
    assert out.shape == drifted.shape and out.dtype == drifted.dtype
    before, after = json.loads(res["outputs"]["4"][0]), json.loads(res["outputs"]["5"][0])
    assert before["color_delta_e"] > 5  # low light darkens a lot
    # wavelet keeps the darkened clip's detail contrast (bands finer than the 5-level low-pass), adain does not
    assert after["color_delta_e"] < {"wavelet": 0.5, "adain": 0.3}[method] * before["color_delta_e"], (before, after)
    assert after["psnr"] > before["psnr"]
    if method == "adain":  # the clean clip's per-channel means (up to the 0..1 clamp)
        assert torch.allclose(out.mean((1, 2)), clean.mean((1, 2)), atol=0.02)


def test_none_and_identity(comfy_host):
    res = comfy_host.run(graph("none"), outputs=["2", "3"])
    assert torch.equal(res["outputs"]["3"][0], res["outputs"]["2"][0])
    res = comfy_host.run(graph("wavelet", window=0, restored=["1", 0]), outputs=["1", "3", "5"])
    assert torch.allclose(res["outputs"]["3"][0], res["outputs"]["1"][0], atol=1e-6)
    assert json.loads(res["outputs"]["5"][0])["color_delta_e"] == pytest.approx(0, abs=1e-4)


def test_sr_reference_is_resized(comfy_host):
    """Super-resolution: the reference is the x4-smaller input; the output keeps the restored size."""
    g = graph("wavelet", task="sr_x4", restored=["1", 0], reference=["2", 0])
    del g["4"], g["5"]  # the metrics nodes compare same-size clips
    res = comfy_host.run(g, outputs=["1", "3"])
    assert res["outputs"]["3"][0].shape == res["outputs"]["1"][0].shape == (5, 32, 40, 3)


def test_bf16_input_keeps_dtype(comfy_host):
    node = comfy_host.node("TR_ColorMatch")
    x = torch.rand(3, 9, 7, 3).to(torch.bfloat16)
    ref = torch.rand(3, 9, 7, 3)
    (out,) = node.execute(x, ref, "adain", 1, 1.0).args
    assert out.dtype == torch.bfloat16 and out.shape == x.shape


def test_bad_input_is_named(comfy_host):
    g = graph()
    g["6"] = {"class_type": "ImageFromBatch", "inputs": {"image": ["1", 0], "batch_index": 0, "length": 3}}
    g["3"]["inputs"]["reference"] = ["6", 0]
    with pytest.raises(PromptError, match=r"reference: expected 5 frames like restored, got 3"):
        comfy_host.run(g, outputs=["3"])
    node = comfy_host.node("TR_ColorMatch")
    with pytest.raises(ValueError, match="restored"):
        node.execute(torch.rand(2, 4, 4), torch.rand(2, 4, 4, 3), "wavelet", 0, 1.0)
    with pytest.raises(ValueError, match="reference: expected finite"):
        node.execute(torch.rand(2, 4, 4, 3), torch.full((2, 4, 4, 3), float("nan")), "wavelet", 0, 1.0)
    with pytest.raises(ValueError, match="method"):
        node.execute(torch.rand(2, 4, 4, 3), torch.rand(2, 4, 4, 3), "bogus", 0, 1.0)
