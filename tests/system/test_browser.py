"""The bundled UI workflows in the real web page: headless Debian Chromium, driven over the DevTools protocol,
opens the frontend a real headless ComfyUI serves (comfyui-frontend-package), and for each workflows/<name>.json:

1. drops the file onto the canvas as a user does: a ``drop`` DragEvent carrying a real ``File`` in a
   ``DataTransfer``, handled by the frontend's own document drop handler (``app.handleFile``); no fallback to
   ``app.loadGraphData`` is used;
2. checks that no node type is missing (against ``LiteGraph.registered_node_types``, and no missing-nodes
   dialog or warning toast is shown), that the page loaded exactly the file's nodes, and that nothing was logged
   at error level (console errors, uncaught exceptions, failed requests);
3. presses the Run button, waits for the server's /history to get a successful entry for it, and checks that
   the prompt the frontend built equals workflows/api/<name>.json (with the same clip and steps);
4. saves a screenshot to test-artifacts/browser/<name>.png.

The workflow's "Input video" (LoadVideo) is pointed at a clip uploaded with POST /upload/image: the first 4 frames
(TR_BROWSER_FRAMES) of the bundled samples/sample_clip.mp4 at 64x48, re-encoded with PyAV (a moving gradient if
the sample is absent). Every ``steps`` widget is set to 2 (TR_BROWSER_STEPS) to keep the runs short on a shared
CPU. The file is edited before the drop, as a user would set these before saving the workflow.

Chromium comes from Debian (``apt-get install chromium``, done by the harness if it is missing, as root).
"""
from __future__ import annotations

import copy
import json
import os
import re
import time

import pytest
import requests

from harness import paths
from harness.fixtures import link_models
from media_clips import excerpt_clip
from harness.browser import RETURNING_USER_SETTINGS, Browser, BrowserError, ComfyPage, store_settings
from tr_cli import ui_format, workflows

pytestmark = [pytest.mark.server, pytest.mark.browser]

API = workflows.bundled()
SHOTS = os.path.join(paths.ARTIFACTS, "browser")
# The UI files under test; TR_UI_WORKFLOWS points elsewhere to try freshly generated ones before committing them.
UI_DIR = os.environ.get("TR_UI_WORKFLOWS", os.path.join(paths.REPO, "workflows"))
INPUT_TITLE = "Input video"
RUN_TIMEOUT = float(os.environ.get("TR_BROWSER_RUN_TIMEOUT", "600"))  # seconds for one workflow run

# Messages the page logs whatever workflow is loaded, which no workflow can cause or avoid:
# the frontend asks the public node registry (api.comfy.org) about non-core node types, and the test server runs
# with --disable-api-nodes, whose Content-Security-Policy (connect-src 'self') blocks those requests.
IGNORED_ERRORS = (
    re.compile(r"^log\[security\]: Connecting to 'https://api\.comfy\.org/[^']*' violates the following Content Security Policy"),
)


def page_errors(page) -> list[str]:
    return [e for e in page.errors if not any(p.search(e) for p in IGNORED_ERRORS)]


@pytest.fixture(scope="module")
def clip_name(server, tmp_path_factory):
    """Name of the test clip in the server's input folder (what LoadVideo's combo shows)."""
    from harness.fixtures import SAMPLE_CLIP

    frames = int(os.environ.get("TR_BROWSER_FRAMES", "4"))
    source = SAMPLE_CLIP if os.path.exists(SAMPLE_CLIP) else None
    src = excerpt_clip(str(tmp_path_factory.mktemp("clip") / "tr_browser_clip.mp4"), source, frames)
    name = os.path.basename(src)
    with open(src, "rb") as f:
        r = requests.post(server.url + "/upload/image", files={"image": (name, f, "video/mp4")},
                          data={"overwrite": "true", "type": "input"}, timeout=60)
    assert r.status_code == 200, f"upload of {src} failed: {r.status_code} {r.text[:500]}"
    info = r.json()
    return f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]


@pytest.fixture(scope="module")
def browser():
    try:
        b = Browser().start()
    except BrowserError as e:
        pytest.fail(f"cannot start headless Chromium: {e}")
    yield b
    b.stop()


@pytest.fixture(scope="module")
def object_info(server):
    return server.object_info()


def widget_slots(schema: dict) -> dict[str, int]:
    """Index in a UI node's widgets_values of each widget input (as tr_cli.ui_format lays them out)."""
    slots, i = {}, 0
    for name, typ, opts in ui_format._inputs(schema):
        if ui_format.is_widget(typ, opts):
            slots[name] = i
            i += 1
            if opts.get("control_after_generate") or (typ == "INT" and name in ("seed", "noise_seed")):
                i += 1
            if opts.get("video_upload") or opts.get("image_upload"):
                i += 1
    return slots


