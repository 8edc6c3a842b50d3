"""nodes/measure: TR_SyntheticClip -> TR_Degrade -> TR_VideoMetrics in real ComfyUI."""
import json
import math
import os

import pytest
import torch

pytest.importorskip("skimage")


def chain(task="denoise", strength=-1.0, seed=3, frames=6, width=64, height=48, extra_metrics=None):
    metrics_inputs = {"restored": ["2", 0], "reference": ["1", 0], "degraded": ["2", 0], "flow": ["1", 1]}
    if task.startswith("sr_"):
        metrics_inputs["restored"] = ["1", 0]  # the clean clip as a perfect "restorer"
    metrics_inputs.update(extra_metrics or {})
    return {
        "1": {"class_type": "TR_SyntheticClip",
              "inputs": {"image": "astronaut", "frames": frames, "width": width, "height": height,
                         "motion": "mixed", "moving_object": True, "seed": 0}},
        "2": {"class_type": "TR_Degrade", "inputs": {"images": ["1", 0], "task": task, "strength": strength,
                                                      "seed": seed}},
        "3": {"class_type": "TR_VideoMetrics", "inputs": metrics_inputs},
    }


def test_schemas_follow_the_conventions(comfy_host):
    for nid in ("TR_SyntheticClip", "TR_Degrade", "TR_VideoMetrics"):
        schema = comfy_host.node(nid).define_schema()
        assert schema.node_id == nid
        assert schema.display_name.endswith("(Temporal Restore)")
        assert schema.category.startswith("temporal_restore/")
        assert all(i.tooltip for i in schema.inputs), nid
    assert comfy_host.node("TR_VideoMetrics").define_schema().is_output_node


def test_synthetic_degrade_metrics_prompt(comfy_host):
    res = comfy_host.run(chain(), outputs=["1", "2", "3"])
    clean, flow = res["outputs"]["1"]
    (noisy,) = res["outputs"]["2"]
    assert clean.shape == (6, 48, 64, 3) and clean.dtype == torch.float32
    assert flow.forward.shape == (5, 2, 48, 64) and flow.backend == "ground_truth"
    assert noisy.shape == clean.shape and not torch.equal(noisy, clean)
    (text,) = res["outputs"]["3"]
    m = json.loads(text)
    # AWGN sigma 25 (default): PSNR ~ 20 dB, the degraded baseline is the same clip here
    assert 18 < m["psnr"] < 23 and m["psnr"] == m["psnr_degraded"]
    assert m["flow_source"] == "given"
    assert m["warping_error"] > 3 * m["warping_error_reference"]
    # the result shows on the node / in the history
    assert json.loads(res["ui"]["3"]["text"][0]) == m
    # deterministic: same prompt, same degraded frames
    again = comfy_host.run(chain(seed=3), outputs=["2"])["outputs"]["2"][0]
    assert torch.equal(again, noisy)
    other = comfy_host.run(chain(seed=4), outputs=["2"])["outputs"]["2"][0]
    assert not torch.equal(other, noisy)


def test_sr_task_shrinks_and_metrics_upscale_the_baseline(comfy_host):
    res = comfy_host.run(chain(task="sr_x4"), outputs=["2", "3"])
    assert res["outputs"]["2"][0].shape == (6, 12, 16, 3)
    m = json.loads(res["outputs"]["3"][0])
    assert m["psnr"] == "inf" and m["ssim"] == pytest.approx(1.0)
    assert math.isfinite(m["psnr_degraded"]) and m["psnr_degraded"] < 40


def test_metrics_json_file_and_seams(comfy_host):
    import folder_paths

    prompt = chain(extra_metrics={"filename_prefix": "tr_metrics/run", "window_starts": "3"})
    del prompt["3"]["inputs"]["flow"]  # no FLOW: DIS on the reference (with progress callback)
    res = comfy_host.run(prompt, outputs=["3"])
    ui = res["ui"]["3"]
    (item,) = ui["metrics_files"]
    path = os.path.join(folder_paths.get_output_directory(), item["subfolder"], item["filename"])
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    assert saved == json.loads(res["outputs"]["3"][0])
    assert "seam_ratio" in saved and saved["seam_ratio"] > 0
    assert saved["flow_source"] == "reference"


def test_bad_inputs_are_value_errors(comfy_host):
    from harness.inprocess import PromptError

    with pytest.raises(PromptError, match="window_starts"):
        comfy_host.run(chain(extra_metrics={"window_starts": "0, 99"}), outputs=["3"])
    no_ref = chain()
    del no_ref["3"]["inputs"]["reference"]
    with pytest.raises(PromptError, match="degraded"):
        comfy_host.run(no_ref, outputs=["3"])
    with pytest.raises(PromptError, match="strength"):
        comfy_host.run(chain(task="jpeg", strength=200.0), outputs=["2"])


def test_metrics_reach_history_on_a_real_server(server):
    prompt = chain(frames=4, extra_metrics={"filename_prefix": "tr_metrics/server"})
    entry = server.run(prompt)
    out = entry["outputs"]["3"]
    m = json.loads(out["text"][0])
    assert m["frames"] == 4 and 18 < m["psnr"] < 23
    files = [f for f in server.output_files(entry) if f.endswith(".json")]
    assert len(files) == 1 and os.path.exists(files[0])
    with open(files[0], encoding="utf-8") as f:
        assert json.load(f) == m
