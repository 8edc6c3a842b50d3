"""`stream`: restore a long video window by window, resumable after a crash or SIGKILL.

    python -m tr_cli stream input.mp4 -o restored.mp4 [--server URL] [--segment 32 --context 4]

How it works
* Frames are read with PyAV one segment at a time: segment k covers input frames
  ``[s_k, s_k + segment)`` and shares ``context`` frames with the previous one
  (``s_{k+1} = s_k + segment - context``). Only one segment of frames is in memory.
* Each segment is restored by a ComfyUI server (``--server URL``, or a local one started for the
  run) with an API workflow (default: the bundled ``long_clip_restore``): the segment is uploaded
  as a lossless FFV1 clip, the workflow's ``CreateVideo``/``SaveVideo`` tail is replaced by a
  lossless ``SaveImage`` of the same images, and the PNGs are downloaded. ``--backend passthrough``
  skips ComfyUI (returns the input frames; for checking the I/O path).
* The ``context`` frames shared by two segments are blended with the ILT weights of DiffVSR Eq. 4
  (``alpha_j = 1 - j / (P - 1)``), so there is no hard seam; the last ``context`` restored frames
  of a segment are held back until the next segment arrives.
* Restored frames are appended to a raw RGB spool in the state folder (``<output>.stream/``) as they
  are finished. After each segment the state (frames written, spool length, held-back frames, next
  segment) is committed atomically (write temp + fsync + rename). A rerun with the same arguments
  resumes from the last committed segment: the spool is truncated to the committed length, so a
  segment that was half-written when the process died is redone, never duplicated or lost, and
  because every segment is a deterministic function of its input frames the result equals an
  uninterrupted run's.
* At the end the spool is encoded with the input's audio stream copied, to a temporary file in the
  output folder that is renamed onto the output (atomic): an ``.mkv`` output is lossless FFV1 RGB
  (bit-identical to the restored frames); any other name is MP4 (libx264 CRF 16, or mpeg4 when
  libx264 is missing). x264 is not bit-reproducible on very small frames (it reads memory it never
  initialised; a 32x32 clip's first frame came out differently about one run in 50), so a resumed
  MP4 can differ from an uninterrupted one in the encoder's rounding while the restored frames are
  identical: ask for ``.mkv`` when the bytes must match.
  The state folder is removed unless ``--keep-state``.

* Segments reach the restore through an executor (``InOrder``: one at a time, here). ``--ray`` plugs in
  tr_cli/ray_workers.py's, which restores them in parallel on Ray workers (one ComfyUI each) and hands them
  back in order; reading, blending, spooling, committing and resuming stay the ones above, so the frames are
  the same.

The run talks to ComfyUI over HTTP (same client as ``run``); there is no in-process backend.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import uuid
from fractions import Fraction

import numpy as np

from . import media, preflight, workflows
from .client import (EXIT_FAILED, EXIT_SERVER, EXIT_USAGE, REPO, Client, LocalServer, RunnerError,
                     add_server_options, check_server_flags, server_flags)

DEFAULT_WORKFLOW = "long_clip_restore"
STATE_VERSION = 1


def add_parser(sub) -> None:
    p = sub.add_parser("stream", help="restore a long video segment by segment (resumable, bounded memory)")
    p.add_argument("input", help="video file to restore")
    p.add_argument("-o", "--output", required=True,
                   help="restored video file, written atomically at the end: .mkv = lossless FFV1, else MP4 (H.264)")
    p.add_argument("-w", "--workflow", default=DEFAULT_WORKFLOW,
                   help=f"bundled workflow name or API JSON path (default {DEFAULT_WORKFLOW})")
    p.add_argument("--server", action="append", default=[],
                   help="URL of a running ComfyUI (default: start a local one); with --ray, repeat it to use "
                        "several running servers (one Ray worker each)")
    p.add_argument("--backend", choices=["comfy", "passthrough"], default="comfy",
                   help="comfy: restore through ComfyUI; passthrough: copy frames (I/O check)")
    p.add_argument("--segment", type=int, default=32, help="frames per segment, context included (default 32)")
    p.add_argument("--context", type=int, default=4, help="frames shared by consecutive segments (default 4)")
    p.add_argument("--state-dir", help="checkpoint folder (default <output>.stream)")
    p.add_argument("--keep-state", action="store_true", help="keep the checkpoint folder after success")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    p.add_argument("--models-dir", action="append", default=[], help="extra models folder for the local server")
    p.add_argument("--checkpoint", help="checkpoint file name replacing the workflow's (node titled Checkpoint)")
    p.add_argument("--controlnet", help="ControlNet file name replacing the workflow's (node titled ControlNet)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE.INPUT=VALUE",
                   help="override a workflow input (as in `run`)")
    p.add_argument("--quiet", action="store_true")
    add_server_options(p)
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="restore segments in parallel on a Ray cluster (ADDRESS, e.g. 10.0.0.5:6379 or auto; a "
                        "local Ray when omitted), one ComfyUI per Ray worker (tr_cli/ray_workers.py); needs "
                        "`pip install 'ray>=2.9'`")
    p.add_argument("--workers-per-node", type=int, default=None, metavar="N",
                   help="with --ray and no --server: ComfyUI servers started per Ray node (default: one per GPU, "
                        "else 1)")
    p.add_argument("--status", action="store_true", help="with --ray: print every worker's state as segments finish")
    p.add_argument("--throttle", type=float, default=0.0, help=argparse_suppress())
    p.set_defaults(func=main)


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


# ------------------------------------------------------------------ frames in / out

def probe(path: str) -> dict:
    """media.probe with the rate as [numerator, denominator] (as the checkpoint stores it)."""
    info = media.probe(path)
    info["fps"] = [info["fps"].numerator, info["fps"].denominator]
    return info


def iter_frames(path: str, skip: int = 0):
    """RGB uint8 frames [H, W, 3] of the first video stream, the first ``skip`` dropped."""
    import av

    with av.open(path) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i >= skip:
                yield f.to_ndarray(format="rgb24")


def spool_frames(spool: str, n: int, shape):
    """The first ``n`` RGB frames [H, W, 3] of a raw spool, one at a time."""
    h, w = shape
    frame_bytes = h * w * 3
    with open(spool, "rb") as f:
        for _ in range(n):
            yield np.frombuffer(f.read(frame_bytes), np.uint8).reshape(h, w, 3)


def encode_output(spool: str, n: int, shape, fps: Fraction, audio_src: str | None, dst: str,
                  info: dict | None = None) -> list[str]:
    """Encode ``n`` raw frames from the spool (+ the audio of ``audio_src``) to ``dst``, atomically, in the
    container its extension names (tr_cli/media.py: .mkv lossless FFV1, .mp4 H.264 yuv420p); ``info`` is the
    input's media.probe (timestamps of a variable-frame-rate input). Returns notes for the user."""
    info = info or {"fps": fps, "frames": n, "pts": [], "audio": [audio_src] if audio_src else []}
    return media.write_video(spool_frames(spool, n, shape), n, dst, shape[1], shape[0], info, audio_src)


