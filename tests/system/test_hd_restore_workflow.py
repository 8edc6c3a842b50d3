"""The bundled hd_restore workflow through a real server with the tiny models, at a tile size that
needs several tiles (6 latent tiles of the 128x96 sample frames) and several tiled-VAE tiles."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from harness import paths
from harness.fixtures import SAMPLE_CLIP
from media_clips import excerpt_clip
from tr_cli import workflows


def _run(prompt, server, tiny, tmp_path, tag):
    import av

    wf = tmp_path / f"{tag}.json"
    wf.write_text(json.dumps(prompt))
    clip = excerpt_clip(str(tmp_path / "clip.mp4"), SAMPLE_CLIP, frames=4, width=128, height=96)
    out = tmp_path / f"{tag}.mp4"
    args = ["run", clip, "-w", str(wf), "--server", server.url, "-o", str(out), "--quiet",
            "--checkpoint", tiny["checkpoint"], "--controlnet", tiny["controlnet"]]
    p = subprocess.run([sys.executable, "-m", "tr_cli", *args], cwd=paths.REPO, capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    with av.open(str(out)) as f:
        return np.stack([fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]).astype(np.float32)


def _by_type(prompt, class_type):
    return [n for n in prompt.values() if n["class_type"] == class_type]


def test_hd_restore_runs_with_several_tiles(server, tiny, tmp_path):
    prompt = workflows.load("hd_restore")
    assert _by_type(prompt, "VAEEncodeTiled") and _by_type(prompt, "VAEDecodeTiled")
    for n in prompt.values():
        if isinstance(n["inputs"].get("steps"), int):
            n["inputs"]["steps"] = 2
    one = _run(prompt, server, tiny, tmp_path, "one_tile")  # shipped 512 px tiles: one tile at 128x96
    (tiled_node,) = _by_type(prompt, "TR_TiledSampling")
    tiled_node["inputs"].update(tile_size=64, overlap=16)  # 8-cell latent tiles: 2 rows x 3 columns
    # several VAE tiles too (ComfyUI's tiled encode also runs half-width tiles: 64 px with 32 overlap would
    # leave it no stride)
    for n in _by_type(prompt, "VAEEncodeTiled"):
        n["inputs"].update(tile_size=128, overlap=32)
    for n in _by_type(prompt, "VAEDecodeTiled"):
        n["inputs"].update(tile_size=64, overlap=32)
    tiled = _run(prompt, server, tiny, tmp_path, "tiled")
    assert tiled.shape == one.shape == (4, 96, 128, 3)
    assert np.isfinite(tiled).all() and np.abs(tiled - one).max() > 1  # the tiles did change the run
