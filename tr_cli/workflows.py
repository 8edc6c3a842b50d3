"""Bundled API-format workflows: discovery, description and input overrides by node title."""
from __future__ import annotations

import copy
import json
import os

from .client import EXIT_USAGE, REPO, RunnerError

API_DIR = os.path.join(REPO, "workflows", "api")
INPUT_TITLE = "Input video"
OUTPUT_TITLE = "Output video"


def bundled() -> dict[str, str]:
    if not os.path.isdir(API_DIR):
        return {}
    return {f[:-5]: os.path.join(API_DIR, f) for f in sorted(os.listdir(API_DIR)) if f.endswith(".json")}


def load(name_or_path: str) -> dict:
    path = name_or_path if os.path.isfile(name_or_path) else bundled().get(name_or_path)
    if path is None:
        known = ", ".join(bundled()) or "none"
        raise RunnerError(f"unknown workflow '{name_or_path}': expected a bundled name ({known}) or an API-format JSON file", EXIT_USAGE)
    try:
        with open(path) as f:
            prompt = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise RunnerError(f"workflow {path} is not readable API-format JSON: {e}", EXIT_USAGE) from None
    if not isinstance(prompt, dict) or not all(isinstance(v, dict) and "class_type" in v for v in prompt.values()):
        raise RunnerError(f"workflow {path} is not in API format (expected {{id: {{class_type, inputs}}}}; export with 'Save (API)')", EXIT_USAGE)
    return prompt


def title(node: dict) -> str:
    return node.get("_meta", {}).get("title", node["class_type"])


def find(prompt: dict, key: str) -> list[str]:
    """Node ids whose id, title or class_type equals key (in that order of preference)."""
    if key in prompt:
        return [key]
    by_title = [nid for nid, n in prompt.items() if title(n) == key]
    return by_title or [nid for nid, n in prompt.items() if n["class_type"] == key]


def set_input(prompt: dict, assignment: str) -> None:
    """Apply `node.input=value` where node is an id, a title or a class type; value is JSON or a plain string."""
    if "=" not in assignment or "." not in assignment.split("=", 1)[0]:
        raise RunnerError(f"--set expects node.input=value, got '{assignment}'", EXIT_USAGE)
    target, raw = assignment.split("=", 1)
    node_key, input_name = target.rsplit(".", 1)
    ids = find(prompt, node_key)
    if not ids:
        raise RunnerError(f"--set {assignment}: no node with id, title or class '{node_key}'", EXIT_USAGE)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    for nid in ids:
        inputs = prompt[nid]["inputs"]
        if input_name in inputs and isinstance(inputs[input_name], list):
            raise RunnerError(f"--set {assignment}: '{input_name}' of '{node_key}' is a link, not a value", EXIT_USAGE)
        inputs[input_name] = value


def family(prompt: dict) -> str | None:
    """The model family the workflow is built for (``ui_format.MODEL_FAMILIES`` of the file its loader titled
    'Checkpoint' names), None when it loads no known checkpoint (e.g. the embedded demo model)."""
    from .ui_format import MODEL_FAMILIES

    for nid in find(prompt, "Checkpoint"):
        name = prompt[nid]["inputs"].get("ckpt_name")
        if isinstance(name, str) and name in MODEL_FAMILIES:
            return MODEL_FAMILIES[name]
    return None


def describe(prompt: dict) -> list[str]:
    """One line per node with its settable (non-link) inputs."""
    lines = []
    for nid, node in sorted(prompt.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else kv[0]):
        values = {k: v for k, v in node["inputs"].items() if not isinstance(v, list)}
        if values:
            shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in values.items())
            lines.append(f"  [{nid}] {title(node)} ({node['class_type']}): {shown}")
    return lines


def with_overrides(prompt: dict, assignments: list[str]) -> dict:
    prompt = copy.deepcopy(prompt)
    for a in assignments:
        set_input(prompt, a)
    return prompt


FRAMES_NODE = "tr_run_frames"  # the lossless image save the runner puts in place of the video tail


def image_tail(prompt: dict) -> tuple[list[str], list]:
    """(node ids of the CreateVideo -> SaveVideo tail, link to the restored IMAGE feeding it)."""
    outs = find(prompt, OUTPUT_TITLE)
    if not outs:
        raise RunnerError(f"workflow has no node titled '{OUTPUT_TITLE}'", EXIT_USAGE)
    out = prompt[outs[0]]
    drop = [outs[0]]
    src = out["inputs"].get("video") or out["inputs"].get("images")
    if isinstance(src, list) and prompt[src[0]]["class_type"] == "CreateVideo":
        drop.append(src[0])
        src = prompt[src[0]]["inputs"]["images"]
    if not (isinstance(src, list) and len(src) == 2):
        raise RunnerError("workflow: cannot find the restored images feeding the output video", EXIT_USAGE)
    return drop, src


def input_frames(prompt: dict) -> list | None:
    """Link to the input clip's frames (output 0 of the GetVideoComponents reading the input video)."""
    for vid in find(prompt, INPUT_TITLE):
        for nid, node in prompt.items():
            if node["class_type"] == "GetVideoComponents" and node["inputs"].get("video") == [vid, 0]:
                return [nid, 0]
    return None


def for_run(prompt: dict, tag: str, frames_prefix: str, match_size: bool) -> dict:
    """The prompt a runner submits: the video tail replaced by a lossless PNG save of the restored frames
    (the runner encodes the container the user asked for, with the input's audio and timestamps); every
    file the server writes named with the run's ``tag`` (so concurrent runs never collide and the run can
    delete them); with ``match_size`` the frames go through TR_MatchSize to the input's exact size times the
    workflow's whole output scale (1 for a restore, 4 for x4 super-resolution), and 8-bit level centres, first."""
    prompt = copy.deepcopy(prompt)
    drop, src = image_tail(prompt)
    for nid in drop:
        prompt.pop(nid)
    ref = input_frames(prompt)
    if match_size and ref is not None:
        # also snaps to 8-bit level centres: SaveImage truncates, and a host whose decoder returns k/255 a hair
        # low (ComfyUI 0.33's float decode of planar RGB) would otherwise save k-1 (identity when sizes match)
        # scale 0 (auto): a super-resolution workflow keeps its whole output scale (4x stays 4x)
        prompt["tr_run_match_size"] = {"class_type": "TR_MatchSize", "_meta": {"title": "Match input size"},
                                       "inputs": {"images": src, "reference": ref, "method": "bicubic",
                                                  "scale": 0, "to_8bit": True}}
        src = ["tr_run_match_size", 0]
    for nid, node in prompt.items():
        if isinstance(node["inputs"].get("filename_prefix"), str):
            node["inputs"]["filename_prefix"] = f"temporal_restore/{tag}_{nid}"
    prompt[FRAMES_NODE] = {"class_type": "SaveImage", "_meta": {"title": "Restored frames"},
                           "inputs": {"images": src, "filename_prefix": f"temporal_restore/{tag}_{frames_prefix}"}}
    return prompt
