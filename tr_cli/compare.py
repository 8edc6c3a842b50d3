"""Before/after metrics against a clean reference clip, computed by the runner after a restore."""
from __future__ import annotations

import json

from .client import EXIT_USAGE, RunnerError


def read_frames(path: str, limit: int | None = None):
    """[T,H,W,3] float32 in 0..1 decoded with PyAV."""
    import av
    import numpy as np
    import torch

    frames = []
    try:
        with av.open(path) as c:
            for f in c.decode(video=0):
                frames.append(f.to_ndarray(format="rgb24"))
                if limit and len(frames) >= limit:
                    break
    except Exception as e:
        raise RunnerError(f"reference/compare video {path} is not readable: {e}", EXIT_USAGE) from None
    if not frames:
        raise RunnerError(f"video {path} holds no frames", EXIT_USAGE)
    return torch.from_numpy(np.stack(frames)).float() / 255.0


def before_after(input_path: str, output_path: str, reference_path: str) -> dict:
    """Metrics of the degraded input and of the restored output, both against the clean reference."""
    from pipelines import metrics  # the runner runs from the repo root; pipelines never imports ComfyUI

    ref = read_frames(reference_path)
    report = {}
    for name, path in (("input", input_path), ("restored", output_path)):
        clip = read_frames(path)
        h, w = ref.shape[1:3]
        if clip.shape[1:3] != ref.shape[1:3] and tuple(clip.shape[1:3]) == (h + h % 2, w + w % 2):
            clip = clip[:, :h, :w]  # the runner pads odd sizes by one edge row/column for yuv420p
        if clip.shape != ref.shape:
            raise RunnerError(f"{name} {path}: {tuple(clip.shape[:3])} frames x height x width, the reference "
                              f"{reference_path} has {tuple(ref.shape[:3])}: nothing is truncated or resized", EXIT_USAGE)
        m = metrics.video_metrics(clip, reference=ref)
        report[name] = {k: m.get(k) for k in ("psnr", "ssim", "warping_error", "flicker")}
    return report


def table(report: dict) -> str:
    rows = ["metric          input     restored", "-" * 36]
    for key in ("psnr", "ssim", "warping_error", "flicker"):
        a, b = report["input"].get(key), report["restored"].get(key)
        rows.append(f"{key:<14}{a:>9.4f}{b:>13.4f}")
    return "\n".join(rows)


def dumps(report: dict) -> str:
    return json.dumps(report, indent=2)
