"""Bundled workflows: UI and API files agree, the node reference (docs/nodes.md) matches the schemas."""
import json
import os

import pytest

from harness import paths
from tr_cli import node_reference, ui_format, workflows

pytestmark = pytest.mark.server

API = workflows.bundled()


@pytest.fixture(scope="module")
def object_info(server):
    return server.object_info()


def test_every_api_workflow_has_a_ui_twin():
    assert API, "no bundled API workflows"
    for name in API:
        assert os.path.exists(os.path.join(paths.REPO, "workflows", f"{name}.json")), f"workflows/{name}.json missing: run scripts/regen.py"


@pytest.mark.parametrize("name", sorted(API))
def test_ui_and_api_agree(name, object_info):
    api = workflows.load(name)
    ui_path = os.path.join(paths.REPO, "workflows", f"{name}.json")
    ui = json.load(open(ui_path))
    want = ui_format.normalise_api(api, object_info)
    got = ui_format.normalise_api(ui_format.ui_to_api(ui, object_info), object_info)
    diff = {k: (want.get(k), got.get(k)) for k in set(want) | set(got) if want.get(k) != got.get(k)}
    assert not diff, f"{name}: UI and API workflows disagree (run scripts/regen.py): {diff}"


@pytest.mark.parametrize("name", sorted(API))
def test_ui_widget_values_match_schemas(name, object_info):
    """Every widget value in the UI file is valid for its schema (a stale combo value or range is a bug)."""
    ui = json.load(open(os.path.join(paths.REPO, "workflows", f"{name}.json")))
    api = ui_format.ui_to_api(ui, object_info)
    for nid, node in api.items():
        schema = object_info[node["class_type"]]
        for iname, typ, opts in ui_format._inputs(schema):
            v = node["inputs"].get(iname)
            if isinstance(v, list) or v is None:
                continue
            if typ == "COMBO" and opts.get("options") and node["class_type"] not in ("LoadVideo", "CheckpointLoaderSimple", "ControlNetLoader"):
                if not any(n in iname for n in ("ckpt", "control_net", "vae_name", "clip_name")):
                    assert v in opts["options"], f"{name}: {node['class_type']}.{iname}={v!r} not in {opts['options']}"
            if typ in ("INT", "FLOAT"):
                assert opts.get("min", v) <= v <= opts.get("max", v), f"{name}: {node['class_type']}.{iname}={v} out of range"


def test_node_reference_is_current(object_info):
    reference = open(os.path.join(paths.REPO, "docs", "nodes.md")).read()
    block = node_reference.current(reference)
    assert block is not None, "docs/nodes.md has no node reference: run scripts/regen.py"
    assert block == node_reference.render(object_info), "docs/nodes.md node reference is stale: run scripts/regen.py"


def test_workflows_folder_holds_only_workflows_and_their_pictures():
    """The template browser lists every JSON in workflows/ as a workflow and looks for <name>.jpg beside it."""
    entries = set(os.listdir(os.path.join(paths.REPO, "workflows")))
    want = {f"{n}.json" for n in API} | {f"{n}.jpg" for n in API} | {"api"}
    assert entries == want, f"unexpected {sorted(entries - want)}, missing {sorted(want - entries)}"


@pytest.mark.parametrize("name", sorted(API))
def test_model_loaders_name_real_files_with_download_metadata(name):
    """Loaders name the files users download; the UI node carries {name, url, directory} for the page."""
    ui = json.load(open(os.path.join(paths.REPO, "workflows", f"{name}.json")))
    for node in ui["nodes"]:
        names = [v for v in node.get("widgets_values", []) if isinstance(v, str) and v.endswith(".safetensors")]
        for v in names:
            assert v in ui_format.MODEL_SOURCES, f"{name}: {node['type']} names {v}, which has no known download"
            url, directory = ui_format.MODEL_SOURCES[v]
            assert {"name": v, "url": url, "directory": directory} in node["properties"].get("models", []), node
            assert url.startswith("https://huggingface.co/")
            if not url.endswith("/" + v):  # a repository file under another name: the user is told to rename it
                meta = json.load(open(os.path.join(paths.REPO, "docs", "workflow_catalog.json")))[name]
                assert url in meta["description"] and f"as {v}" in meta["description"], \
                    f"{name}: {v} downloads as {url.rsplit('/', 1)[1]}; its description must say to save it as {v}"
            assert ui_format.MODEL_FAMILIES.get(v), f"{name}: {v} has no family in ui_format.MODEL_FAMILIES"
