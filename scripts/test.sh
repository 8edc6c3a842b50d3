#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite, printing the 15 slowest tests. Extra arguments go to pytest.
# --fast (first argument): only the fast tier, -m "not server and not browser and not slow" (run it before every
# commit; CI runs everything).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
if [ "${1:-}" = "--fast" ]; then
  shift
  exec .venv/bin/python -m pytest -q --durations=15 -m "not server and not browser and not slow" "$@"
fi
exec .venv/bin/python -m pytest -q --durations=15 "$@"
