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

from . import workflows
from .client import EXIT_FAILED, EXIT_USAGE, REPO, Client, LocalServer, RunnerError

DEFAULT_WORKFLOW = "long_clip_restore"
STATE_VERSION = 1


def add_parser(sub) -> None:
    p = sub.add_parser("stream", help="restore a long video segment by segment (resumable, bounded memory)")
    p.add_argument("input", help="video file to restore")
    p.add_argument("-o", "--output", required=True,
                   help="restored video file, written atomically at the end: .mkv = lossless FFV1, else MP4 (H.264)")
    p.add_argument("-w", "--workflow", default=DEFAULT_WORKFLOW,
                   help=f"bundled workflow name or API JSON path (default {DEFAULT_WORKFLOW})")
    p.add_argument("--server", help="URL of a running ComfyUI (default: start a local one)")
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
    p.add_argument("--throttle", type=float, default=0.0, help=argparse_suppress())
    p.set_defaults(func=main)


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


# ------------------------------------------------------------------ frames in / out

def probe(path: str) -> dict:
    if not os.path.isfile(path):
        raise RunnerError(f"input video not found: {path}", EXIT_USAGE)
    import av

    try:
        with av.open(path) as c:
            if not c.streams.video:
                raise RunnerError(f"input {path} has no video stream", EXIT_USAGE)
            v = c.streams.video[0]
            rate = v.average_rate or v.guessed_rate or Fraction(25)
            return {"fps": [rate.numerator, rate.denominator], "width": v.codec_context.width,
                    "height": v.codec_context.height, "audio": bool(c.streams.audio)}
    except RunnerError:
        raise
    except Exception as e:
        raise RunnerError(f"input {path} is not a readable video: {e.__class__.__name__}: {e}", EXIT_USAGE) from None


def iter_frames(path: str, skip: int = 0):
    """RGB uint8 frames [H, W, 3] of the first video stream, the first ``skip`` dropped."""
    import av

    with av.open(path) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i >= skip:
                yield f.to_ndarray(format="rgb24")


