"""Build the bundled sample clip and its ground truth from the synthetic generator.

    .venv/bin/python scripts/make_sample_clip.py            # writes samples/sample_clip.mp4 + sample_clip_gt.npz

The clip: ``pipelines.synthetic.make_clip`` (astronaut, mixed camera motion, a moving object), h264 yuv420p
at a low crf through PyAV, with a quiet mono sine tone (AAC) of the clip's duration so audio pass-through can be
tested. ``sample_clip_gt.npz`` holds the clean frames (8 bit), the true forward/backward flow (float16) and the
occlusion masks (see ``pipelines.synthetic.save_ground_truth``). Deterministic for the same arguments.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from fractions import Fraction

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pack():
    """Import the repo as the package ``temporal_restore`` (its ``nodes/`` must not shadow anything)."""
    if "temporal_restore" not in sys.modules:
        spec = importlib.util.spec_from_file_location("temporal_restore", os.path.join(REPO, "__init__.py"),
                                                      submodule_search_locations=[REPO])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["temporal_restore"] = mod
        spec.loader.exec_module(mod)
    from temporal_restore.pipelines import metrics, synthetic

    return synthetic, metrics


def write_mp4(path: str, frames_u8: np.ndarray, fps: int, crf: float, tone_hz: float = 440.0,
              tone_amp: float = 0.05, sample_rate: int = 22050) -> None:
    """h264 yuv420p video + mono AAC sine tone of the same duration, via PyAV."""
    import av

    t, h, w, _ = frames_u8.shape
    with av.open(path, mode="w", format="mp4") as out:
        out.metadata["comment"] = "Temporal Restore sample clip (synthetic, see scripts/make_sample_clip.py)"
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"crf": str(crf), "preset": "medium", "threads": "1"}
        vs.codec_context.thread_count = 1
        aus = out.add_stream("aac", rate=sample_rate, layout="mono")
        n = int(round(t / fps * sample_rate))
        tone = (tone_amp * np.sin(2 * np.pi * tone_hz * np.arange(n) / sample_rate)).astype(np.float32)
        for i, f in enumerate(frames_u8):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, fps)
            for p in vs.encode(vf):
                out.mux(p)
        chunk = 1024
        for s in range(0, n, chunk):
            af = av.AudioFrame.from_ndarray(tone[None, s:s + chunk], format="fltp", layout="mono")
            af.sample_rate, af.pts, af.time_base = sample_rate, s, Fraction(1, sample_rate)
            for p in aus.encode(af):
                out.mux(p)
        for st in (vs, aus):
            for p in st.encode():
                out.mux(p)


def read_mp4(path: str):
    import av

    with av.open(path) as inp:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in inp.decode(video=0)])
    with av.open(path) as inp:
        audio = [f.to_ndarray() for f in inp.decode(audio=0)]
    return frames, (np.concatenate(audio, axis=-1) if audio else None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=os.path.join(REPO, "samples"))
    ap.add_argument("--name", default="sample_clip")
    ap.add_argument("--image", default="astronaut")
    ap.add_argument("--motion", default="mixed")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--height", type=int, default=96)
    ap.add_argument("--fps", type=int, default=8)
    ap.add_argument("--crf", type=float, default=16.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    import torch

    synthetic, metrics = _pack()
    clip = synthetic.make_clip(a.image, a.frames, a.height, a.width, a.motion, a.seed)
    os.makedirs(a.out_dir, exist_ok=True)
    mp4 = os.path.join(a.out_dir, f"{a.name}.mp4")
    gt = os.path.join(a.out_dir, f"{a.name}_gt.npz")
    u8 = (clip.frames.numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
    write_mp4(mp4, u8, a.fps, a.crf)
    synthetic.save_ground_truth(gt, clip, fps=a.fps, video=os.path.basename(mp4))

    dec, audio = read_mp4(mp4)
    assert dec.shape == u8.shape, (dec.shape, u8.shape)
    back = synthetic.load_ground_truth(gt)
    decoded = torch.from_numpy(dec).float() / 255.0
    print(f"{mp4}: {os.path.getsize(mp4)} bytes, {dec.shape[0]} frames {dec.shape[2]}x{dec.shape[1]} @ {a.fps} fps, "
          f"audio {None if audio is None else audio.shape}")
    print(f"{gt}: {os.path.getsize(gt)} bytes")
    print(f"decoded vs clean: PSNR {metrics.psnr(decoded, back.frames):.2f} dB, "
          f"SSIM {metrics.ssim(decoded, back.frames):.4f}")
    print(f"warping error (true flow, occlusion masked): clean {metrics.warping_error(back.frames, back.flow, back.occlusion):.5f}, "
          f"decoded {metrics.warping_error(decoded, back.flow, back.occlusion):.5f}, "
          f"zero flow {metrics.warping_error(back.frames, torch.zeros_like(back.flow), back.occlusion):.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
