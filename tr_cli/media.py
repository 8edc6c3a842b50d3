"""Faithful media for the runner: probing an input, and writing the restored frames to the container
the output's extension names, with the input's audio stream and frame timestamps carried over.

* ``.mkv``: FFV1 RGB, lossless, the exact frame size.
* ``.mp4`` / ``.mov`` / ``.m4v``: H.264 yuv420p (the format players accept; libx264 CRF 16, mpeg4 when
  libx264 is missing). yuv420p needs even sizes, so an odd width/height is padded by one edge-replicated
  pixel column/row; the caller tells the user and ``.mkv`` keeps the exact size.
* Any other extension is refused (``container_for``) before anything runs.
* Audio: the input's audio streams are copied packet for packet (same codec, channel layout and level)
  when the container can hold the codec, else re-encoded to AAC with the same layout and rate.
* Host copy: an RGB-family input (FFV1 bgr0/gbrp, ...) is handed to ComfyUI as PNG-in-MOV rgb24
  (``host_copy``): ComfyUI 0.33+ decodes such formats through a float swscale path that returns level 255
  as 0.9961 (254.02), while rgb24 is read exactly on every version. YUV inputs go as they are (their
  YUV->RGB conversion is the host's either way).
* Timestamps: when the input has a variable frame rate and the output has as many frames, every frame
  keeps its input timestamp; otherwise the output is constant-rate at the input's average rate.
"""
from __future__ import annotations

import os
from fractions import Fraction

import numpy as np

from .client import EXIT_USAGE, RunnerError

CONTAINERS = {".mkv": "matroska", ".mp4": "mp4", ".m4v": "mp4", ".mov": "mov"}
# audio codecs the mp4 muxer takes as they are (mov also takes PCM; matroska takes nearly anything)
STANDARD_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 8: "7.1"}
MP4_AUDIO = {"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"}