# loader title -> (input, key of the tiny model in the `tiny` fixture): what tr_cli's --checkpoint / --controlnet set
MODEL_LOADERS = {"Checkpoint": ("ckpt_name", "checkpoint"), "ControlNet": ("control_net_name", "controlnet")}


def adapt(ui: dict, api: dict, object_info: dict, clip: str, tiny: dict) -> tuple[dict, dict]:
    """The UI and API workflows with the test clip as input, the tiny models in place of the real ones the files
    name (and their download metadata dropped: the user picked a file they have) and ``steps`` cut to
    TR_BROWSER_STEPS (2; empty keeps the file's values), changed alike in both, as a user would set them
    before saving the workflow."""
    ui, api = copy.deepcopy(ui), copy.deepcopy(api)
    for node in ui["nodes"]:
        if node.get("title") in MODEL_LOADERS:
            name, key = MODEL_LOADERS[node["title"]]
            node["widgets_values"][widget_slots(object_info[node["type"]])[name]] = tiny[key]
            node["properties"].pop("models", None)
    for node in api.values():
        if node.get("_meta", {}).get("title") in MODEL_LOADERS:
            name, key = MODEL_LOADERS[node["_meta"]["title"]]
            node["inputs"][name] = tiny[key]
    steps = os.environ.get("TR_BROWSER_STEPS", "2")
    loaders = [n for n in ui["nodes"] if n["type"] == "LoadVideo" and n.get("title") == INPUT_TITLE]
    assert len(loaders) == 1, f"expected one LoadVideo titled {INPUT_TITLE!r} in the UI file, found {len(loaders)}"
    loaders[0]["widgets_values"][widget_slots(object_info["LoadVideo"])["file"]] = clip
    api_loaders = [n for n in api.values() if n["class_type"] == "LoadVideo" and n.get("_meta", {}).get("title") == INPUT_TITLE]
    assert len(api_loaders) == 1, f"expected one LoadVideo titled {INPUT_TITLE!r} in the API file"
    api_loaders[0]["inputs"]["file"] = clip
    if steps:
        for node in ui["nodes"]:
            slot = widget_slots(object_info.get(node["type"], {})).get("steps")
            linked = any(i["name"] == "steps" and i.get("link") is not None for i in node.get("inputs", []))
            if slot is not None and not linked:
                node["widgets_values"][slot] = int(steps)
        for node in api.values():
            if not isinstance(node["inputs"].get("steps", []), list):
                node["inputs"]["steps"] = int(steps)
    return ui, api


def open_comfy(browser, server):
    store_settings(server.url, RETURNING_USER_SETTINGS)
    page = browser.new_page(1600, 1000)
    page.goto(server.url)
    comfy = ComfyPage(page)
    comfy.wait_ready()
    time.sleep(1.5)  # first-start dialogs (template browser) open after the graph is up
    comfy.close_dialogs()
    time.sleep(0.5)
    return page, comfy


def test_chromium_sees_the_frontend(browser, server):
    """The page the server serves is the real frontend, with the pack's nodes registered."""
    page, comfy = open_comfy(browser, server)
    try:
        types = comfy.registered_types()
        assert "KSampler" in types, "the page registered no core nodes: is comfyui-frontend-package serving /?"
        ours = sorted(t for t in types if t.startswith("TR_"))
        assert len(ours) >= 5, f"the page registered only {ours} from the pack"
    finally:
        page.close()


