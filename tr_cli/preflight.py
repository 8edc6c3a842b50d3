"""Checks made before any compute: the workflow against the server's node list (/object_info), the
reference against the input, and the run's cost (frames x size x steps).

Every failure is a RunnerError with exit code 2 (bad usage) and one line naming what to change."""
from __future__ import annotations

import os

from . import workflows
from .client import EXIT_USAGE, Client, RunnerError

MODEL_EXTS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".gguf")
MODEL_FOLDERS = {"ckpt_name": "checkpoints", "control_net_name": "controlnet", "vae_name": "vae",
                 "lora_name": "loras", "unet_name": "diffusion_models", "model_name": "upscale_models"}


def object_info(client: Client, prompt: dict) -> dict:
    """/object_info of each class the prompt uses; a class the server lacks is a usage error."""
    info = {}
    for cls in sorted({n["class_type"] for n in prompt.values()}):
        got = client.get_json(f"/object_info/{cls}", 60)
        if cls not in got:
            users = [workflows.title(n) for n in prompt.values() if n["class_type"] == cls]
            raise RunnerError(f"node type {cls} (used by '{users[0]}') is not installed on the server", EXIT_USAGE)
        info[cls] = got[cls]
    return info


def _spec(info: dict, name: str):
    spec = info.get("input", {})
    for group in ("required", "optional"):
        if name in spec.get(group, {}):
            return spec[group][name]
    return None


def _inputs(info: dict) -> list[str]:
    spec = info.get("input", {})
    return [k for group in ("required", "optional") for k in spec.get(group, {})]


def _combo(spec) -> list | None:
    kind = spec[0] if spec else None
    if isinstance(kind, list):
        return kind
    if kind == "COMBO":
        return list((spec[1] if len(spec) > 1 else {}).get("options", []))
    return None


def _type_error(kind: str, value) -> str | None:
    ok = {"INT": lambda v: isinstance(v, int) and not isinstance(v, bool)
          or (isinstance(v, float) and v.is_integer()),
          "FLOAT": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "BOOLEAN": lambda v: isinstance(v, bool),
          "STRING": lambda v: isinstance(v, str)}.get(kind)
    if ok is None or ok(value):
        return None
    expected = {"INT": "a whole number", "FLOAT": "a number", "BOOLEAN": "true or false", "STRING": "text"}[kind]
    return f"expected {expected}, got {value!r}"


def check_prompt(prompt: dict, info: dict, sets: list[str], skip: set[tuple[str, str]] = frozenset(),
                 models_hint: str = "") -> None:
    """Every --set names an input its node has; every literal input has the type the server expects;
    every model file the workflow names is on the server (else its list of names, and a hint)."""
    for assignment in sets:
        target = assignment.split("=", 1)[0]
        node_key, input_name = target.rsplit(".", 1)
        for nid in workflows.find(prompt, node_key):
            cls = prompt[nid]["class_type"]
            if _spec(info[cls], input_name) is None:
                raise RunnerError(f"--set {assignment}: node '{node_key}' ({cls}) has no input '{input_name}'; "
                                  f"its inputs: {', '.join(_inputs(info[cls]))}", EXIT_USAGE)
    for nid, node in prompt.items():
        cls = node["class_type"]
        for name, value in node["inputs"].items():
            spec = _spec(info[cls], name)
            if spec is None or isinstance(value, list) or (nid, name) in skip:
                continue
            where = f"'{workflows.title(node)}' ({cls}) input '{name}'"
            options = _combo(spec)
            if options is not None:
                if value in options:
                    continue
                if isinstance(value, str) and value.lower().endswith(MODEL_EXTS):
                    folder = MODEL_FOLDERS.get(name, "the matching models folder")
                    have = ", ".join(map(str, options)) or "none"
                    raise RunnerError(f"model '{value}' for {where} is not on the server; it has: {have} "
                                      f"(put the file in the server's models/{folder}, or pass --models-dir DIR "
                                      f"holding {folder}/ to the local server{models_hint})", EXIT_USAGE)
                raise RunnerError(f"{where}: {value!r} is not one of {', '.join(map(str, options[:20]))}", EXIT_USAGE)
            err = _type_error(spec[0], value) if isinstance(spec[0], str) else None
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if err is None and spec[0] in ("INT", "FLOAT"):
                if opts.get("max") is not None and value > opts["max"]:
                    err = f"{value} is bigger than max {opts['max']}"
                elif opts.get("min") is not None and value < opts["min"]:
                    err = f"{value} is smaller than min {opts['min']}"
            if err:
                raise RunnerError(f"{where}: {err}", EXIT_USAGE)