# ------------------------------------------------------------------ restore backends

class Passthrough:
    def start(self):
        pass

    def restore(self, frames: np.ndarray, k: int) -> np.ndarray:
        return frames.copy()

    def close(self):
        pass


class ComfyBackend:
    """Restores one segment per prompt through a ComfyUI server."""

    die_with_parent = False  # a Ray worker's own server is stopped by the kernel if the worker is killed

    def __init__(self, args, fps: Fraction, work: str):
        from .run import model_sets

        self.args, self.fps, self.work = args, fps, work
        self.local = self.client = self.pid = None
        self.run_tag = uuid.uuid4().hex  # in every name this run puts on the server (unique, deletable)
        base = workflows.load(args.workflow)
        self.sets = model_sets(args, base, args.workflow) + list(args.sets)
        self.base = workflows.with_overrides(base, self.sets)
        workflows.image_tail(self.base)

    def start(self):
        """Reach (or start) the server and check the workflow against it; close() undoes it."""
        args, sets = self.args, self.sets
        if args.server:
            self.client = Client(args.server)
            if not self.client.ping():
                raise RunnerError(f"ComfyUI server unreachable at {args.server}", EXIT_SERVER)
        else:
            models = list(args.models_dir) + ([os.path.join(REPO, "models")] if os.path.isdir(os.path.join(REPO, "models")) else [])
            self.local = LocalServer(os.path.join(REPO, ".host", "runner"), models_dirs=models,
                                     cpu=True if args.cpu else None, flags=server_flags(args))
            self.local.die_with_parent = self.die_with_parent
            print(f"starting a local ComfyUI on 127.0.0.1:{self.local.port} ...", file=sys.stderr)
            self.client = Client(self.local.start())
        oinfo = preflight.object_info(self.client, self.base)
        video_node = workflows.find(self.base, workflows.INPUT_TITLE)[0]
        preflight.check_prompt(self.base, oinfo, sets, skip={(video_node, "file")})
        self.match = "TR_MatchSize" in self.client.get_json("/object_info/TR_MatchSize", 60)

    def restore(self, frames: np.ndarray, k: int) -> np.ndarray:
        from .run import submit

        clip = os.path.join(self.work, f"seg_{self.run_tag}_{k:05d}.mov")
        media.write_rgb24_mov(frames, clip, self.fps)  # read exactly by every ComfyUI (see media.host_copy)
        try:
            name = self.client.upload(clip)
        finally:
            os.remove(clip)
        prompt = workflows.for_run(self.base, self.run_tag, f"seg{k:05d}", match_size=self.match)
        workflows.set_input(prompt, f"{workflows.INPUT_TITLE}.file={name}")
        self.pid = submit(self.client, prompt)
        entry = None
        while entry is None or not entry.get("status", {}).get("completed", False):
            time.sleep(0.2)
            entry = self.client.history(self.pid)
            if entry and entry.get("status", {}).get("status_str") == "error":
                msgs = [m for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
                raise RunnerError(f"segment {k} failed: {msgs[:1]}", EXIT_FAILED)
        self.pid = None
        items = entry.get("outputs", {}).get(workflows.FRAMES_NODE, {}).get("images", [])
        items = sorted(items, key=lambda i: i["filename"])
        if len(items) != len(frames):
            raise RunnerError(f"segment {k}: expected {len(frames)} restored frames, got {len(items)}", EXIT_FAILED)
        out = np.stack([self.client.read_image(it) for it in items])
        self.client.cleanup(self.run_tag)  # this segment's upload and frames: the server stays bounded
        return out

    def close(self):
        """Stop a running segment and delete what this run put on the server; stop a local server."""
        try:
            if self.client is not None:
                if getattr(self, "pid", None):
                    self.client.cancel(self.pid)
                self.client.cleanup(self.run_tag)
        except RunnerError as e:
            print(f"warning: could not delete this run's files on the server: {e}", file=sys.stderr)
        finally:
            if self.local is not None:
                self.local.stop()


class InOrder:
    """The default executor of segments: each one restored by ``backend`` in this process as it is read.

    An executor has ``start()``, ``close()`` and ``run(segments)``: given the iterator of
    ``(k, frames [n, H, W, 3] uint8, last)`` from :func:`read_segments`, it yields
    ``(k, n, restored [n, H', W', 3], last)`` in segment order; the driver blends, spools and commits each
    one before asking for the next (tr_cli/ray_workers.py: the same contract over Ray workers)."""

    def __init__(self, backend):
        self.backend = backend

    def start(self):
        self.backend.start()

    def run(self, segments):
        for k, frames, last in segments:
            yield k, len(frames), self.backend.restore(frames, k), last

    def close(self):
        self.backend.close()


def read_segments(path: str, k: int, start: int, segment: int, context: int):
    """``(k, frames [n, H, W, 3] uint8, last)`` for segment k (input frames ``[start, start + n)``) and every
    later one; consecutive segments share ``context`` frames (only one segment of frames is held)."""
    frames_iter = iter_frames(path, skip=start)
    carry_in = []  # input frames shared with the previous segment (already read)
    while True:
        seg = list(carry_in)  # resuming: skip stopped at the segment start, context included
        while len(seg) < segment:
            nxt = next(frames_iter, None)
            if nxt is None:
                break
            seg.append(nxt)
        if not seg:
            raise RunnerError(f"input {path} holds no decodable video frame", EXIT_USAGE)
        peek = next(frames_iter, None)
        yield k, np.stack(seg), peek is None
        if peek is None:
            return
        carry_in = seg[len(seg) - min(context, len(seg)):] + [peek]
        k += 1


def segment_count(frames: int, segment: int, context: int) -> int:
    """How many segments :func:`read_segments` cuts ``frames`` frames into (for progress displays)."""
    return 1 if frames <= segment else 1 + -(-(frames - segment) // (segment - context))


def make_executor(args, fps: Fraction, state_dir: str, info: dict):
    if args.backend == "passthrough":
        backend = Passthrough()
    else:
        backend = ComfyBackend(args, fps, state_dir)
    if args.ray is None:
        return InOrder(backend)
    from .ray_workers import RayExecutor  # each Ray worker builds its own backend from the same arguments

    return RayExecutor(args, fps, state_dir, segment_count(info["frames"], args.segment, args.context))


# ------------------------------------------------------------------ state

def _atomic_json(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_npy(path: str, arr: np.ndarray) -> None:
    tmp = path + ".tmp.npy"
    with open(tmp, "wb") as f:
        np.save(f, arr)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _config(args, info) -> dict:
    st = os.stat(args.input)
    return {"version": STATE_VERSION, "input": os.path.abspath(args.input), "size": st.st_size,
            "mtime": int(st.st_mtime), "segment": args.segment, "context": args.context,
            "backend": args.backend, "workflow": args.workflow, "sets": _sets(args),
            "workflow_hash": _workflow_hash(args) if args.backend == "comfy" else None}


def _sets(args) -> list[str]:
    sets = []
    if getattr(args, "checkpoint", None):
        sets.append(f"Checkpoint.ckpt_name={args.checkpoint}")
    if getattr(args, "controlnet", None):
        sets.append(f"ControlNet.control_net_name={args.controlnet}")
    return sets + list(args.sets)


def _workflow_hash(args) -> str:
    return hashlib.sha1(json.dumps(workflows.load(args.workflow), sort_keys=True).encode()).hexdigest()[:12]


def ilt_alpha(p: int) -> np.ndarray:
    """Eq. 4 weights of the previous segment on the ``p`` shared frames."""
    if p <= 0:
        return np.zeros(0, np.float32)
    if p == 1:
        return np.array([0.5], np.float32)
    return (1.0 - np.arange(p, dtype=np.float32) / (p - 1)).astype(np.float32)


def main(args) -> int:
    if args.segment < 1:
        raise RunnerError(f"--segment: expected at least 1 frame, got {args.segment}", EXIT_USAGE)
    if args.context < 0 or (args.context > 0 and args.segment <= 2 * args.context):
        raise RunnerError(f"--context: expected 0 <= context < segment/2 ({args.segment}), got {args.context}", EXIT_USAGE)
    media.container_for(args.output)
    servers = list(args.server or [])
    for url in servers:
        Client(url)  # a malformed URL is a usage error before anything else
    if args.ray is None:
        if len(servers) > 1 or args.workers_per_node is not None or args.status:
            raise RunnerError("several --server, --workers-per-node and --status need --ray", EXIT_USAGE)
    else:
        from .ray_workers import check_args

        check_args(args, servers)
    args.servers, args.server = servers, (servers[0] if servers else None)
    check_server_flags(args)
    info = probe(args.input)
    if args.backend == "comfy":  # a workflow for another family than the demo model's: refused before any server
        models = list(args.models_dir) + [os.path.join(REPO, "models")]
        preflight.check_family(args, workflows.load(args.workflow), args.workflow, models)
    fps = Fraction(*info["fps"])
    output = os.path.abspath(args.output)
    preflight.check_output(output, [args.input, args.workflow if os.path.isfile(args.workflow) else None])
    out_dir = os.path.dirname(output)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise RunnerError(f"output folder {out_dir} cannot be created: {e}", EXIT_USAGE) from None
    state_dir = os.path.abspath(args.state_dir or output + ".stream")
    if os.path.exists(state_dir) and not os.path.isdir(state_dir):
        raise RunnerError(f"--state-dir {state_dir} is a file: expected a folder (or a path that does not exist)", EXIT_USAGE)
    state_path = os.path.join(state_dir, "state.json")
    spool = os.path.join(state_dir, "frames.rgb")
    cfg = _config(args, info)

    state = None
    if os.path.exists(state_path) and not args.restart:
        with open(state_path) as f:
            state = json.load(f)
        if state.get("config") != cfg:
            raise RunnerError(f"checkpoint in {state_dir} belongs to a different input or settings: "
                              f"pass --restart to start over", EXIT_USAGE)
    if state is None:
        if os.path.isdir(state_dir):
            shutil.rmtree(state_dir)
        try:
            os.makedirs(state_dir)
        except OSError as e:
            raise RunnerError(f"--state-dir {state_dir} cannot be created: {e.strerror}", EXIT_USAGE) from None
        state = {"config": cfg, "segment": 0, "start": 0, "written": 0, "shape": None, "pending": False,
                 "done": False}
        open(spool, "wb").close()
        _atomic_json(state_path, state)
    elif not args.quiet:
        print(f"resuming at segment {state['segment']} (frame {state['start']}, {state['written']} frames written)",
              file=sys.stderr)

    # drop whatever was appended after the last commit
    committed = state["written"] * (int(np.prod(state["shape"])) if state["shape"] else 0)
    with open(spool, "r+b") as f:
        f.truncate(committed)
    pending = np.load(os.path.join(state_dir, state["pending"])) if state["pending"] else None

    executor = make_executor(args, fps, state_dir, info)
    try:
        executor.start()
        if not state["done"]:
            start = state["start"]
            segments = read_segments(args.input, state["segment"], start, args.segment, args.context)
            for k, n, res, last in executor.run(segments):
                if res.shape[0] != n:
                    raise RunnerError(f"segment {k}: restore returned {res.shape[0]} frames for {n}", EXIT_FAILED)
                res = res.astype(np.float32)
                if pending is not None and len(pending):
                    p = min(len(pending), len(res))
                    a = ilt_alpha(p).reshape(-1, 1, 1, 1)
                    res[:p] = a * pending[:p].astype(np.float32) + (1 - a) * res[:p]
                res = np.clip(np.rint(res), 0, 255).astype(np.uint8)
                hold = 0 if last else min(args.context, len(res))
                emit, pending = res[:len(res) - hold], res[len(res) - hold:]
                if state["shape"] is None:
                    state["shape"] = [int(res.shape[1]), int(res.shape[2]), 3]
                elif list(res.shape[1:]) != state["shape"]:
                    raise RunnerError(f"segment {k}: restored frame size {res.shape[1:]} differs from {state['shape']}", EXIT_FAILED)
                with open(spool, "ab") as f:
                    f.write(emit.tobytes())
                    f.flush()
                    os.fsync(f.fileno())
                old_pending = state["pending"]
                if hold:  # named per segment: the committed state never points at a newer file
                    _atomic_npy(os.path.join(state_dir, f"pending_{k:05d}.npy"), pending)
                start = start + n - hold
                state.update(segment=k + 1, start=start, written=state["written"] + len(emit),
                             pending=f"pending_{k:05d}.npy" if hold else False, done=last)
                _atomic_json(state_path, state)
                if old_pending and old_pending != state["pending"]:
                    os.remove(os.path.join(state_dir, old_pending))
                if not args.quiet and args.ray is None:
                    print(f"segment {k + 1}: {state['written']} frames restored", file=sys.stderr)
                if last:
                    break
                if args.throttle:
                    time.sleep(args.throttle)
        info["fps"] = fps
        for note in encode_output(spool, state["written"], state["shape"][:2], fps,
                                  args.input if info["audio"] else None, output, info):
            print(f"note: {note}", file=sys.stderr)
    finally:
        executor.close()
    if not args.keep_state:
        shutil.rmtree(state_dir, ignore_errors=True)
    print(f"wrote {args.output} ({state['written']} frames)")
    return 0
