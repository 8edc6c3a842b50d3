"""`run`: restore one video file with a bundled (or given) API-format workflow through ComfyUI."""
from __future__ import annotations

import json
import os
import sys
import time
import uuid

from . import workflows
from .client import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_SERVER, EXIT_USAGE, REPO, Client, LocalServer,
                     RunnerError)

DEFAULT_WORKFLOW = "demo_restore"  # falls back to degrade_measure while the demo model is absent
DEMO_MODELS = os.path.join(REPO, "models")


def check_video(path: str) -> tuple[int, bool]:
    """(decodable video frames in the first second or so, has audio); raises a one-line RunnerError otherwise."""
    if not os.path.isfile(path):
        raise RunnerError(f"input video not found: {path}", EXIT_USAGE)
    try:
        import av

        with av.open(path) as container:
            if not container.streams.video:
                raise RunnerError(f"input {path} has no video stream", EXIT_USAGE)
            has_audio = bool(container.streams.audio)
            frames = 0
            for _ in container.decode(video=0):
                frames += 1
                if frames >= 2:
                    break
    except RunnerError:
        raise
    except Exception as e:  # av raises many types for corrupt files
        raise RunnerError(f"input {path} is not a readable video: {e.__class__.__name__}: {e}", EXIT_USAGE) from None
    if frames == 0:
        raise RunnerError(f"input {path} holds no decodable video frame", EXIT_USAGE)
    return frames, has_audio


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="restore a video file with a bundled workflow")
    p.add_argument("input", help="video file to restore")
    p.add_argument("-w", "--workflow", default=DEFAULT_WORKFLOW, help=f"bundled workflow name or API JSON path (default {DEFAULT_WORKFLOW})")
    p.add_argument("-o", "--output", help="where to write the restored video (default out/<name>_restored.mp4)")
    p.add_argument("--server", help="URL of a running ComfyUI (default: start a local one and stop it afterwards)")
    p.add_argument("--checkpoint", help="checkpoint file name (in the server's models/checkpoints) replacing the workflow's")
    p.add_argument("--controlnet", help="ControlNet file name replacing the workflow's")
    p.add_argument("--models-dir", action="append", default=[], help="extra models folder for the local server (checkpoints/, controlnet/ inside)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE.INPUT=VALUE",
                   help="override a workflow input; NODE is a node id, title or class type; VALUE is JSON or text")
    p.add_argument("--reference", help="clean version of the input: print before/after PSNR, SSIM, warping error, flicker against it")
    p.add_argument("--timeout", type=float, default=6 * 3600, help="give up after this many seconds")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=main)


def _progress(client: Client, prompt_id: str, prompt: dict, timeout: float, quiet: bool) -> dict:
    """Follow the prompt over the websocket (falling back to polling) until it finishes; returns its history."""
    ws = client.websocket()
    bar = None
    if not quiet:
        try:
            from tqdm import tqdm

            bar = tqdm(total=1, unit="step", file=sys.stderr, dynamic_ncols=True, leave=False)
        except ImportError:
            bar = None
    deadline = time.time() + timeout
    last_poll = 0.0
    try:
        while time.time() < deadline:
            if ws is not None:
                try:
                    raw = ws.recv()
                    msg = json.loads(raw) if isinstance(raw, str) else None
                except Exception:
                    msg = None
                if msg and bar is not None:
                    data = msg.get("data", {})
                    if msg.get("type") == "progress" and data.get("prompt_id") in (None, prompt_id):
                        node = prompt.get(str(data.get("node")), {})
                        bar.set_description(workflows.title(node) if node else "working")
                        bar.total = data.get("max", 1)
                        bar.n = data.get("value", 0)
                        bar.refresh()
                    elif msg.get("type") == "executing" and data.get("node"):
                        node = prompt.get(str(data["node"]), {})
                        bar.set_description(workflows.title(node) if node else str(data["node"]))
                        bar.refresh()
            else:
                time.sleep(0.3)
            if time.time() - last_poll > 1.0:
                last_poll = time.time()
                entry = client.history(prompt_id)
                if entry and (entry.get("status", {}).get("completed") or entry.get("status", {}).get("status_str") in ("success", "error")):
                    return entry
        raise RunnerError(f"prompt {prompt_id} did not finish within {timeout:.0f}s", EXIT_FAILED)
    finally:
        if bar is not None:
            bar.close()
        if ws is not None:
            ws.close()


