"""The README's picture of a workflow in the ComfyUI page: docs/workflow_screenshot.png.

usage: .venv/bin/python scripts/make_screenshot.py [NAME] [--width 960] [--out docs/workflow_screenshot.png]

Same drawing as scripts/make_thumbnails.py (a local headless ComfyUI with the pack, headless Chromium, the UI
workflow dropped onto the canvas like a user, the whole graph fitted into a 16:9 view), at README size.
NAME defaults to demo_restore, the workflow that needs no models. The empty canvas around the graph is cropped
off (a wide graph in a 16:9 view leaves bands above and below it). Run it after scripts/regen.py.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_thumbnails as mt  # noqa: E402  (scripts/make_thumbnails.py: its harness imports come with it)


def crop_to_graph(path: str, pad: int = 8) -> None:
    """Crop the image to what differs from the canvas colour (its top-left pixel), plus ``pad`` pixels."""
    img = Image.open(path).convert("RGB")
    a = np.asarray(img).astype(int)
    ys, xs = np.nonzero(np.abs(a - a[0, 0]).sum(axis=2) > 24)
    if len(ys):
        box = (max(0, xs.min() - pad), max(0, ys.min() - pad), min(img.width, xs.max() + pad + 1),
               min(img.height, ys.max() + pad + 1))
        img = img.crop(box)
    img.save(path, optimize=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("name", nargs="?", default="demo_restore", help="bundled workflow (default demo_restore)")
    ap.add_argument("--width", type=int, default=960, help="image width in pixels (default 960)")
    ap.add_argument("--out", default=os.path.join(mt.REPO, "docs", "workflow_screenshot.png"))
    args = ap.parse_args()
    server = mt.ComfyServer(mt.paths.base_dir("thumbnails")).start()
    try:
        with mt.Browser() as browser:
            errors = mt.thumbnail(browser, server.url, args.name, args.out, args.width)
    finally:
        server.stop()
    crop_to_graph(args.out)
    for e in errors:
        print(f"page error while loading {args.name}: {e.splitlines()[0]}", file=sys.stderr)
    print("wrote", os.path.relpath(args.out, mt.REPO), os.path.getsize(args.out), "bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
