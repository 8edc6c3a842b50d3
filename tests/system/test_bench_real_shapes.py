"""bench/bench_real_shapes.py --quick: the real-shapes benchmark runs end to end on the tiny model and
prints its table (pack and stock run through a real in-process ComfyUI in fresh subprocesses)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_quick_run_prints_table():
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", "bench_real_shapes.py"), "--quick",
                           "--workflows", "tdm,diffir2vr"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| workflow | size | whole prompt")
    body = {r.split("|")[1].strip(): r for r in rows[1:]}
    assert set(body) == {"tdm", "diffir2vr"}
    for row in body.values():
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert cells[1] == "64" and cells[2].endswith("x") and cells[3].endswith("x")
        evals = [int(v) for v in cells[4].split("/")]
        assert evals[0] > 0 and evals[0] == evals[1]  # same UNet frame-evaluations on both sides