def _failure(entry: dict) -> str:
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            node = data.get("node_type", "?")
            return f"node {data.get('node_id')} ({node}) failed: {data.get('exception_message', '').strip()}"
        if kind == "execution_interrupted":
            return "interrupted on the server"
    return f"prompt failed: {entry.get('status')}"


def _output_items(entry: dict):
    for nid, out in entry.get("outputs", {}).items():
        for items in out.values():
            if isinstance(items, list):
                for item in items:
                    if isinstance(item, dict) and "filename" in item:
                        yield nid, item


def main(args) -> int:
    frames, has_audio = check_video(args.input)
    if args.reference:
        check_video(args.reference)
    if args.workflow == DEFAULT_WORKFLOW and DEFAULT_WORKFLOW not in workflows.bundled():
        args.workflow = "degrade_measure"
    prompt = workflows.load(args.workflow)
    video_nodes = workflows.find(prompt, workflows.INPUT_TITLE)
    if not video_nodes:
        raise RunnerError(f"workflow {args.workflow} has no node titled '{workflows.INPUT_TITLE}'", EXIT_USAGE)
    stem = os.path.splitext(os.path.basename(args.input))[0]
    output = args.output or os.path.join("out", f"{stem}_restored.mp4")
    out_dir = os.path.dirname(os.path.abspath(output))
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise RunnerError(f"output folder {out_dir} cannot be created: {e}", EXIT_USAGE) from None
    if not os.access(out_dir, os.W_OK):
        raise RunnerError(f"output folder {out_dir} is not writable", EXIT_USAGE)

    local = None
    if args.server:
        client = Client(args.server)
        if not client.ping():
            raise RunnerError(f"ComfyUI server unreachable at {args.server}", EXIT_SERVER)
    else:
        models = list(args.models_dir) + ([DEMO_MODELS] if os.path.isdir(DEMO_MODELS) else [])
        local = LocalServer(os.path.join(REPO, ".host", "runner"), models_dirs=models)
        print(f"starting a local ComfyUI on 127.0.0.1:{local.port} ...", file=sys.stderr)
        client = Client(local.start())
    prompt_id = None
    try:
        uploaded = client.upload(args.input)
        sets = [f"{workflows.INPUT_TITLE}.file={uploaded}"]
        if args.checkpoint:
            sets.append(f"Checkpoint.ckpt_name={args.checkpoint}")
        if args.controlnet:
            sets.append(f"ControlNet.control_net_name={args.controlnet}")
        tag = uuid.uuid4().hex[:8]
        if workflows.find(prompt, workflows.OUTPUT_TITLE):
            sets.append(f"{workflows.OUTPUT_TITLE}.filename_prefix=temporal_restore/{stem}_{tag}")
        prompt = workflows.with_overrides(prompt, sets + list(args.sets))
        prompt_id = client.submit(prompt)
        entry = _progress(client, prompt_id, prompt, args.timeout, args.quiet)
        if entry.get("status", {}).get("status_str") != "success":
            raise RunnerError(_failure(entry), EXIT_FAILED)
        videos = [(n, i) for n, i in _output_items(entry) if i["filename"].lower().endswith((".mp4", ".webm", ".mov", ".mkv"))]
        reports = [(n, i) for n, i in _output_items(entry) if i["filename"].lower().endswith(".json")]
        if not videos:
            raise RunnerError("the workflow finished but produced no video output", EXIT_FAILED)
        client.download(videos[0][1], output)
        print(f"wrote {output}")
        for k, (_, item) in enumerate(reports):
            dst = os.path.splitext(output)[0] + (".metrics.json" if k == 0 else f".metrics{k}.json")
            client.download(item, dst)
            with open(dst) as f:
                print(f"metrics ({dst}):\n{json.dumps(json.load(f), indent=2)}")
        if args.reference:
            from . import compare

            report = compare.before_after(args.input, output, args.reference)
            dst = os.path.splitext(output)[0] + ".before_after.json"
            with open(dst, "w") as f:
                f.write(compare.dumps(report))
            print(f"before/after against {args.reference} ({dst}):\n{compare.table(report)}")
        return 0
    except KeyboardInterrupt:
        if prompt_id is not None:
            try:
                client.interrupt()
            except RunnerError:
                pass
        raise RunnerError("interrupted: sent /interrupt to the server; no output written", EXIT_INTERRUPTED) from None
    finally:
        if local is not None:
            local.stop()
