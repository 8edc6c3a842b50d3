"""Regenerate what is derived from the node schemas: the UI-format (drag and drop) workflows from
workflows/api/*.json, and the node reference in docs/nodes.md.

usage: .venv/bin/python scripts/regen.py   (starts a local ComfyUI to read /object_info)
"""
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # tr_cli only; this process never imports ComfyUI

from tr_cli import node_reference, ui_format, workflows  # noqa: E402
from tr_cli.client import Client, LocalServer  # noqa: E402


def build(object_info: dict) -> dict[str, dict]:
    catalog = json.load(open(os.path.join(REPO, "docs", "workflow_catalog.json")))
    out = {}
    for name, path in workflows.bundled().items():
        meta = catalog.get(name, {"title": name, "description": ""})
        out[name] = ui_format.api_to_ui(workflows.load(path), object_info, meta["title"], meta["description"])
    return out


def main() -> int:
    server = LocalServer(os.path.join(REPO, ".host", "ui-build"))
    try:
        info = Client(server.start()).get_json("/object_info", 120)
    finally:
        server.stop()
    for name, wf in build(info).items():
        dst = os.path.join(REPO, "workflows", f"{name}.json")
        with open(dst, "w") as f:
            json.dump(wf, f, indent=1)
            f.write("\n")
        print("wrote", dst)
    ref = os.path.join(REPO, "docs", "nodes.md")
    text = open(ref).read() if os.path.exists(ref) else node_reference.HEADER
    with open(ref, "w") as f:
        f.write(node_reference.splice(text, node_reference.render(info)))
    print("updated node reference in", ref)
    return 0


if __name__ == "__main__":
    sys.exit(main())