def check_reference(inp: dict, ref: dict, path: str) -> None:
    """The reference must be the same clip, clean: same frame count and size as the input."""
    if (ref["frames"], ref["width"], ref["height"]) != (inp["frames"], inp["width"], inp["height"]):
        raise RunnerError(f"--reference {path} has {ref['frames']} frames of {ref['width']}x{ref['height']}; the "
                          f"input has {inp['frames']} frames of {inp['width']}x{inp['height']}: expected the clean "
                          f"version of the same clip (same frame count and size)", EXIT_USAGE)


def check_output(output: str, reads: list[str]) -> None:
    """The output must not be a file the run reads (the input, the reference, the workflow)."""
    out = os.path.realpath(output)
    for path in reads:
        if path and (os.path.realpath(path) == out or (os.path.exists(output) and os.path.exists(path)
                                                       and os.path.samefile(path, output))):
            raise RunnerError(f"-o {output} is {path}, which the run reads: choose another output name", EXIT_USAGE)


# ------------------------------------------------------------------ cost

SAMPLER_STEP_INPUTS = ("steps",)


def work_summary(prompt: dict, frames: int, width: int, height: int) -> dict:
    """frames x working size x steps: the working size follows ImageScaleBy nodes applied to the input
    frames before encoding; steps are the 'steps' of every sampling node (inversion and restore both count)."""
    scale = 1.0
    for node in prompt.values():
        if node["class_type"] == "ImageScaleBy" and _feeds_encoder(prompt, node):
            scale *= float(node["inputs"].get("scale_by", 1.0))
    steps = {workflows.title(n): int(n["inputs"]["steps"]) for n in prompt.values()
             if isinstance(n["inputs"].get("steps"), int)}
    return {"frames": frames, "width": round(width * scale), "height": round(height * scale), "steps": steps}


def _feeds_encoder(prompt: dict, node: dict) -> bool:
    me = [nid for nid, n in prompt.items() if n is node][0]
    return any(n["class_type"].startswith("VAEEncode") and any(isinstance(v, list) and v[0] == me
                                                                 for v in n["inputs"].values())
               for n in prompt.values())


def describe_work(w: dict) -> str:
    steps = " + ".join(f"{s} ({t})" for t, s in w["steps"].items())
    return (f"work: {w['frames']} frames x {w['width']}x{w['height']} (working size) x "
            + (f"{steps} steps" if steps else "no sampling steps"))


def check_family(args, prompt: dict, name: str, models_dirs: list[str]) -> None:
    """Refuse at once (before a local server boots) a workflow built for another family than the embedded
    SD1.5 demo model when no --checkpoint replaces its checkpoint and no --models-dir holds the file it names:
    the message names the workflow, the family and the flag. A --server run is checked by the server."""
    from .ui_format import FAMILY_LABELS, MODEL_SOURCES

    fam = workflows.family(prompt)
    if fam in (None, "sd15") or args.checkpoint or args.server:
        return
    ckpt = next(prompt[n]["inputs"]["ckpt_name"] for n in workflows.find(prompt, "Checkpoint")
                if isinstance(prompt[n]["inputs"].get("ckpt_name"), str))
    if any(os.path.isfile(os.path.join(d, "checkpoints", ckpt)) for d in models_dirs):
        return
    label = FAMILY_LABELS[fam]
    raise RunnerError(f"workflow {name} needs an {label} checkpoint ({ckpt}, from {MODEL_SOURCES[ckpt][0]}), which no "
                      f"--models-dir holds; the embedded demo model is SD1.5 and cannot stand in for it: pass "
                      f"--checkpoint FILE (an {label} checkpoint) and --models-dir DIR holding checkpoints/FILE",
                      EXIT_USAGE)
