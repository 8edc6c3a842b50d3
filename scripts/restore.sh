#!/usr/bin/env bash
# Set up (idempotent) and restore a video with a bundled workflow through a local headless ComfyUI.
# usage: bash scripts/restore.sh [VIDEO] [tr_cli run options...]
# Relative paths (VIDEO, -o, --reference, --models-dir, a workflow file) are taken from the folder you
# run it in, like any command; the default output is ./out/<name>_restored.mp4 there.
# With no VIDEO it restores the bundled noisy sample clip with the embedded demo model and prints
# before/after metrics against the clean original.
# TR_SKIP_SETUP=1 skips the setup step (when the repository is already set up).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${TR_SKIP_SETUP:-}" ]; then
  (cd "$repo" && bash scripts/setup.sh >&2)
fi
if [ $# -eq 0 ]; then
  set -- "$repo/samples/sample_clip_noisy.mp4" --reference "$repo/samples/sample_clip.mp4"
fi
# the runner never imports ComfyUI, so the repository on its path shadows nothing
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" exec "$repo/.venv/bin/python" -m tr_cli run "$@"