def container_for(path: str) -> str:
    """The container format the output's extension names; RunnerError (exit 2) for any other extension."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in CONTAINERS:
        raise RunnerError(f"output {path}: expected a .mp4, .mov, .m4v or .mkv name (the extension decides the "
                          f"container; .mkv is lossless), got '{ext or 'no extension'}'", EXIT_USAGE)
    return CONTAINERS[ext]


def probe(path: str) -> dict:
    """fps (average), width, height, frame count, audio streams, and the video frame timestamps
    (``pts`` in ``time_base`` units, sorted; read from packets, nothing decoded)."""
    import av

    if not os.path.isfile(path):
        raise RunnerError(f"input video not found: {path}", EXIT_USAGE)
    try:
        with av.open(path) as c:
            if not c.streams.video:
                raise RunnerError(f"input {path} has no video stream", EXIT_USAGE)
            v = c.streams.video[0]
            rate = v.average_rate or v.guessed_rate or Fraction(25)
            info = {"fps": Fraction(rate), "width": v.codec_context.width, "height": v.codec_context.height,
                    "audio": [{"codec": a.codec_context.name, "channels": a.codec_context.channels,
                               "layout": a.codec_context.layout.name, "rate": a.codec_context.sample_rate}
                              for a in c.streams.audio],
                    "time_base": v.time_base, "pix_fmt": v.codec_context.pix_fmt or ""}
            pts = sorted(p.pts for p in c.demux(v) if p.pts is not None and p.size)
    except RunnerError:
        raise
    except Exception as e:  # av raises many types for corrupt files
        raise RunnerError(f"input {path} is not a readable video: {e.__class__.__name__}: {e}", EXIT_USAGE) from None
    info["pts"] = pts
    info["frames"] = len(pts)
    return info


# pixel formats every supported ComfyUI decodes straight to 8-bit RGB (no float conversion on the way)
HOST_EXACT_FORMATS = ("rgb24", "rgba", "pal8", "yuvj420p", "yuvj422p", "yuvj444p")


def needs_host_copy(info: dict) -> bool:
    """Whether the input is RGB-family (not YUV) in a pixel format a newer host would not decode exactly."""
    fmt = info.get("pix_fmt") or ""
    return not fmt.startswith(("yuv", "nv")) and fmt not in HOST_EXACT_FORMATS


def write_rgb24_mov(frames, path: str, fps: Fraction) -> None:
    """Frames [H, W, 3] uint8 (any iterable, written one at a time) as lossless PNG-in-MOV rgb24: a file every
    ComfyUI decodes to exactly ``level / 255``."""
    import av

    with av.open(path, "w", format="mov") as c:
        s = None
        for fr in frames:
            if s is None:
                s = c.add_stream("png", rate=fps)
                s.width, s.height, s.pix_fmt = fr.shape[1], fr.shape[0], "rgb24"
            for pkt in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(fr), format="rgb24")):
                c.mux(pkt)
        if s is not None:
            for pkt in s.encode():
                c.mux(pkt)


def host_copy(src: str, dst: str, info: dict) -> str:
    """``dst`` (a .mov) holding ``src``'s frames as rgb24 PNG (video only: the runner copies the audio
    itself from ``src``); returns ``dst``."""
    import av

    def frames():
        with av.open(src) as c:
            for f in c.decode(video=0):
                yield f.to_ndarray(format="rgb24")

    write_rgb24_mov(frames(), dst, info["fps"])
    return dst


def is_vfr(info: dict) -> bool:
    """True when the frame durations differ by more than one time-base tick."""
    d = np.diff(np.asarray(info["pts"], dtype=np.int64))
    return len(d) > 1 and int(d.max() - d.min()) > 1


def even_size(w: int, h: int) -> tuple[int, int]:
    return w + w % 2, h + h % 2


class VideoWriter:
    """Write RGB uint8 frames [H, W, 3] to ``dst`` (container from the extension), with the audio of
    ``audio_src`` and, when ``pts`` is given (one per frame, in ``time_base``), those timestamps."""

    def __init__(self, dst: str, width: int, height: int, fps: Fraction, audio_src: str | None = None,
                 pts: list[int] | None = None, time_base: Fraction | None = None):
        import av

        self.fmt = container_for(dst)
        self.w, self.h = width, height
        self.pts, self.i = pts, 0
        self.out = av.open(dst, "w", format=self.fmt)
        lossless = self.fmt == "matroska"
        codec = "ffv1" if lossless else "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self.vs = self.out.add_stream(codec, rate=fps)
        self.ew, self.eh = (width, height) if lossless else even_size(width, height)
        self.vs.width, self.vs.height = self.ew, self.eh
        self.vs.pix_fmt = "bgr0" if lossless else "yuv420p"
        if codec == "libx264":
            self.vs.options = {"crf": "16"}
        if pts is not None:
            self.first = pts[0]
            self.vs.codec_context.time_base = time_base
            self.vs.time_base = time_base
        self.audio = []
        self.src = av.open(audio_src) if audio_src else None
        if self.src is not None:
            for a_in in self.src.streams.audio:
                self.audio.append((a_in, self._audio_stream(a_in)))

    def _audio_stream(self, a_in):
        name = a_in.codec_context.name
        if self.fmt == "matroska" or name in MP4_AUDIO or (self.fmt == "mov" and name.startswith("pcm_")):
            return self.out.add_stream_from_template(a_in), None
        import av

        # same channel count in its standard order (a PCM track may carry an unordered "1 channels" layout)
        layout = STANDARD_LAYOUTS.get(a_in.codec_context.channels, a_in.codec_context.layout.name)
        a_out = self.out.add_stream("aac", rate=a_in.codec_context.sample_rate)
        a_out.layout = layout
        a_out.format = "fltp"  # AAC's sample format; the muxer opens every encoder at the first packet
        return a_out, av.AudioResampler(format="fltp", layout=layout, rate=a_in.codec_context.sample_rate)

    def write(self, rgb: np.ndarray) -> None:
        import av

        if rgb.shape[:2] != (self.h, self.w):
            raise RunnerError(f"restored frame {self.i} is {rgb.shape[1]}x{rgb.shape[0]}, expected {self.w}x{self.h}", 4)
        if (self.ew, self.eh) != (self.w, self.h):  # edge-replicate to even sizes for yuv420p
            rgb = np.pad(rgb, ((0, self.eh - self.h), (0, self.ew - self.w), (0, 0)), mode="edge")
        fr = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        fr.pts = self.i if self.pts is None else self.pts[self.i] - self.first
        self.i += 1
        for pkt in self.vs.encode(fr):
            self.out.mux(pkt)

    def close(self) -> None:
        for pkt in self.vs.encode():
            self.out.mux(pkt)
        for a_in, (a_out, resampler) in self.audio:
            self.src.seek(0)
            if resampler is None:
                for pkt in self.src.demux(a_in):
                    if pkt.dts is None:
                        continue
                    pkt.stream = a_out
                    self.out.mux(pkt)
                continue
            for frame in self.src.decode(a_in):
                for f in resampler.resample(frame):
                    for pkt in a_out.encode(f):
                        self.out.mux(pkt)
            for pkt in a_out.encode(None):
                self.out.mux(pkt)
        if self.src is not None:
            self.src.close()
        self.out.close()

    def abort(self) -> None:
        for c in (self.src, self.out):
            try:
                if c is not None:
                    c.close()
            except Exception:  # closing a half-written file may fail; it is deleted anyway
                pass


def write_video(frames, count: int, dst: str, width: int, height: int, info: dict,
                audio_src: str | None) -> list[str]:
    """Encode ``count`` frames (an iterable) to ``dst`` atomically (temp file in the same folder, then rename).
    ``info`` is the input's ``probe``; returns notes for the user (padding, constant rate)."""
    import uuid

    notes = []
    folder, base = os.path.split(os.path.abspath(dst))
    ext = os.path.splitext(dst)[1]
    tmp = os.path.join(folder, f".{base}.{uuid.uuid4().hex[:6]}.partial{ext}")
    keep_pts = is_vfr(info) and count == info["frames"]
    if is_vfr(info) and not keep_pts:
        notes.append(f"the input has a variable frame rate; the output ({count} frames for "
                     f"{info['frames']}) is written at a constant {float(info['fps']):.3f} fps")
    elif keep_pts:
        notes.append("the input has a variable frame rate: every frame keeps its input timestamp")
    w = VideoWriter(tmp, width, height, info["fps"], audio_src if info["audio"] else None,
                    pts=info["pts"] if keep_pts else None, time_base=info["time_base"] if keep_pts else None)
    if (w.ew, w.eh) != (width, height):
        notes.append(f"{width}x{height} is padded to {w.ew}x{w.eh} for H.264 yuv420p (what players accept); "
                     f"write to a .mkv name for the exact size, lossless")
    try:
        for fr in frames:
            w.write(fr)
        w.close()
        os.replace(tmp, dst)
    except BaseException:
        w.abort()
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return notes
