"""API-format prompt <-> UI-format (LiteGraph, drag-and-drop) workflow, driven by /object_info schemas.

The API file under workflows/api/ is the single source; the UI file beside it is generated from it
(`python scripts/build_ui_workflows.py`) and a test converts the UI file back and compares.
"""
from __future__ import annotations

import uuid

PRIMITIVES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
COLUMN_W, ROW_GAP, NODE_W = 380, 40, 320
UPLOAD_PREVIEW_H = 240  # LoadVideo/LoadImage preview drawn once a file is chosen
NODE_TITLE_H = 30  # LiteGraph.NODE_TITLE_HEIGHT: a node's title bar is drawn above its pos
STAGE_COLORS = ["#3f789e", "#8A8", "#b06634", "#a1309b", "#88A", "#444"]
# Where the models the bundled workflows name come from: the page reads a loader node's
# properties.models ({name, url, directory}) and offers the download when the file is missing.
MODEL_SOURCES = {
    "v1-5-pruned-emaonly-fp16.safetensors": (
        "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/v1-5-pruned-emaonly-fp16.safetensors",
        "checkpoints"),
    "control_v11f1e_sd15_tile_fp16.safetensors": (
        "https://huggingface.co/comfyanonymous/ControlNet-v1-1_fp16_safetensors/resolve/main/control_v11f1e_sd15_tile_fp16.safetensors",
        "controlnet"),
    "x4-upscaler-ema.safetensors": (
        "https://huggingface.co/stabilityai/stable-diffusion-x4-upscaler/resolve/main/x4-upscaler-ema.safetensors",
        "checkpoints"),
    "sd_xl_base_1.0.safetensors": (
        "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors",
        "checkpoints"),
    # the repository's file is diffusers-named; the page's browser download keeps that name (its desktop app
    # saves under ours), so the workflow's description says to save it as the name below
    "xinsir-controlnet-tile-sdxl-1.0.safetensors": (
        "https://huggingface.co/xinsir/controlnet-tile-sdxl-1.0/resolve/main/diffusion_pytorch_model.safetensors",
        "controlnet"),
}
#: the model family (nodes/_checks.FAMILIES names) of each file above: what a workflow naming it needs, so the
#: runner can refuse a run the embedded SD1.5 demo model cannot stand in for, and tests pick the tiny build
MODEL_FAMILIES = {
    "v1-5-pruned-emaonly-fp16.safetensors": "sd15",
    "control_v11f1e_sd15_tile_fp16.safetensors": "sd15",
    "x4-upscaler-ema.safetensors": "sd_x4",
    "sd_xl_base_1.0.safetensors": "sdxl",
    "xinsir-controlnet-tile-sdxl-1.0.safetensors": "sdxl",
}
FAMILY_LABELS = {"sd15": "SD1.5", "sd2": "SD2.x", "sdxl": "SDXL", "sd_x4": "SD x4 upscaler"}


def _inputs(schema: dict) -> list[tuple[str, str, dict]]:
    """(name, type, options) in schema order: required then optional."""
    out = []
    for group in ("required", "optional"):
        for name, entry in schema.get("input", {}).get(group, {}).items():
            typ = entry[0]
            opts = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
            if isinstance(typ, list):  # old-style combo: the options list is the type
                typ, opts = "COMBO", {**opts, "options": typ}
            out.append((name, typ, opts))
    return out


def is_widget(typ: str, opts: dict) -> bool:
    return typ in PRIMITIVES and not opts.get("forceInput")


def widget_default(typ: str, opts: dict):
    """What the page puts in a widget the workflow has no value for (a widget added to the node after the
    workflow was saved, e.g. core CreateVideo's bit_depth): the schema default, else a combo's first option."""
    if "default" in opts:
        return opts["default"]
    options = opts.get("options")
    return options[0] if typ == "COMBO" and options else None


def _depths(prompt: dict) -> dict[str, int]:
    depth: dict[str, int] = {}

    def visit(nid: str, stack=()) -> int:
        if nid in depth:
            return depth[nid]
        if nid in stack:
            raise ValueError(f"workflow has a cycle through node {nid}")
        parents = [v[0] for v in prompt[nid]["inputs"].values() if isinstance(v, list) and len(v) == 2]
        depth[nid] = 1 + max((visit(str(p), stack + (nid,)) for p in parents), default=-1)
        return depth[nid]

    for nid in prompt:
        visit(nid)
    return depth


