"""`run`: restore one video file with a bundled (or given) API-format workflow through ComfyUI.

What a run guarantees:
* Checked before any compute (exit 2, one line): the input, the reference (same frame count and size),
  the output name (its extension picks the container; never a file the run reads), every --set input
  and literal value against the server's /object_info, the models the workflow names.
* Nothing mixed up or left behind: the upload and every file the server writes carry a random run tag;
  they are deleted from the server when the run ends, however it ends.
* SIGINT, SIGTERM and SIGHUP: the prompt is interrupted, a local server stopped, no output written,
  exit 128 + signal number.
* Faithful output: the restored frames come back losslessly (PNG) and are encoded here at the input's
  exact size times the workflow's whole output scale (TR_MatchSize scale auto: 4x super-resolution stays 4x), with the input's audio stream and frame timestamps (tr_cli/media.py).
"""
from __future__ import annotations

import json
import os
import sys
import time
import uuid

from . import media, preflight, workflows
from .client import (EXIT_FAILED, EXIT_SERVER, EXIT_USAGE, REPO, Client, LocalServer, RunnerError,
                     add_server_options, check_server_flags, server_flags)
from .progress import Progress

DEFAULT_WORKFLOW = "demo_restore"  # falls back to degrade_measure while the demo model is absent
DEMO_MODELS = os.path.join(REPO, "models")
RUNNER_ROOT = os.path.join(REPO, ".host", "runner")


def check_video(path: str) -> tuple[int, bool]:
    """(decodable video frames, has audio); raises a one-line RunnerError otherwise."""
    info = media.probe(path)
    if info["frames"] == 0:
        raise RunnerError(f"input {path} holds no decodable video frame", EXIT_USAGE)
    return info["frames"], bool(info["audio"])


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="restore a video file with a bundled workflow")
    p.add_argument("input", help="video file to restore")
    p.add_argument("-w", "--workflow", default=DEFAULT_WORKFLOW, help=f"bundled workflow name or API JSON path (default {DEFAULT_WORKFLOW})")
    p.add_argument("-o", "--output", help="restored video (default out/<name>_restored.mp4); the extension decides the "
                                          "container: .mp4/.mov/.m4v = H.264 yuv420p, .mkv = lossless FFV1 at the exact size")
    p.add_argument("--server", help="URL of a running ComfyUI (default: start a local one and stop it afterwards)")
    p.add_argument("--checkpoint", help="checkpoint file name (in the server's models/checkpoints) replacing the workflow's")
    p.add_argument("--controlnet", help="ControlNet file name replacing the workflow's")
    p.add_argument("--models-dir", action="append", default=[], help="extra models folder for the local server (checkpoints/, controlnet/ inside)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE.INPUT=VALUE",
                   help="override a workflow input; NODE is a node id, title or class type; VALUE is JSON or text")
    p.add_argument("--reference", help="clean version of the input: print before/after PSNR, SSIM, warping error, flicker against it")
    p.add_argument("--timeout", type=float, default=6 * 3600, help="give up after this many seconds")
    p.add_argument("--quiet", action="store_true", help="no progress display (warnings are still printed)")
    p.add_argument("--warn-after", type=float, default=15.0, metavar="MINUTES",
                   help="warn (without stopping) when the ETA measured on the first steps exceeds this (default 15)")
    add_server_options(p)
    p.set_defaults(func=main)


def model_sets(args, prompt: dict, name: str) -> list[str]:
    """--checkpoint / --controlnet as --set assignments; a workflow without such a loader says so plainly."""
    sets = []
    for flag, title, field in (("checkpoint", "Checkpoint", "ckpt_name"), ("controlnet", "ControlNet", "control_net_name")):
        value = getattr(args, flag, None)
        if not value:
            continue
        if not any(field in prompt[n]["inputs"] for n in workflows.find(prompt, title)):
            raise RunnerError(f"--{flag}: workflow {name} has no {title.lower()} loader (node titled '{title}' with "
                              f"{field}), so there is nothing to replace", EXIT_USAGE)
        sets.append(f"{title}.{field}={value}")
    return sets


def start_client(args, models_dirs: list[str]):
    """(Client, LocalServer or None); the caller stops the local server in its `finally`."""
    if args.server:
        client = Client(args.server)
        if not client.ping():
            raise RunnerError(f"ComfyUI server unreachable at {args.server}", EXIT_SERVER)
        return client, None
    local = LocalServer(RUNNER_ROOT, models_dirs=models_dirs, cpu=True if args.cpu else None, flags=server_flags(args))
    return None, local


def boot(local: LocalServer) -> Client:
    url = local.start()
    print(f"local ComfyUI on 127.0.0.1:{local.port} ({local.device.upper()})", file=sys.stderr)
    return Client(url)


