"""pipelines/ is usable without ComfyUI: every module imports from the repo root with comfy absent."""
import os
import subprocess
import sys

from harness import paths


def test_every_pipeline_module_imports_without_comfy():
    mods = sorted(f[:-3] for f in os.listdir(os.path.join(paths.REPO, "pipelines"))
                  if f.endswith(".py") and f != "__init__.py")
    assert mods
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}:\n"
        "    importlib.import_module('pipelines.' + m)\n"
        "bad = sorted(k for k in sys.modules if k == 'comfy' or k.startswith('comfy.') or k == 'folder_paths')\n"
        "assert not bad, bad\n"
        "print('ok', len(sys.modules))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, "-c", code], cwd=paths.REPO, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("ok")
