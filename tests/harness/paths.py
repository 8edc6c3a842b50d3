"""Where the host ComfyUI and the test workspace live."""
import os

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(TESTS)
COMFY_DIR = os.environ.get("TR_COMFY_DIR", os.path.join(REPO, ".host", "ComfyUI"))
WORK = os.environ.get("TR_TEST_WORK", os.path.join(REPO, ".host", "test-work"))
ARTIFACTS = os.environ.get("TR_TEST_ARTIFACTS", os.path.join(REPO, "test-artifacts"))
TEST_NODES = os.path.join(TESTS, "comfy_test_nodes")
PACK_LINK_NAME = "temporal_restore"


def base_dir(name: str) -> str:
    """A ComfyUI base directory (models/, custom_nodes/, input/, output/) for one harness."""
    d = os.path.join(WORK, name)
    for sub in ("custom_nodes", "input", "output", "temp", "user", "models/checkpoints", "models/controlnet"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    links = {PACK_LINK_NAME: REPO}
    for entry in os.listdir(TEST_NODES):
        links[entry] = os.path.join(TEST_NODES, entry)
    for link, target in links.items():
        path = os.path.join(d, "custom_nodes", link)
        if os.path.islink(path) and os.readlink(path) == target:
            continue
        if os.path.lexists(path):
            os.remove(path)
        os.symlink(target, path)
    return d
