"""Shared by the bench scripts: make the host ComfyUI and the pack (as package `temporal_restore`) importable."""
import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMFY = os.environ.get("TR_COMFY_DIR", os.path.join(REPO, ".host", "ComfyUI"))


def setup():
    sys.path.insert(0, COMFY)
    sys.path.insert(0, os.path.join(REPO, "tests"))
    import comfy.options  # noqa: F401
    from comfy.cli_args import args

    args.cpu = True
    if "temporal_restore" not in sys.modules:  # the pack as a package, without the repo on sys.path
        spec = importlib.util.spec_from_file_location("temporal_restore", os.path.join(REPO, "__init__.py"),
                                                      submodule_search_locations=[REPO])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["temporal_restore"] = mod
        spec.loader.exec_module(mod)


def child_result(cmd, env=None) -> dict:
    """Run a bench child process ``cmd`` and parse its last ``RESULT {json}`` line of stdout (SystemExit with
    the child's stderr when it fails or prints none)."""
    import json
    import subprocess

    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    if res.returncode != 0 or not lines:
        raise SystemExit(f"child failed ({' '.join(cmd)}):\n{res.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def tiny_model_and_prompts(host, checkpoint: str):
    """(model, vae, positive, negative): the tiny checkpoint loaded through ``host`` (a tests.harness ComfyHost)
    with "a clean photo" / "" encoded by its CLIP, as both the tiling and long-clip benches start."""
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a clean photo", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
    }
    out = host.run(prompt, outputs=["1", "2", "3"])["outputs"]
    model, _, vae = out["1"]
    return model, vae, out["2"][0], out["3"][0]
