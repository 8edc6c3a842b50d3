"""Small test clips with known content for the runner tests: any size, variable frame rate, mono/stereo
audio in AAC or PCM, and readers for what a player would see (size, pixel format, timestamps, audio)."""
from __future__ import annotations

from fractions import Fraction

import numpy as np


def make_clip(path: str, width: int = 32, height: int = 32, frames: int = 6, base: int = 10, vfr: bool = False,
              audio: str | None = None, acodec: str = "aac", rate: int = 16000) -> np.ndarray:
    """FFV1 (lossless) clip in Matroska; frame i has brightness base + 15 i with a corner patch (order and
    size visible). ``vfr``: durations alternate 100 ms / 40 ms. ``audio``: 'mono' or 'stereo' 440 Hz tone
    at amplitude 0.3. Returns the RGB frames [T, H, W, 3]."""
    import av

    rgb = np.zeros((frames, height, width, 3), np.uint8)
    for i in range(frames):
        rgb[i] = (base + 15 * i) % 256
        rgb[i, : height // 2, : width // 3, 0] = 255 - 10 * i
    with av.open(path, "w", format="matroska") as c:
        vs = c.add_stream("ffv1", rate=Fraction(12))
        vs.width, vs.height, vs.pix_fmt = width, height, "bgr0"
        vs.codec_context.time_base = vs.time_base = Fraction(1, 1000)
        a = c.add_stream(acodec, rate=rate) if audio else None
        if a is not None:
            a.layout = audio
        t = 0
        for i, fr in enumerate(rgb):
            f = av.VideoFrame.from_ndarray(fr, format="rgb24")
            f.pts = t
            t += 40 if (vfr and i % 2) else 1000 // 12
            for p in vs.encode(f):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        if a is not None:
            n, ch = int(rate * t / 1000), 1 if audio == "mono" else 2
            tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)).astype(np.float32)[None].repeat(ch, 0)
            fmt = "fltp" if acodec == "aac" else "s16p"
            for i in range(0, n, 1024):
                d = tone[:, i:i + 1024]
                if fmt == "s16p":
                    d = np.round(d * 32767).astype(np.int16)
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(d), format=fmt, layout=audio)
                af.sample_rate, af.pts = rate, i
                for p in a.encode(af):
                    c.mux(p)
            for p in a.encode():
                c.mux(p)
    return rgb


def read(path: str) -> dict:
    """What a player sees: container, frames [T,H,W,3], coded size, pixel format, frame times (seconds),
    audio codec/channels/RMS."""
    import av

    out = {}
    with av.open(path) as c:
        out["container"] = c.format.name
        v = c.streams.video[0]
        out["pix_fmt"], out["size"] = v.codec_context.pix_fmt, (v.codec_context.width, v.codec_context.height)
        decoded = list(c.decode(video=0))
        out["frames"] = np.stack([f.to_ndarray(format="rgb24") for f in decoded])
        out["times"] = [float(f.time) for f in decoded]
    with av.open(path) as c:
        if c.streams.audio:
            a = c.streams.audio[0]
            out["audio_codec"], out["channels"] = a.codec_context.name, a.codec_context.channels
            samples = np.concatenate([f.to_ndarray().astype(np.float64).reshape(f.layout.nb_channels if f.format.is_planar else 1, -1)
                                      for f in c.decode(a)], axis=1)
            if samples.dtype != np.float64 or np.abs(samples).max() > 2:
                samples = samples / 32768.0
            out["rms"] = float(np.sqrt((samples ** 2).mean()))
        else:
            out["audio_codec"], out["channels"], out["rms"] = None, 0, 0.0
    return out


def excerpt_clip(path: str, source: str | None = None, frames: int = 4, width: int = 64, height: int = 48, fps: int = 8) -> str:
    """A short small H.264 clip (PyAV): the first ``frames`` frames of ``source`` scaled to width x height, or a
    moving gradient when there is no source. The browser test checks the page, not the restoration, so it runs
    every workflow on a few small frames (the full clip takes minutes per workflow on two CPU cores)."""
    import av

    images = []
    if source:
        with av.open(source) as inp:
            for frame in inp.decode(video=0):
                images.append(frame.to_ndarray(width=width, height=height, format="rgb24"))
                if len(images) == frames:
                    break
    else:
        yy, xx = np.mgrid[0:height, 0:width]
        for i in range(frames):
            images.append(np.stack([(xx * 4 + i * 8) % 256, (yy * 4) % 256, ((xx + yy) * 2 + i * 16) % 256], -1).astype(np.uint8))
    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for img in images:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
