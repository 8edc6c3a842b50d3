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
