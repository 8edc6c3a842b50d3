"""scripts/evaluate.py (issue 9 evaluation command), run as a user runs it: every configuration row of every
pipeline on the demo model, a markdown table per task, figures that follow from the clip."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from harness.paths import REPO

pytestmark = pytest.mark.slow
SCRIPT = os.path.join(REPO, "scripts", "evaluate.py")
ROWS = ("input (degraded)", "per-frame", "+DDIM inversion", "+SW-CFA", "TDM full", "TDM w/o task prompt",
        "TDM wrong task prompt", "ZVRD: +SLR attention", "ZVRD: +TC guidance", "ZVRD: +NoiseShare",
        "ZVRD: +early stop 0.9", "DiffIR2VR-Zero: latent warping", "DiffIR2VR-Zero: token merging",
        "DiffIR2VR-Zero: both", "DistilledSampler 4-step, per frame", "D2-VR fast restore")


def _run(*args, timeout=900):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, SCRIPT, "--threads", "1", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def _tables(text, header="Ablation on", keys=1):
    """{task: {row: [figures]}} of the tables whose title starts with ``header`` (``keys`` leading text
    cells form the row key: 1 for the ablation tables, 2 (row, colour fix) for the colour tables)."""
    tables, cur = {}, None
    for line in text.splitlines():
        if line.startswith(("Ablation on", "Colour correction on")):
            cur = tables.setdefault(line.split("task ")[1].split(" ")[0], {}) if line.startswith(header) else None
        elif cur is not None and line.startswith("| ") and not line.startswith("| configuration"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            key = cells[0] if keys == 1 else tuple(cells[:keys])
            cur[key] = [float(c) for c in cells[keys:] if c]
    return tables


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "ablation.md"
    res = _run("--frames", "3", "--steps", "3", "--tasks", "denoise,sr_x4", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    text = out.read_text()
    assert text.strip() in res.stdout  # the file holds what was printed
    return _tables(text)


def test_every_configuration_per_task(tables):
    assert set(tables) == {"denoise", "sr_x4"}
    for task, rows in tables.items():
        for want in ROWS:
            assert any(r.startswith(want) for r in rows), (task, want, list(rows))
        for name, (psnr, ssim, warp, flicker, secs) in rows.items():
            assert all(math.isfinite(x) for x in (psnr, ssim, warp, flicker, secs)), (task, name)
            assert 5 < psnr < 60 and 0 < ssim <= 1 and warp >= 0 and secs >= 0, (task, name)


def test_figures_follow_the_clip(tables):
    d, s = tables["denoise"], tables["sr_x4"]
    # sigma-25 noise is far below bicubic x4 in PSNR and far above it in warping error
    assert d["input (degraded)"][0] < 22 < s["input (degraded)"][0]
    assert d["input (degraded)"][2] > 2 * s["input (degraded)"][2]
    # DDIM inversion keeps the noise deterministic per frame: more consistent than fresh per-frame noise (at
    # these 3 frames x 3 steps the warping error gains less than the ~25% of the 8-frame, 10-step table)
    for row in ("+DDIM inversion", "TDM full"):
        assert d[row][2] < 0.95 * d["per-frame"][2], (row, d[row], d["per-frame"])
        assert d[row][3] < 0.5 * d["per-frame"][3], (row, d[row], d["per-frame"])


def test_bad_arguments_are_named():
    res = _run("--frames", "2", "--steps", "1", "--tasks", "nonsense")
    assert res.returncode != 0 and "--tasks" in res.stderr
    res = _run("--frames", "2", "--steps", "1", "--groups", "tdm,bogus")
    assert res.returncode != 0 and "groups" in res.stderr


def test_issue_targets_tdm_at_denoise_0_7():
    """Issue 9 (TDM Table 4 claims) on the demo model at a stronger inversion (denoise 0.7, nearer TDM's full
    inversion than the workflow's 0.3): TDM full cuts warping error by >= 30% against per-frame sampling with
    PSNR no more than 0.5 dB lower, and the wrong task prompt restores measurably worse."""
    res = _run("--frames", "4", "--steps", "6", "--groups", "tdm", "--tasks", "denoise", "--denoise", "0.7")
    assert res.returncode == 0, res.stderr[-3000:]
    rows = _tables(res.stdout)["denoise"]
    full, per_frame = rows["TDM full"], rows["per-frame"]
    wrong = next(v for k, v in rows.items() if k.startswith("TDM wrong task prompt"))
    assert full[2] <= 0.7 * per_frame[2], (full, per_frame)
    assert full[0] >= per_frame[0] - 0.5, (full, per_frame)
    assert wrong[0] < full[0] - 0.1, (wrong, full)


def test_colour_table_on_held_out_synthetic_clip():
    """Issue 23: --color adds every colour fix of eval_configs.COLOR_FIXES for the named row, measured on a
    held-out synthetic clip; the fixes change the figures, 'no colour fix' repeats the row's own figures."""
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    from eval_configs import COLOR_FIXES

    res = _run("--frames", "3", "--steps", "2", "--tasks", "denoise", "--rows", "TDM full", "--color", "TDM full",
               "--synthetic", "rocket")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "synthetic rocket clip (held out)" in res.stdout
    main, colour = _tables(res.stdout)["denoise"], _tables(res.stdout, "Colour correction on", 2)["denoise"]
    assert set(main) == {"input (degraded)", "TDM full"}
    assert {fix for _, fix in colour} == {"-"} | {label for label, _, _ in COLOR_FIXES}
    none = colour[("TDM full", "no colour fix")]
    assert none[:2] == pytest.approx(main["TDM full"][:2], abs=0.01)
    for (row, fix), figures in colour.items():
        psnr, ssim, de, cf = figures[:4]
        assert all(math.isfinite(x) for x in (psnr, ssim, de, cf)) and de >= 0 and cf >= 0, (row, fix)
        if fix not in ("-", "no colour fix"):
            assert (psnr, de) != (none[0], none[2]), fix
    res = _run("--frames", "2", "--steps", "1", "--synthetic", "coffee")
    assert res.returncode != 0 and "--synthetic" in res.stderr
