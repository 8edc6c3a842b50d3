#!/usr/bin/env bash
# Set up (idempotent) and restore a video with a bundled workflow through a local headless ComfyUI.
# usage: bash scripts/restore.sh [VIDEO] [tr_cli run options...]   (default VIDEO: the bundled sample clip)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh >&2
video="${1:-samples/sample_clip.mp4}"
shift || true
exec .venv/bin/python -m tr_cli run "$video" "$@"
