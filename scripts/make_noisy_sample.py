"""Make the degraded sample clip the demo restores: samples/sample_clip.mp4 + Gaussian noise (sigma 25/255,
pipelines.degrade, seeded), same fps, the source audio stream copied unchanged.

    .venv/bin/python scripts/make_noisy_sample.py        # writes samples/sample_clip_noisy.mp4

The frames are encoded with h264 yuv444p at crf 4 (near-lossless, no chroma subsampling) so the codec does not
denoise them. Prints the PSNR of
the decoded noisy clip against the clean ground truth (samples/sample_clip_gt.npz).
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
    if "temporal_restore" not in sys.modules:
        spec = importlib.util.spec_from_file_location("temporal_restore", os.path.join(REPO, "__init__.py"),
                                                      submodule_search_locations=[REPO])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["temporal_restore"] = mod
        spec.loader.exec_module(mod)
    from temporal_restore.pipelines import degrade, metrics, synthetic

    return degrade, metrics, synthetic


def main(argv=None) -> int:
    import av
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", default=os.path.join(REPO, "samples", "sample_clip.mp4"))
    ap.add_argument("--output", default=os.path.join(REPO, "samples", "sample_clip_noisy.mp4"))
    ap.add_argument("--task", default="denoise")
    ap.add_argument("--strength", type=float, default=25.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--crf", type=float, default=4.0)
    a = ap.parse_args(argv)
    degrade, metrics, synthetic = _pack()

    with av.open(a.input) as inp:
        vin = inp.streams.video[0]
        fps = vin.average_rate
        frames = np.stack([f.to_ndarray(format="rgb24") for f in inp.decode(video=0)])
    clean = torch.from_numpy(frames).float() / 255.0
    noisy = degrade.degrade(clean, a.task, strength=a.strength, seed=a.seed)
    u8 = (noisy.numpy() * 255.0).round().clip(0, 255).astype(np.uint8)

    with av.open(a.input) as inp, av.open(a.output, mode="w", format="mp4") as out:
        out.metadata["comment"] = f"Temporal Restore sample clip + {a.task} {a.strength} (scripts/make_noisy_sample.py)"
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = u8.shape[2], u8.shape[1], "yuv444p"
        vs.options = {"crf": str(a.crf), "preset": "medium", "threads": "1"}
        vs.codec_context.thread_count = 1
        ain = inp.streams.audio[0] if inp.streams.audio else None
        aout = out.add_stream_from_template(ain) if ain is not None else None
        for i, f in enumerate(u8):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, int(round(float(fps))))
            for p in vs.encode(vf):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        if ain is not None:
            for p in inp.demux(ain):
                if p.dts is None:
                    continue
                p.stream = aout
                out.mux(p)

    with av.open(a.output) as chk:
        dec = np.stack([f.to_ndarray(format="rgb24") for f in chk.decode(video=0)])
        has_audio = bool(chk.streams.audio)
    gt = os.path.join(os.path.dirname(a.input), os.path.splitext(os.path.basename(a.input))[0] + "_gt.npz")
    ref = synthetic.load_ground_truth(gt).frames if os.path.exists(gt) else clean
    print(f"{a.output}: {os.path.getsize(a.output)} bytes, {dec.shape[0]} frames {dec.shape[2]}x{dec.shape[1]}, "
          f"audio {'copied' if has_audio else 'none'}")
    print(f"noisy vs clean: PSNR {metrics.psnr(torch.from_numpy(dec).float() / 255.0, ref):.2f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