def _wrapped_lines(text: str, width: float, char_w: float = 6.5) -> int:
    """Lines the Note's textarea shows (its monospace font is about 6.5 px per character)."""
    per_line = max(int((width - 20) / char_w), 1)
    return sum(max(1, -(-len(line) // per_line)) for line in text.split("\n"))


def _note_text(prompt: dict, object_info: dict, title: str, description: str) -> str:
    lines = [title, "", description.strip(), "", "Knobs:"]
    for nid, node in prompt.items():
        schema = object_info.get(node["class_type"], {})
        for name, typ, opts in _inputs(schema):
            if name in node["inputs"] and not isinstance(node["inputs"][name], list) and opts.get("tooltip"):
                if node["class_type"].startswith("TR_") or name in ("steps", "cfg", "denoise", "seed"):
                    lines.append(f"- {node.get('_meta', {}).get('title', node['class_type'])} / {name}: {opts['tooltip']}")
    return "\n".join(lines)


def api_to_ui(prompt: dict, object_info: dict, title: str = "", description: str = "") -> dict:
    """Build a LiteGraph workflow (version 0.4) equivalent to an API prompt."""
    missing = sorted({n["class_type"] for n in prompt.values()} - set(object_info))
    if missing:
        raise ValueError(f"object_info lacks node types {missing}: is the pack loaded?")
    ids = {nid: i + 1 for i, nid in enumerate(sorted(prompt, key=lambda k: int(k) if k.isdigit() else k))}
    depth = _depths(prompt)
    rows: dict[int, int] = {}
    nodes, links = [], []
    link_id = 0
    out_links: dict[tuple[str, int], list[int]] = {}
    ui_nodes: dict[str, dict] = {}
    for order, nid in enumerate(sorted(prompt, key=lambda k: (depth[k], ids[k]))):
        node = prompt[nid]
        schema = object_info[node["class_type"]]
        inputs, widgets = [], []
        for name, typ, opts in _inputs(schema):
            value = node["inputs"].get(name, opts.get("default"))
            linked = isinstance(value, list) and len(value) == 2 and str(value[0]) in prompt
            if is_widget(typ, opts):
                entry = {"name": name, "type": typ, "widget": {"name": name}, "link": None}
                if linked:
                    inputs.append(entry)
                    value = opts.get("default", 0 if typ in ("INT", "FLOAT") else "")
                widgets.append(value)
                if opts.get("control_after_generate") or (typ == "INT" and name in ("seed", "noise_seed")):
                    widgets.append("fixed")
                if opts.get("video_upload") or opts.get("image_upload"):
                    widgets.append("image")
            else:
                inputs.append({"name": name, "type": typ, "link": None})
        col = depth[nid]
        row = rows.get(col, 0)
        slots = max(len(inputs), len(schema.get("output", [])))  # LiteGraph lays inputs and outputs side by side
        height = 60 + 26 * max(len(widgets), 1) + 20 * slots
        if any(opts.get("video_upload") or opts.get("image_upload") for _, _, opts in _inputs(schema)):
            height += UPLOAD_PREVIEW_H  # the page shows the chosen file below the widgets
        rows[col] = row + height + ROW_GAP + NODE_TITLE_H  # the next node's title bar sits above its pos
        ui = {
            "id": ids[nid], "type": node["class_type"], "pos": [40 + col * COLUMN_W, 120 + row],
            "size": [NODE_W, height], "flags": {}, "order": order, "mode": 0, "inputs": inputs,
            "outputs": [{"name": oname, "type": otype, "links": [], "slot_index": k}
                        for k, (otype, oname) in enumerate(zip(schema.get("output", []), schema.get("output_name", schema.get("output", []))))],
            "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets,
        }
        models = [{"name": v, "url": MODEL_SOURCES[v][0], "directory": MODEL_SOURCES[v][1]}
                  for v in node["inputs"].values() if isinstance(v, str) and v in MODEL_SOURCES]
        if models:
            ui["properties"]["models"] = models
        if node.get("_meta", {}).get("title") and node["_meta"]["title"] != schema.get("display_name"):
            ui["title"] = node["_meta"]["title"]
        ui_nodes[nid] = ui
        nodes.append(ui)
    for nid, node in prompt.items():
        for slot, inp in enumerate(ui_nodes[nid]["inputs"]):
            value = node["inputs"].get(inp["name"])
            if isinstance(value, list) and len(value) == 2 and str(value[0]) in prompt:
                src, src_slot = str(value[0]), int(value[1])
                link_id += 1
                inp["link"] = link_id
                ui_nodes[src]["outputs"][src_slot]["links"].append(link_id)
                links.append([link_id, ids[src], src_slot, ids[nid], slot, inp["type"]])
                out_links.setdefault((src, src_slot), []).append(link_id)
    max_x = max(n["pos"][0] + n["size"][0] for n in nodes)
    max_y = max(n["pos"][1] + n["size"][1] for n in nodes)
    note_id = len(nodes) + 1
    note = _note_text(prompt, object_info, title, description)
    nodes.append({"id": note_id, "type": "Note", "pos": [40, max_y + 80], "size": [max_x - 40, max(220, 60 + 12 * _wrapped_lines(note, max_x - 40))], "flags": {},
                  "order": len(nodes), "mode": 0, "inputs": [], "outputs": [], "properties": {},
                  "widgets_values": [note], "title": "How this workflow works",
                  "color": "#432", "bgcolor": "#653"})
    groups = []
    for col in sorted(set(depth.values())):
        members = [ui_nodes[n] for n in prompt if depth[n] == col]
        x0 = min(m["pos"][0] for m in members) - 10
        y0 = min(m["pos"][1] for m in members) - NODE_TITLE_H - 40
        x1 = max(m["pos"][0] + m["size"][0] for m in members) + 10
        y1 = max(m["pos"][1] + m["size"][1] for m in members) + 10
        names = sorted({object_info[prompt[n]["class_type"]].get("category", "").split("/")[-1] or "nodes" for n in prompt if depth[n] == col})
        groups.append({"id": len(groups) + 1, "title": f"Stage {col + 1}: {', '.join(names)}",
                       "bounding": [x0, y0, x1 - x0, y1 - y0], "color": STAGE_COLORS[col % len(STAGE_COLORS)],
                       "font_size": 20, "flags": {}})
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, "temporal_restore/" + (title or "workflow"))),
        "revision": 0, "last_node_id": note_id, "last_link_id": link_id, "nodes": nodes, "links": links,
        "groups": groups, "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [80, 110]}, "temporal_restore": {"title": title}},
        "version": 0.4,
    }


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """Inverse of api_to_ui (what the web page's 'Save (API)' does), enough to check equivalence."""
    links = {l[0]: l for l in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] not in object_info or node.get("mode", 0) != 0:
            continue
        schema = object_info[node["type"]]
        inputs = {}
        values = list(node.get("widgets_values", []))
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        for name, typ, opts in _inputs(schema):
            if is_widget(typ, opts):
                value = values.pop(0) if values else widget_default(typ, opts)
                if opts.get("control_after_generate") or (typ == "INT" and name in ("seed", "noise_seed")):
                    values.pop(0) if values else None
                if opts.get("video_upload") or opts.get("image_upload"):
                    values.pop(0) if values else None
                if name not in linked:
                    inputs[name] = value
            if name in linked:
                l = links[linked[name]]
                inputs[name] = [str(l[1]), l[2]]
        entry = {"class_type": node["type"], "inputs": inputs}
        if node.get("title"):
            entry["_meta"] = {"title": node["title"]}
        prompt[str(node["id"])] = entry
    return prompt


def normalise_api(prompt: dict, object_info: dict) -> dict:
    """API prompt with ids renumbered as api_to_ui numbers them, defaults filled, titles resolved: for comparison."""
    ids = {nid: str(i + 1) for i, nid in enumerate(sorted(prompt, key=lambda k: int(k) if k.isdigit() else k))}
    out = {}
    for nid, node in prompt.items():
        schema = object_info[node["class_type"]]
        inputs = {}
        for name, typ, opts in _inputs(schema):
            if name in node["inputs"]:
                v = node["inputs"][name]
                inputs[name] = [ids[str(v[0])], v[1]] if isinstance(v, list) and len(v) == 2 and str(v[0]) in prompt else v
            elif is_widget(typ, opts):
                inputs[name] = widget_default(typ, opts)
        title = node.get("_meta", {}).get("title")
        entry = {"class_type": node["class_type"], "inputs": inputs}
        if title and title != schema.get("display_name"):
            entry["_meta"] = {"title": title}
        out[ids[nid]] = entry
    return out