def follow(client: Client, prompt_id: str, prompt: dict, timeout: float, quiet: bool,
           warn_after: float = 15.0) -> dict:
    """Follow the prompt over the websocket (falling back to polling) until it finishes; returns its history."""
    ws = client.websocket()
    prog = Progress(prompt, prompt_id, warn_after=warn_after * 60)
    tty = sys.stderr.isatty()
    shown = None
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
                if msg and prog.update(msg, time.time()):
                    if prog.warning:
                        print(("\n" if tty and not quiet else "") + prog.warning, file=sys.stderr)
                        prog.warn_after = float("inf")
                        prog.warning = ""
                    line = prog.line()
                    if not quiet and (tty or line.split(" ")[0] != (shown or "").split(" ")[0]):
                        print(("\r\033[K" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
                        shown = line
            else:
                time.sleep(0.3)
            if time.time() - last_poll > 1.0:
                last_poll = time.time()
                entry = client.history(prompt_id)
                if entry and (entry.get("status", {}).get("completed") or entry.get("status", {}).get("status_str") in ("success", "error")):
                    return entry
        raise RunnerError(f"prompt {prompt_id} did not finish within {timeout:.0f}s", EXIT_FAILED)
    finally:
        if tty and shown and not quiet:
            print(file=sys.stderr)
        if ws is not None:
            ws.close()


def failure(entry: dict) -> str:
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            node = data.get("node_type", "?")
            return f"node {data.get('node_id')} ({node}) failed: {data.get('exception_message', '').strip()}"
        if kind == "execution_interrupted":
            return "interrupted on the server"
    return f"prompt failed: {entry.get('status')}"


def output_items(entry: dict):
    for nid, out in entry.get("outputs", {}).items():
        for items in out.values():
            if isinstance(items, list):
                for item in items:
                    if isinstance(item, dict) and "filename" in item:
                        yield nid, item


def submit(client: Client, prompt: dict) -> str:
    """Queue the prompt; node errors the server reports beside an accepted prompt are not dropped: the
    prompt is cancelled and they are reported (exit 2)."""
    try:
        answer = client.post_json("/prompt", {"prompt": prompt, "client_id": client.client_id})
    except RunnerError as e:
        from .client import describe_rejection

        code = EXIT_USAGE if "node_errors" in str(e) or "prompt_outputs_failed_validation" in str(e) else e.code
        raise RunnerError(describe_rejection(str(e)), code) from None
    if "prompt_id" not in answer:
        raise RunnerError(f"prompt rejected: {answer}", EXIT_FAILED)
    if answer.get("node_errors"):
        from .client import describe_rejection

        client.cancel(answer["prompt_id"])
        raise RunnerError(describe_rejection(json.dumps({"node_errors": answer["node_errors"]})), EXIT_USAGE)
    return answer["prompt_id"]


METRIC_MEANING = {
    "restored_vs_input": "the restored clip against the degraded input: PSNR/SSIM say how much the restore "
                         "changed; warping error and flicker say how stable it is in time (lower is steadier)",
    "input": "the input alone (no reference): its own warping error and flicker, to compare with the restored",
    "restored": "the restored clip alone (no reference): its warping error and flicker",
    "restored_vs_reference": "input and restored clip both against the clean reference: higher PSNR/SSIM and lower "
                             "warping error/flicker for 'restored' than for 'input' mean the restore helped",
}


def metric_name(prompt: dict, nid: str) -> str:
    """What a TR_VideoMetrics node compares, from its links: restored_vs_input, input, restored, ..."""
    node = prompt.get(nid, {})
    frames = workflows.input_frames(prompt)

    def role(link):
        return "input" if link == frames else "restored"

    name = role(node.get("inputs", {}).get("restored"))
    ref = node.get("inputs", {}).get("reference")
    return f"{name}_vs_{role(ref)}" if isinstance(ref, list) else name


def upload_input(client, path: str, info: dict, tag: str) -> str:
    """Upload the input under a name unique to this run; an RGB-family input goes as an exact rgb24 copy
    (media.host_copy) so every ComfyUI version reads the same levels."""
    if not media.needs_host_copy(info):
        return client.upload(path, name=f"{tag}_{os.path.basename(path)}")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tr_upload_") as tmp:
        stem = os.path.splitext(os.path.basename(path))[0]
        copy = media.host_copy(path, os.path.join(tmp, f"{tag}_{stem}.mov"), info)
        return client.upload(copy, name=os.path.basename(copy))


def main(args) -> int:
    if args.output:
        media.container_for(args.output)  # the extension decides the container, or the run is refused now
    check_server_flags(args)
    if args.server:
        Client(args.server)  # a malformed URL is a usage error before anything else
    info = media.probe(args.input)
    if info["frames"] == 0:
        raise RunnerError(f"input {args.input} holds no decodable video frame", EXIT_USAGE)
    if args.reference:
        preflight.check_reference(info, media.probe(args.reference), args.reference)
    if args.workflow == DEFAULT_WORKFLOW and DEFAULT_WORKFLOW not in workflows.bundled():
        args.workflow = "degrade_measure"
    base_prompt = workflows.load(args.workflow)
    if not workflows.find(base_prompt, workflows.INPUT_TITLE):
        raise RunnerError(f"workflow {args.workflow} has no node titled '{workflows.INPUT_TITLE}'", EXIT_USAGE)
    sets = model_sets(args, base_prompt, args.workflow) + list(args.sets)
    prompt = workflows.with_overrides(base_prompt, sets)
    stem = os.path.splitext(os.path.basename(args.input))[0]
    output = args.output or os.path.join("out", f"{stem}_restored.mp4")
    preflight.check_output(output, [args.input, args.reference, args.workflow if os.path.isfile(args.workflow) else None])
    out_dir = os.path.dirname(os.path.abspath(output))
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise RunnerError(f"output folder {out_dir} cannot be created: {e}", EXIT_USAGE) from None
    if not os.access(out_dir, os.W_OK):
        raise RunnerError(f"output folder {out_dir} is not writable", EXIT_USAGE)

    models = list(args.models_dir) + ([DEMO_MODELS] if os.path.isdir(DEMO_MODELS) else [])
    preflight.check_family(args, base_prompt, args.workflow, models)
    tag = uuid.uuid4().hex
    client, local = start_client(args, models)
    prompt_id = None
    try:
        if local is not None:
            print(f"starting a local ComfyUI on 127.0.0.1:{local.port} ...", file=sys.stderr)
            client = boot(local)
        oinfo = preflight.object_info(client, prompt)
        video_node = workflows.find(prompt, workflows.INPUT_TITLE)[0]
        hint = "" if args.server else f"; searched: {', '.join(models) or 'no --models-dir'}"
        preflight.check_prompt(prompt, oinfo, sets, skip={(video_node, "file")}, models_hint=hint)
        has_match = "TR_MatchSize" in client.get_json("/object_info/TR_MatchSize", 60)
        run_prompt = workflows.for_run(prompt, tag, "frames", match_size=has_match)
        work = preflight.work_summary(run_prompt, info["frames"], info["width"], info["height"])
        if not args.quiet:
            print(preflight.describe_work(work), file=sys.stderr)
        uploaded = upload_input(client, args.input, info, tag)
        workflows.set_input(run_prompt, f"{workflows.INPUT_TITLE}.file={uploaded}")
        prompt_id = submit(client, run_prompt)
        entry = follow(client, prompt_id, run_prompt, args.timeout, args.quiet, args.warn_after)
        if entry.get("status", {}).get("status_str") != "success":
            raise RunnerError(failure(entry), EXIT_FAILED)
        frames = sorted((i for n, i in output_items(entry) if n == workflows.FRAMES_NODE), key=lambda i: i["filename"])
        if not frames:
            raise RunnerError("the workflow finished but produced no video output", EXIT_FAILED)
        first = client.read_image(frames[0])
        h, w = first.shape[:2]
        if (w, h) != (info["width"], info["height"]):
            print(f"note: the workflow returns {w}x{h} frames for a {info['width']}x{info['height']} input",
                  file=sys.stderr)

        def images():
            yield first
            for item in frames[1:]:
                yield client.read_image(item)

        notes = media.write_video(images(), len(frames), output, w, h, info, args.input)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        print(f"wrote {output} ({len(frames)} frames, {w}x{h})")
        stem_out = os.path.splitext(output)[0]
        for nid, item in output_items(entry):
            if item["filename"].lower().endswith(".json"):
                name = metric_name(run_prompt, nid)
                dst = f"{stem_out}.metrics.{name}.json"
                client.download(item, dst)
                with open(dst) as f:
                    print(f"metrics {name} ({dst}): {METRIC_MEANING.get(name, name)}\n{json.dumps(json.load(f), indent=2)}")
        if args.reference:
            from . import compare

            report = compare.before_after(args.input, output, args.reference)
            dst = f"{stem_out}.metrics.restored_vs_reference.json"
            with open(dst + ".part", "w") as f:
                f.write(compare.dumps(report))
            os.replace(dst + ".part", dst)
            print(f"metrics restored_vs_reference ({dst}): {METRIC_MEANING['restored_vs_reference']}\n"
                  f"{compare.table(report)}")
        return 0
    except KeyboardInterrupt:
        if prompt_id is not None and client is not None:
            try:
                client.cancel(prompt_id)
            except RunnerError:
                pass
        raise
    finally:
        if client is not None:
            try:
                client.cleanup(tag)
            except RunnerError as e:
                print(f"warning: could not delete this run's files on the server: {e}", file=sys.stderr)
        if local is not None:
            local.stop()
