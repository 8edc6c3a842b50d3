#!/usr/bin/env bash
# Set up (idempotent) and restore a video with a bundled workflow through a local headless ComfyUI.
# usage: bash scripts/restore.sh [VIDEO] [tr_cli run options...]
# With no VIDEO it restores the bundled noisy sample clip with the embedded demo model and prints
# before/after metrics against the clean original.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh >&2
if [ $# -eq 0 ]; then
  set -- samples/sample_clip_noisy.mp4 --reference samples/sample_clip.mp4
fi
video="$1"
shift
exec .venv/bin/python -m tr_cli run "$video" "$@"
