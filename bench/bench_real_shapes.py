"""Bundled workflows at full SD1.5 shapes vs the stock batched KSampler, side by side (prints ratios).

Each bundled API workflow (workflows/api/*.json) runs in-process in a real ComfyUI with its source
replaced by ``--frames`` frames of samples/sample_clip_noisy.mp4 scaled to each ``--sizes`` square,
its step counts cut to ``--steps`` (fast_restore keeps its 4-step distilled schedule) and its video
save replaced by a PreviewImage. Its stock counterpart is the plain batched graph: VAEEncode, two
CLIPTextEncode, ControlNetApplyAdvanced, KSampler (euler, the workflow's cfg) and VAEDecode, with as
many UNet frame-evaluations as the pack run made (counted by a spy on BaseModel.apply_model).

Every run is a fresh subprocess (so its peak RSS is its own), pack and stock alternate
(pack, stock, pack, stock, ...) and only one runs at a time. Reported per configuration:
* whole prompt: CPU time of every node except loaders, the video source and the preview (the
  ControlNet file is pre-loaded: its read is excluded on both sides);
* per step: CPU time of the sampling node(s), less the VAE decodes they make (TR_RecurrentRestore's),
  per UNet frame-evaluation (a batch item of one frame, cond and uncond counted apart), so batch-1 and
  batched samplers compare fairly;
* peak RSS of the process, and the node during which it was reached.

Attention backend (``--attention``): ``pytorch`` (default) runs ComfyUI with ``--use-pytorch-cross-attention``,
what ComfyUI picks on NVIDIA GPUs, so peaks depend on the workflow only. On CPU ComfyUI otherwise picks
``attention_sub_quad``, which sizes its query chunks so a score chunk fills up to a quarter of the RAM free
at that moment: its peak RSS follows the machine's free RAM (2 GiB apart between two runs of the same step
at 512 px), not the workflow. ``--attention sub_quad`` keeps that default for comparison.

The full-size random SD1.5 (859 M UNet, 123 M CLIP, 84 M VAE) and ControlNet (361 M) are built once
by bench/_real_model.py into ``.host/bench-cache`` (fp16, 2.4 GB; about 2 minutes); no download.

    .venv/bin/python bench/bench_real_shapes.py [--sizes 256,512] [--frames 8] [--steps 2] [--repeats 1]
        [--workflows tdm,diffir2vr,zvrd,fast,long_clip] [--threads 2]
    .venv/bin/python bench/bench_real_shapes.py --quick     # tiny model, 64 px, 4 frames: a smoke run

Memory: a full-size run needs 8-11 GiB at 512 px; runs are never parallel.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CACHE = os.environ.get("TR_BENCH_CACHE", os.path.join(REPO, ".host", "bench-cache"))
WORK = os.path.join(REPO, ".host", "bench-work")
CLIP_FILE = os.path.join(REPO, "samples", "sample_clip_noisy.mp4")

# workflow (a "_gN" suffix: a variant of the workflow) -> (sampling node ids, {node id: {input: value}} step cuts ("S" = --steps), cfg)
WORKFLOWS = {
    "diffir2vr": (["12"], {"12": {"steps": "S"}}, 5.0),
    "tdm": (["7", "8"], {"7": {"steps": "S"}, "8": {"steps": "S"}}, 1.0),
    "zvrd": (["18"], {"17": {"steps": "S"}}, 4.0),
    "fast": (["10"], {}, 1.5),
    "fast_g4": (["10"], {"10": {"group": 4}}, 1.5),  # fast_restore with TR_RecurrentRestore group 4 (batched)
    # fast_restore as before decode_images: a VAEDecode after the restore, which decodes each anchor again
    "fast_vaedecode": (["10"], {"10": {"decode_images": False}}, 1.5),
    "long_clip": (["9"], {"9": {"steps": "S"}}, 4.0),
}
NOT_COUNTED = {"CheckpointLoaderSimple", "ControlNetLoader", "LoadVideo", "GetVideoComponents", "ImageScale",
               "ImageFromBatch", "PreviewImage"}


def _source(prompt: dict, size: int, frames: int) -> None:
    """Replace nodes 1/2 (LoadVideo, GetVideoComponents) by the bench clip; drop the video save."""
    prompt["1"] = {"class_type": "LoadVideo", "inputs": {"file": os.path.basename(CLIP_FILE)}}
    prompt["90"] = {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}}
    prompt["91"] = {"class_type": "ImageScale", "inputs": {"image": ["90", 0], "upscale_method": "bilinear",
                                                            "width": size, "height": size, "crop": "disabled"}}
    prompt["2"] = {"class_type": "ImageFromBatch", "inputs": {"image": ["91", 0], "batch_index": 0, "length": frames}}
    for nid in [k for k, v in prompt.items() if v["class_type"] == "CreateVideo"]:
        prompt["99"] = {"class_type": "PreviewImage", "inputs": {"images": prompt[nid]["inputs"]["images"]}}
        del prompt[nid]
    for nid in [k for k, v in prompt.items() if v["class_type"] == "TR_SaveVideo"]:
        del prompt[nid]


def pack_prompt(name: str, size: int, frames: int, steps: int, models: dict) -> dict:
    with open(os.path.join(REPO, "workflows", "api", f"{re.sub(r'_(g[0-9]+|vaedecode)$', '', name)}_restore.json")) as f:
        prompt = json.load(f)
    for node in prompt.values():
        ins = node["inputs"]
        if "ckpt_name" in ins:
            ins["ckpt_name"] = models["checkpoint"]
        if "control_net_name" in ins:
            ins["control_net_name"] = models["controlnet"]
    for nid, cuts in WORKFLOWS[name][1].items():
        for k, v in cuts.items():
            prompt[nid]["inputs"][k] = steps if v == "S" else v
    if name == "fast_vaedecode":
        prompt["11"] = {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["3", 2]}}
        prompt["30"]["inputs"]["restored"] = ["11", 0]
    _source(prompt, size, frames)
    return prompt


def stock_prompt(size: int, frames: int, steps: int, cfg: float, models: dict) -> dict:
    p = {
        "3": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": models["checkpoint"]}},
        "4": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["3", 2]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "a clean, sharp, detailed photo", "clip": ["3", 1]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "noise, blur", "clip": ["3", 1]}},
        "7": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": models["controlnet"]}},
        "8": {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["5", 0], "negative": ["6", 0], "control_net": ["7", 0], "image": ["2", 0], "vae": ["3", 2],
            "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}},
        "12": {"class_type": "KSampler", "inputs": {
            "model": ["3", 0], "seed": 0, "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["8", 0], "negative": ["8", 1], "latent_image": ["4", 0], "denoise": 1.0}},
        "13": {"class_type": "VAEDecode", "inputs": {"samples": ["12", 0], "vae": ["3", 2]}},
        "14": {"class_type": "CreateVideo", "inputs": {"images": ["13", 0], "fps": 8.0}},  # replaced by a preview
    }
    _source(p, size, frames)
    return p


# ---------------------------------------------------------------- worker (one run, fresh process)
def open_host(spec: dict):
    """A ComfyHost (tests/harness) with the bench models linked into its models folders and the bench clip in
    its input folder; the ControlNet file is pre-loaded into the pack's cache (a loader cost on both sides).
    ``spec``: {"threads", "quick", "models"} as built by :func:`main`."""
    import torch

    torch.set_num_threads(spec["threads"])
    os.environ["TR_TEST_WORK"] = WORK
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from harness import paths
    from harness.inprocess import ComfyHost

    if paths.COMFY_DIR not in sys.path:
        sys.path.insert(0, paths.COMFY_DIR)
    import comfy.options  # noqa: F401  (read by comfy.model_management at import: set before the host opens)
    from comfy.cli_args import args

    args.use_pytorch_cross_attention = spec.get("attention", "pytorch") == "pytorch"
    base = paths.base_dir("bench")
    host = ComfyHost(base)
    import comfy.controlnet
    import folder_paths

    models = spec["models"]
    if spec["quick"]:
        import tiny_models

        tiny_models.register()
    for sub, key in (("checkpoints", "checkpoint"), ("controlnet", "controlnet")):
        dst = os.path.join(base, "models", sub, models[key])
        if not os.path.exists(dst):
            os.symlink(models[key + "_path"], dst)
    shutil.copyfile(CLIP_FILE, os.path.join(base, "input", os.path.basename(CLIP_FILE)))
    tp = sys.modules[host.node("TR_TaskPromptControlNet").__module__]
    tp.load_cached(folder_paths.get_full_path("controlnet", models["controlnet"]), comfy.controlnet.load_controlnet)
    return host


def worker(spec: dict) -> dict:
    import resource

    import psutil

    free_gib = psutil.virtual_memory().available / 2 ** 30
    host = open_host(spec)
    import comfy.model_base

    items = [0]
    original = comfy.model_base.BaseModel.apply_model

    def counting(self, x, *args, **kwargs):
        items[0] += int(x.shape[0])
        return original(self, x, *args, **kwargs)

    comfy.model_base.BaseModel.apply_model = counting  # bench process only: counts UNet frame-evaluations
    import comfy.sd

    vae_time = {"decode": 0.0, "encode": 0.0}
    vae_in_node: dict = {}  # node id -> CPU time inside VAE calls made by that node

    def timed(name):  # CPU time inside VAE.decode / VAE.encode, whichever node calls them
        inner = getattr(comfy.sd.VAE, name)

        def wrapper(self, *args, **kwargs):
            t0 = time.process_time()
            try:
                return inner(self, *args, **kwargs)
            finally:
                dt = time.process_time() - t0
                vae_time[name] += dt
                vae_in_node[state["node"]] = vae_in_node.get(state["node"], 0.0) + dt
        return wrapper

    comfy.sd.VAE.decode, comfy.sd.VAE.encode = timed("decode"), timed("encode")
    times: dict = {}
    state = {"node": None, "t": None, "peak": 0.0, "peak_node": None}

    def mark(event, data, sid=None):
        if event == "executing":
            now = time.process_time()
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
            if state["node"] is not None:
                times[state["node"]] = times.get(state["node"], 0.0) + now - state["t"]
                if peak > state["peak"] + 0.05:  # the node that raised the process peak last
                    state["peak_node"] = state["node"]
            state["node"], state["t"], state["peak"] = data.get("node"), now, max(state["peak"], peak)

    host.server.send_sync = mark
    prompt = spec["prompt"]
    ok = host.validate(prompt)
    if not ok[0]:
        raise RuntimeError(f"prompt invalid: {ok[1]} {ok[3]}")
    prof = None
    if os.environ.get("TR_BENCH_PROFILE"):  # cProfile of each run, written to <the variable>.<first sampling node>.<pid>
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    host.executor.execute(prompt, "bench", {"client_id": "bench"}, list(ok[2]))
    if prof is not None:
        prof.disable()
        prof.dump_stats(f"{os.environ['TR_BENCH_PROFILE']}.{spec['sampling'][0]}.{os.getpid()}")
    if not host.executor.success:
        raise RuntimeError(f"execution failed: {host.executor.status_messages[-1]}")
    whole = sum(t for nid, t in times.items() if nid in prompt and prompt[nid]["class_type"] not in NOT_COUNTED)
    # a sampling node's own VAE decodes (TR_RecurrentRestore's hint / images) are not sampling steps
    sampling = sum(times.get(nid, 0.0) - vae_in_node.get(nid, 0.0) for nid in spec["sampling"])
    node = state["peak_node"]
    import comfy.ldm.modules.attention as attention

    by_class: dict = {}
    for nid, t in times.items():
        if nid in prompt:
            by_class[prompt[nid]["class_type"]] = by_class.get(prompt[nid]["class_type"], 0.0) + t
    return {"attention": attention.optimized_attention.__name__, "nodes": by_class, "vae_s": vae_time, "whole": whole, "sampling": sampling, "items": items[0],
            "rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, "free_gib": free_gib,
            "peak_node": f"{node} {prompt[node]['class_type']}" if node in prompt else str(node)}


def _run(spec: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"worker failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def _models(quick: bool) -> dict:
    sys.path.insert(0, os.path.join(REPO, "tests"))
    sys.path.insert(0, HERE)
    import _comfy

    _comfy.setup()
    if quick:
        import tiny_models

        tiny_models.register()
        p = tiny_models.build(os.path.join(CACHE, "tiny"))
        return {"checkpoint": p["checkpoint"], "controlnet": p["controlnet"],
                "checkpoint_path": p["checkpoint_path"], "controlnet_path": p["controlnet_path"]}
    import _real_model

    p = _real_model.build(CACHE)
    return {"checkpoint": _real_model.CKPT_NAME, "controlnet": _real_model.CONTROLNET_NAME, **p}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="pack/stock pairs per configuration")
    ap.add_argument("--workflows", default=",".join(WORKFLOWS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--attention", choices=("pytorch", "sub_quad"), default="pytorch",
                    help="ComfyUI attention backend for both sides (see the module docstring)")
    ap.add_argument("--quick", action="store_true", help="tiny model, 64 px, 4 frames, 1 step: a smoke run")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print("RESULT " + json.dumps(worker(json.loads(a.worker))), flush=True)
        return
    if a.quick:
        a.sizes, a.frames, a.steps, a.threads = "64", 4, 1, 1
    if a.workflows == "all":
        a.workflows = ",".join(WORKFLOWS)
    if not a.quick:  # build in a child so the builder's memory is returned before the runs
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {HERE!r}); "
                        "import bench_real_shapes as b; b._models(False)"], check=True)
    models = _models(a.quick)
    rows = []
    for size in [int(s) for s in a.sizes.split(",")]:
        for name in a.workflows.split(","):
            sampling, _, cfg = WORKFLOWS[name]
            res = {"pack": [], "stock": []}
            for _ in range(a.repeats):
                common = {"threads": a.threads, "quick": a.quick, "models": models, "attention": a.attention}
                p = _run({**common, "sampling": sampling, "prompt": pack_prompt(name, size, a.frames, a.steps, models)})
                res["pack"].append(p)
                per_eval = a.frames * (2 if cfg != 1.0 else 1)
                steps = max(1, round(p["items"] / per_eval))
                s = _run({**common, "sampling": ["12"], "prompt": stock_prompt(size, a.frames, steps, cfg, models)})
                res["stock"].append(s)
            rows.append((name, size, res))
            print("  done: " + _row(name, size, res), flush=True)  # each row as soon as measured
    print(f"\nbundled workflows vs stock batched KSampler ({'tiny model' if a.quick else 'full-size random SD1.5 + ControlNet'}, "
          f"{a.frames} frames, --steps {a.steps}, {a.threads} threads, {a.attention} attention, CPU time, "
          f"median of {a.repeats} interleaved pairs)")
    print(f"ComfyUI attention function in the runs: {sorted({r['attention'] for _, _, res in rows for v in res.values() for r in v})}")
    print(HEADER)
    for name, size, res in rows:
        print(_row(name, size, res))
    print("\nwhere the CPU time went (last pair; node classes over 2% of the run, and the time inside VAE.decode / "
          "VAE.encode whichever node called them), pack || stock:")
    for name, size, res in rows:
        print(f"{name} {size}: {_split(res['pack'][-1])} || {_split(res['stock'][-1])}")


def _split(r: dict) -> str:
    total = sum(r["nodes"].values()) or 1.0
    parts = [f"{k} {v:.1f}s" for k, v in sorted(r["nodes"].items(), key=lambda kv: -kv[1]) if v > 0.02 * total]
    return ", ".join(parts) + f"; VAE decode {r['vae_s']['decode']:.1f}s, encode {r['vae_s']['encode']:.1f}s"


HEADER = ("| workflow | size | whole prompt pack / stock | per step pack / stock | UNet frame-evals pack / stock "
          "| peak RSS pack / stock GiB | peak reached in (last run) | free RAM at start GiB |\n|---|---|---|---|---|---|---|---|")


def _row(name: str, size: int, res: dict) -> str:
    med = {k: {f: statistics.median(r[f] for r in v) for f in ("whole", "sampling", "items", "rss_gib", "free_gib")}
           for k, v in res.items()}
    pk, st = med["pack"], med["stock"]
    per = (pk["sampling"] / max(pk["items"], 1)) / (st["sampling"] / max(st["items"], 1))
    return (f"| {name} | {size} | {pk['whole']:.1f}s / {st['whole']:.1f}s = {pk['whole'] / st['whole']:.2f}x "
            f"| {per:.2f}x | {pk['items']:.0f} / {st['items']:.0f} | {pk['rss_gib']:.2f} / {st['rss_gib']:.2f} "
            f"= {pk['rss_gib'] / st['rss_gib']:.2f}x | {res['pack'][-1]['peak_node']} / {res['stock'][-1]['peak_node']} "
            f"| {pk['free_gib']:.1f} / {st['free_gib']:.1f} |")


if __name__ == "__main__":
    main()
