"""The README's before/after strip: frames of the noisy sample clip, the pack's restore of it, and the clean original.

usage:
    TR_SKIP_SETUP=1 bash scripts/restore.sh samples/sample_clip_noisy.mp4 --reference samples/sample_clip.mp4 \\
        -o /tmp/restored.mkv
    .venv/bin/python scripts/make_before_after.py /tmp/restored.mkv [--frames 0 8 15] [--scale 2] \\
        [--out docs/before_after.png]

Rows: noisy input, restored (lossless .mkv, so the picture is the restore itself, not an encoder's), clean original;
one column per frame index, each frame scaled up --scale times (nearest neighbour, so no smoothing is added).
Reads video with PyAV (already in the virtualenv, ComfyUI needs it); never imports ComfyUI.
"""
from __future__ import annotations

import argparse
import os
import sys

import av
import numpy as np
from PIL import Image, ImageDraw

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOISY = os.path.join(REPO, "samples", "sample_clip_noisy.mp4")
CLEAN = os.path.join(REPO, "samples", "sample_clip.mp4")
LABEL_W = 112  # left column for the row labels, in pixels


def frames(path: str) -> list[np.ndarray]:
    """Every frame of a video as HxWx3 uint8 RGB."""
    with av.open(path) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def strip(rows: list[tuple[str, list[np.ndarray]]], picks: list[int], scale: int) -> Image.Image:
    h, w = rows[0][1][0].shape[:2]
    cw, ch = w * scale, h * scale
    gap = 4
    img = Image.new("RGB", (LABEL_W + len(picks) * (cw + gap), len(rows) * (ch + gap)), "white")
    draw = ImageDraw.Draw(img)
    for r, (label, clip) in enumerate(rows):
        y = r * (ch + gap)
        draw.text((6, y + ch // 2 - 6), label, fill="black")
        for c, i in enumerate(picks):
            tile = Image.fromarray(clip[i]).resize((cw, ch), Image.NEAREST)
            img.paste(tile, (LABEL_W + c * (cw + gap), y))
    return img


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("restored", help="the restore of samples/sample_clip_noisy.mp4 (a lossless .mkv is best)")
    ap.add_argument("--frames", type=int, nargs="+", default=[0, 8, 15], help="frame indices (default 0 8 15)")
    ap.add_argument("--scale", type=int, default=2, help="nearest-neighbour upscale of each frame (default 2)")
    ap.add_argument("--out", default=os.path.join(REPO, "docs", "before_after.png"))
    args = ap.parse_args()
    rows = [("noisy input", frames(NOISY)), ("restored", frames(args.restored)), ("clean original", frames(CLEAN))]
    n = min(len(clip) for _, clip in rows)
    sizes = {clip[0].shape for _, clip in rows}
    if len(sizes) != 1:
        print(f"restored: frame size differs from the sample clip's: {sorted(sizes)}", file=sys.stderr)
        return 2
    bad = [i for i in args.frames if not 0 <= i < n]
    if bad:
        print(f"--frames: {bad} outside 0..{n - 1}", file=sys.stderr)
        return 2
    strip(rows, args.frames, args.scale).save(args.out, optimize=True)
    print("wrote", args.out, os.path.getsize(args.out), "bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