@pytest.mark.parametrize("name", sorted(API))
def test_workflow_in_browser(name, browser, server, clip_name, object_info, tiny_by_family):
    ui_path = os.path.join(UI_DIR, f"{name}.json")
    assert os.path.exists(ui_path), f"{ui_path} missing: run scripts/regen.py"
    tiny = tiny_by_family[workflows.family(workflows.load(name)) or "sd15"]  # the tiny build of its family
    link_models(server.base, tiny)
    workflow, api = adapt(json.load(open(ui_path)), workflows.load(name), object_info, clip_name, tiny)
    want_types = sorted(n["type"] for n in workflow["nodes"])

    page, comfy = open_comfy(browser, server)
    try:
        page.clear_messages()  # what the bare page logs at start is not this workflow's doing

        missing = sorted(set(want_types) - comfy.registered_types())
        loaded = comfy.drop_workflow(workflow, f"{name}.json")
        time.sleep(1.0)  # let dialogs, toasts and previews settle
        dialogs = comfy.dialogs()  # e.g. "This workflow has missing nodes"
        assert not missing, f"{name}: node types unknown to the page: {missing}; dialogs: {[d[:300] for d in dialogs]}"
        assert not dialogs, f"{name}: a dialog opened on load: {[d[:500] for d in dialogs]}"
        assert sorted(loaded["types"]) == want_types, f"{name}: the page loaded {loaded['types']}"
        assert loaded["groups"] == len(workflow.get("groups", [])), f"{name}: groups lost on load: {loaded}"
        bad_toasts = [t for t in comfy.toasts() if t["severity"] in ("p-toast-message-error", "p-toast-message-warn")]
        assert not bad_toasts, f"{name}: warnings shown on load: {bad_toasts}"
        errors = page_errors(page)
        assert not errors, f"{name}: errors while loading:\n" + "\n".join(errors)
        workflow_warnings = [w for w in page.warnings if re.search(r"workflow|zod|invalid|link", w, re.I)]
        assert not workflow_warnings, f"{name}: the frontend warned about the file:\n" + "\n".join(workflow_warnings)

        before = set(server.get("/history"))
        how = comfy.press_run()
        deadline = time.time() + RUN_TIMEOUT
        entry = None
        while time.time() < deadline:
            new = {k: v for k, v in server.get("/history").items() if k not in before}
            done = [v for v in new.values() if v.get("status", {}).get("completed") or
                    v.get("status", {}).get("status_str") in ("success", "error")]
            if done:
                entry = done[0]
                break
            errors = page_errors(page)
            assert not errors, f"{name}: errors after pressing Run ({how}):\n" + "\n".join(errors)
            assert server.alive(), f"{name}: server died:\n{server.log_tail()}"
            time.sleep(0.5)
        assert entry is not None, f"{name}: no finished /history entry {RUN_TIMEOUT} s after pressing Run ({how})"
        status = entry["status"]
        if status.get("status_str") != "success":
            msgs = [m[1] for m in status.get("messages", []) if m[0] == "execution_error"]
            pytest.fail(f"{name}: the run failed: {json.dumps(msgs)[:3000]}")

        sent = entry["prompt"][2]
        want = ui_format.normalise_api(api, object_info)
        got = ui_format.normalise_api(sent, object_info)
        diff = {k: (want.get(k), got.get(k)) for k in set(want) | set(got) if want.get(k) != got.get(k)}
        assert not diff, f"{name}: the page queued a different graph than workflows/api/{name}.json: {diff}"
        assert server.output_files(entry), f"{name}: the run reported no output files"

        time.sleep(1.0)  # output previews load after the run
        errors = page_errors(page)
        assert not errors, f"{name}: errors during the run:\n" + "\n".join(errors)
    finally:
        try:
            page.screenshot(os.path.join(SHOTS, f"{name}.png"))
        except BrowserError:
            pass
        page.close()


@pytest.mark.parametrize("name", sorted(API))
def test_workflow_layout_readable(name, browser, server, clip_name, object_info, tiny):
    """As a person sees the dropped file (with a clip chosen, so the video preview shows): no node drawn over
    another, every stage group's title visible, the note's whole text shown without scrolling."""
    ui_path = os.path.join(UI_DIR, f"{name}.json")
    assert os.path.exists(ui_path), f"{ui_path} missing: run scripts/regen.py"
    workflow, _ = adapt(json.load(open(ui_path)), workflows.load(name), object_info, clip_name, tiny)
    page, comfy = open_comfy(browser, server)
    try:
        comfy.drop_workflow(workflow, f"{name}.json")
        page.wait_for("[...document.querySelectorAll('video')].some(v => v.readyState >= 1)", 30,
                      what="the input clip's preview")
        time.sleep(1.0)  # the node grows to its preview on the next frame
        problems = comfy.layout_problems()
        assert not problems, f"{name}: hard to read as loaded:\n" + "\n".join(problems)
    finally:
        page.close()


def test_every_workflow_has_a_thumbnail():
    """workflows/<name>.jpg beside each bundled workflow (made by scripts/make_thumbnails.py): the template
    browser shows /api/workflow_templates/<pack>/<name>.jpg for a custom node's template <name>.json."""
    assert API, "no bundled API workflows"
    missing = [n for n in API if not os.path.exists(os.path.join(paths.REPO, "workflows", f"{n}.jpg"))]
    assert not missing, f"no thumbnail for {missing}: run scripts/make_thumbnails.py"