def write_lossless(frames: np.ndarray, path: str, fps: Fraction) -> None:
    import av

    with av.open(path, "w", format="matroska") as c:
        s = c.add_stream("ffv1", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "bgr0"
        for fr in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(fr), format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


def encode_output(spool: str, n: int, shape, fps: Fraction, audio_src: str | None, dst: str) -> None:
    """Encode ``n`` raw frames from the spool (+ the audio stream of ``audio_src``, copied) to ``dst``
    (FFV1 in Matroska when ``dst`` ends in ``.mkv``, else H.264 in MP4)."""
    import av

    h, w = shape
    lossless = dst.lower().endswith(".mkv")
    codec = "ffv1" if lossless else "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(dst, "w", format="matroska" if lossless else "mp4") as out:
        vs = out.add_stream(codec, rate=fps)
        vs.width, vs.height = w, h
        vs.pix_fmt = "bgr0" if lossless else "yuv420p" if (w % 2 == 0 and h % 2 == 0) else "yuv444p"
        if codec == "libx264":
            vs.options = {"crf": "16"}
        ins = None
        if audio_src:
            ins = av.open(audio_src)
            a_in = ins.streams.audio[0]
            a_out = out.add_stream_from_template(a_in)
        frame_bytes = h * w * 3
        with open(spool, "rb") as f:
            for i in range(n):
                buf = f.read(frame_bytes)
                fr = av.VideoFrame.from_ndarray(np.frombuffer(buf, np.uint8).reshape(h, w, 3), format="rgb24")
                fr.pts = i
                for pkt in vs.encode(fr):
                    out.mux(pkt)
        for pkt in vs.encode():
            out.mux(pkt)
        if ins is not None:
            for pkt in ins.demux(a_in):
                if pkt.dts is None:
                    continue
                pkt.stream = a_out
                out.mux(pkt)
            ins.close()


# ------------------------------------------------------------------ restore backends

class Passthrough:
    def restore(self, frames: np.ndarray, k: int) -> np.ndarray:
        return frames.copy()

    def close(self):
        pass


class ComfyBackend:
    """Restores one segment per prompt through a ComfyUI server."""

    def __init__(self, args, fps: Fraction, work: str):
        self.args, self.fps, self.work = args, fps, work
        self.local = None
        if args.server:
            self.client = Client(args.server)
            if not self.client.ping():
                raise RunnerError(f"ComfyUI server unreachable at {args.server}", 3)
        else:
            models = list(args.models_dir) + ([os.path.join(REPO, "models")] if os.path.isdir(os.path.join(REPO, "models")) else [])
            self.local = LocalServer(os.path.join(REPO, ".host", "runner"), models_dirs=models)
            print(f"starting a local ComfyUI on 127.0.0.1:{self.local.port} ...", file=sys.stderr)
            self.client = Client(self.local.start())
        self.base = workflows.with_overrides(workflows.load(args.workflow), _sets(args))
        self.tail = self._tail(self.base)
        self.run_tag = uuid.uuid4().hex[:8]

    @staticmethod
    def _tail(prompt: dict):
        """(node ids to drop, source of the restored IMAGE) from the CreateVideo -> SaveVideo tail."""
        outs = workflows.find(prompt, workflows.OUTPUT_TITLE)
        if not outs:
            raise RunnerError(f"workflow has no node titled '{workflows.OUTPUT_TITLE}'", EXIT_USAGE)
        out = prompt[outs[0]]
        drop = [outs[0]]
        src = out["inputs"].get("video") or out["inputs"].get("images")
        if isinstance(src, list) and prompt[src[0]]["class_type"] == "CreateVideo":
            drop.append(src[0])
            src = prompt[src[0]]["inputs"]["images"]
        if not (isinstance(src, list) and len(src) == 2):
            raise RunnerError("workflow: cannot find the restored images feeding the output video", EXIT_USAGE)
        return drop, src

    def restore(self, frames: np.ndarray, k: int) -> np.ndarray:
        from PIL import Image

        clip = os.path.join(self.work, f"seg_{self.run_tag}_{k:05d}.mkv")
        write_lossless(frames, clip, self.fps)
        try:
            name = self.client.upload(clip)
        finally:
            os.remove(clip)
        prompt = json.loads(json.dumps(self.base))
        workflows.set_input(prompt, f"{workflows.INPUT_TITLE}.file={name}")
        drop, src = self.tail
        for nid in drop:
            prompt.pop(nid, None)
        prompt["tr_stream_save"] = {"class_type": "SaveImage", "_meta": {"title": "Stream segment"},
                                    "inputs": {"images": src,
                                               "filename_prefix": f"temporal_restore/stream_{self.run_tag}_{k:05d}"}}
        pid = self.client.submit(prompt)
        entry = None
        while entry is None or not entry.get("status", {}).get("completed", False):
            time.sleep(0.2)
            entry = self.client.history(pid)
            if entry and entry.get("status", {}).get("status_str") == "error":
                msgs = [m for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
                raise RunnerError(f"segment {k} failed: {msgs[:1]}", EXIT_FAILED)
        items = entry.get("outputs", {}).get("tr_stream_save", {}).get("images", [])
        items = sorted(items, key=lambda i: i["filename"])
        if len(items) != len(frames):
            raise RunnerError(f"segment {k}: expected {len(frames)} restored frames, got {len(items)}", EXIT_FAILED)
        out = []
        for it in items:
            dst = os.path.join(self.work, "seg_frame.png")
            self.client.download(it, dst)
            with Image.open(dst) as im:
                out.append(np.asarray(im.convert("RGB")))
            os.remove(dst)
        return np.stack(out)

    def close(self):
        if self.local is not None:
            self.local.stop()


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
    info = probe(args.input)
    fps = Fraction(*info["fps"])
    output = os.path.abspath(args.output)
    out_dir = os.path.dirname(output)
    os.makedirs(out_dir, exist_ok=True)
    state_dir = os.path.abspath(args.state_dir or output + ".stream")
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
        os.makedirs(state_dir)
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

    backend = Passthrough() if args.backend == "passthrough" else ComfyBackend(args, fps, state_dir)
    try:
        if not state["done"]:
            frames_iter = iter_frames(args.input, skip=state["start"])
            carry_in = []  # input frames shared with the previous segment (already read)
            k, start = state["segment"], state["start"]
            while True:
                seg = list(carry_in)  # resuming: skip stopped at the segment start, context included
                while len(seg) < args.segment:
                    nxt = next(frames_iter, None)
                    if nxt is None:
                        break
                    seg.append(nxt)
                if not seg:
                    raise RunnerError(f"input {args.input} holds no decodable video frame", EXIT_USAGE)
                peek = next(frames_iter, None)
                last = peek is None
                inp = np.stack(seg)
                res = backend.restore(inp, k)
                if res.shape[0] != inp.shape[0]:
                    raise RunnerError(f"segment {k}: restore returned {res.shape[0]} frames for {inp.shape[0]}", EXIT_FAILED)
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
                start = start + len(seg) - hold
                k += 1
                state.update(segment=k, start=start, written=state["written"] + len(emit),
                             pending=f"pending_{k - 1:05d}.npy" if hold else False, done=last)
                _atomic_json(state_path, state)
                if old_pending and old_pending != state["pending"]:
                    os.remove(os.path.join(state_dir, old_pending))
                if not args.quiet:
                    print(f"segment {k}: {state['written']} frames restored", file=sys.stderr)
                if last:
                    break
                if args.throttle:
                    time.sleep(args.throttle)
                carry_in = seg[len(seg) - hold:] + [peek]
        ext = ".mkv" if output.lower().endswith(".mkv") else ".mp4"
        tmp = os.path.join(out_dir, f".{os.path.basename(output)}.{uuid.uuid4().hex[:6]}.partial{ext}")
        try:
            encode_output(spool, state["written"], state["shape"][:2], fps, args.input if info["audio"] else None, tmp)
            os.replace(tmp, output)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    finally:
        backend.close()
    if not args.keep_state:
        shutil.rmtree(state_dir, ignore_errors=True)
    print(f"wrote {args.output} ({state['written']} frames)")
    return 0
