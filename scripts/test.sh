#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite, printing the 15 slowest tests. Extra arguments go to pytest.
# --fast (first argument): only the fast tier, -m "not server and not browser and not slow" (run it before every
# commit; CI runs everything). TR_SKIP_SETUP=1 skips the setup step (when the repository is already set up).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${TR_SKIP_SETUP:-}" ]; then
  bash scripts/setup.sh
fi
if [ "${1:-}" = "--fast" ]; then
  shift
  exec .venv/bin/python -m pytest -q --durations=15 -m "not server and not browser and not slow" "$@"
fi
exec .venv/bin/python -m pytest -q --durations=15 "$@"