def test_template_browser_shows_every_workflow_with_its_picture(browser, server):
    """The frontend's template browser (Templates > Extensions > the pack) lists exactly the bundled workflows,
    each card showing its workflows/<name>.jpg. (The whole page is searched: frontend 1.32 draws the browser in a
    PrimeVue dialog, 1.49 in its own modal.)"""
    from PIL import Image

    listed = server.get("/workflow_templates")
    assert sorted(listed.get(paths.PACK_LINK_NAME, [])) == sorted(API), f"the server lists {listed}"
    widths = {}
    for name in API:
        with Image.open(os.path.join(paths.REPO, "workflows", f"{name}.jpg")) as im:
            widths[name] = im.width
    page, comfy = open_comfy(browser, server)
    try:
        page.evaluate("(async () => { await app.extensionManager.command.execute('Comfy.BrowseTemplates'); })()")
        page.wait_for("[...document.querySelectorAll('body *')].some(e => e.children.length === 0 && "
                      f"(e.innerText || '').trim() === {json.dumps(paths.PACK_LINK_NAME)})", 30,
                      what="the pack's entry in the template browser")
        page.evaluate(f"""(() => {{
            const items = [...document.querySelectorAll('body *')].filter(e => e.children.length === 0 &&
                (e.innerText || '').trim() === {json.dumps(paths.PACK_LINK_NAME)});
            items[items.length - 1].click();
        }})()""")
        names = json.dumps(sorted(API))
        # Cards below the fold are drawn (or load their picture) only once scrolled to: each poll records the cards
        # showing a loaded picture and scrolls the grid on by half a view (back to the top at the end).
        cards_js = f"""(() => {{
            const names = {names}, out = (window.__trCards = window.__trCards || {{}});
            const has = e => (e.innerText || '').split('\\n').map(s => s.trim()).filter(s => names.includes(s));
            for (const img of document.querySelectorAll('img')) {{
                let el = img;
                while (el && has(el).length === 0) el = el.parentElement;
                if (el && has(el).length === 1 && img.complete && img.naturalWidth) out[has(el)[0]] = img.naturalWidth;
            }}
            for (const e of document.querySelectorAll('body *')) {{
                const st = getComputedStyle(e).overflowY;
                if ((st === 'auto' || st === 'scroll') && e.scrollHeight > e.clientHeight + 10 && has(e).length > 1)
                    e.scrollTop = e.scrollTop + e.clientHeight >= e.scrollHeight - 2 ? 0 : e.scrollTop + e.clientHeight / 2;
            }}
            return out;
        }})()"""
        page.wait_for(f"Object.keys({cards_js}).length === {len(API)}", 30, what="a picture on every template card")
        shown = page.evaluate(cards_js)
        assert shown == widths, f"template cards and their pictures' widths {shown}, want {widths}"
    finally:
        try:
            page.screenshot(os.path.join(SHOTS, "template_browser.png"))
        except BrowserError:
            pass
        page.close()


@pytest.mark.parametrize("name", ["diffir2vr_restore", "sdxl_tile_restore"])  # sdxl: a file saved under our name
def test_page_offers_the_models_a_workflow_names(name, browser, server):
    """Dropped as shipped onto a server without the real models, a workflow makes the page name the missing files
    (from the loaders' properties.models) so the user can download them."""
    workflow = json.load(open(os.path.join(UI_DIR, f"{name}.json")))
    wanted = sorted({m["name"] for n in workflow["nodes"] for m in n.get("properties", {}).get("models", [])})
    assert wanted, f"{name}: no loader carries model metadata"
    page, comfy = open_comfy(browser, server)
    try:
        comfy.drop_workflow(workflow, f"{name}.json")
        # Frontend 1.32 opens a "Missing Models" dialog; 1.49 shows an "errors found" toast whose "View details"
        # opens a panel. Either way some element names each file beside a Download button (the node widgets,
        # which newer frontends draw as DOM, carry no such button).
        offered = f"""(() => {{
            for (const b of document.querySelectorAll('button'))
                if (/view details/i.test(b.innerText || '') && !b.dataset.trClicked) {{ b.dataset.trClicked = 1; b.click(); }}
            return [...document.querySelectorAll('body *')].some(e =>
                {json.dumps(wanted)}.every(m => (e.innerText || '').includes(m)) &&
                [...e.querySelectorAll('button, a')].some(b => /download/i.test(b.innerText || b.title || '')));
        }})()"""
        page.wait_for(offered, 30, what=f"the page to offer the missing models {wanted} for download")
    finally:
        try:
            page.screenshot(os.path.join(SHOTS, f"missing_models_{name}.png"))
        except BrowserError:
            pass
        page.close()
