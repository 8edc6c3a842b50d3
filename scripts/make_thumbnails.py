"""Thumbnails of the bundled UI workflows, as the web page draws them: workflows/<name>.jpg.

The frontend's template browser lists every JSON in the pack's workflows/ folder and shows
/api/workflow_templates/<pack folder>/<name>.jpg beside it, so the picture sits next to its workflow.

usage: .venv/bin/python scripts/make_thumbnails.py [NAME ...] [--width 480] [--out DIR]

Starts a local headless ComfyUI with the pack (tests/harness/server.py; no models needed to draw a graph) and
headless Debian Chromium (tests/harness/browser.py, installed with apt-get when missing), drops each
workflows/<name>.json onto the canvas like a user, hides the side bar and canvas chrome, fits the whole graph
(nodes, stage groups, the note) into a 16:9 view and saves it scaled to --width pixels (480x270 by default).
Run it after scripts/regen.py changes the UI workflows.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))  # the test harness only; this process never imports ComfyUI

from harness import paths  # noqa: E402
from harness.browser import RETURNING_USER_SETTINGS, Browser, BrowserError, ComfyPage, store_settings  # noqa: E402
from harness.server import ComfyServer  # noqa: E402

WORKFLOWS = os.path.join(REPO, "workflows")
API_DIR = os.path.join(WORKFLOWS, "api")


def names() -> list[str]:
    return sorted(f[:-5] for f in os.listdir(API_DIR) if f.endswith(".json"))


def thumbnail(browser: Browser, url: str, name: str, dst: str, width: int, viewport=(1600, 900)) -> list[str]:
    """Draw one workflow and save its thumbnail; returns the errors the page logged while loading it."""
    with open(os.path.join(WORKFLOWS, f"{name}.json")) as f:
        workflow = json.load(f)
    # the picture is of the graph: the page's "Missing Models" dialog (loaders carry download metadata and this
    # server has no models) would cover it
    store_settings(url, {**RETURNING_USER_SETTINGS, **ComfyPage.CLEAN_VIEW_SETTINGS,
                         "Comfy.Workflow.ShowMissingModelsWarning": False})
    page = browser.new_page(*viewport)
    try:
        page.goto(url)
        comfy = ComfyPage(page)
        comfy.wait_ready()
        time.sleep(1.5)
        comfy.close_dialogs()
        comfy.clean_view()
        missing = sorted({n["type"] for n in workflow["nodes"]} - comfy.registered_types())
        if missing:
            raise BrowserError(f"{name}: node types unknown to the page: {missing}")
        page.clear_messages()
        comfy.drop_workflow(workflow, f"{name}.json")
        time.sleep(1.0)
        comfy.fit_view(pad=24)
        left = comfy.close_dialogs()
        if left:
            raise BrowserError(f"{name}: a dialog covered the graph: {left[0][:200]}")
        # The whole 16:9 viewport, so every thumbnail has the same size (480x270 by default).
        clip = {"x": 0, "y": 0, "width": viewport[0], "height": viewport[1]}
        png = dst + ".png"
        page.screenshot(png, width=width, clip=clip)
        with Image.open(png) as im:  # the template browser asks for .jpg
            im.convert("RGB").save(dst, "JPEG", quality=88)
        os.remove(png)
        # Not the file's doing: registry look-ups blocked by the server's CSP, and the preview of the placeholder
        # clip name (input.mp4) that is not in this server's input folder.
        return [e for e in page.errors if "api.comfy.org" not in e and "/api/view?type=input" not in e]
    finally:
        page.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help="workflow names (default: every workflows/api/*.json)")
    ap.add_argument("--width", type=int, default=480, help="thumbnail width in pixels (default 480)")
    ap.add_argument("--out", default=WORKFLOWS, help="output folder")
    args = ap.parse_args()
    todo = args.names or names()
    absent = [n for n in todo if not os.path.exists(os.path.join(WORKFLOWS, f"{n}.json"))]
    if absent:
        print(f"no UI workflow for {absent}: run scripts/regen.py first", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    server = ComfyServer(paths.base_dir("thumbnails")).start()
    try:
        with Browser() as browser:
            for name in todo:
                dst = os.path.join(args.out, f"{name}.jpg")
                errors = thumbnail(browser, server.url, name, dst, args.width)
                print("wrote", os.path.relpath(dst, REPO))
                for e in errors:
                    print(f"  page error while loading {name}: {e.splitlines()[0]}", file=sys.stderr)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
