"""ILT chunking: window plans, Eq. 4 blend weights, noise rescheduling (pure), and the chunker node."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from temporal_restore.pipelines import ilt


@settings(max_examples=200, deadline=None)
@given(total=st.integers(1, 60), window=st.integers(1, 12), data=st.data())
def test_plan_covers_every_frame_and_weights_sum_to_one(total, window, data):
    overlap = data.draw(st.integers(0, window - 1))
    wins = ilt.plan_windows(total, window, overlap)
    assert wins[0].start == 0 and wins[-1].end == total
    assert all(len(w) == min(window, total) for w in wins)
    for a, b in zip(wins, wins[1:]):
        assert b.start > a.start and b.start <= a.end  # contiguous, strictly advancing
    weights = ilt.blend_weights(wins, total)
    acc = torch.zeros(total, dtype=torch.float64)
    cover = torch.zeros(total, dtype=torch.long)
    for w, wt in zip(wins, weights):
        assert wt.shape == (len(w),)
        assert bool((wt >= 0).all())
        acc[w.start:w.end] += wt
        cover[w.start:w.end] += 1
    assert torch.allclose(acc, torch.ones(total, dtype=torch.float64), atol=1e-12)
    # frames outside overlaps: exactly one window, weight exactly 1
    for w, wt in zip(wins, weights):
        single = cover[w.start:w.end] == 1
        assert bool((wt[single] == 1).all())


def test_eq4_weights_on_regular_overlap():
    wins = ilt.plan_windows(12, 8, 4)
    assert [(w.start, w.end) for w in wins] == [(0, 8), (4, 12)]
    w0, w1 = ilt.blend_weights(wins, 12)
    p = 4
    alpha = torch.tensor([1 - j / (p - 1) for j in range(p)], dtype=torch.float64)
    assert torch.allclose(w0[4:], alpha)
    assert torch.allclose(w1[:4], 1 - alpha)


def test_length_not_multiple_of_stride_and_short_clip():
    wins = ilt.plan_windows(11, 8, 4)
    assert [(w.start, w.end) for w in wins] == [(0, 8), (3, 11)]
    assert [(w.start, w.end) for w in ilt.plan_windows(5, 8, 4)] == [(0, 5)]
    assert [(w.start, w.end) for w in ilt.plan_windows(8, 8, 4)] == [(0, 8)]
    wt = ilt.blend_weights(ilt.plan_windows(5, 8, 4), 5)
    assert torch.equal(wt[0], torch.ones(5, dtype=torch.float64))


@pytest.mark.parametrize("args,name", [((0, 8, 4), "frames"), ((10, 8, 8), "overlap"), ((10, 4, 9), "overlap"),
                                       ((10, 0, 0), "window"), ((10, 4, -1), "overlap")])
def test_bad_input_names_the_input(args, name):
    with pytest.raises(ValueError, match=name):
        ilt.plan_windows(*args)


def test_blend_of_identical_parts_is_identity_and_eq4_mix():
    T = 13
    wins = ilt.plan_windows(T, 6, 3)
    x = torch.randn(T, 2, 3, 3)
    parts = [x[w.start:w.end] for w in wins]
    assert torch.allclose(ilt.blend(parts, wins), x, atol=1e-6)
    # two different constant parts: overlap frames follow Eq. 4
    wins = ilt.plan_windows(10, 6, 2)
    parts = [torch.full((6, 1), float(i)) for i in range(len(wins))]
    out = ilt.blend(parts, wins).flatten()
    assert out[0] == 0 and out[-1] == len(wins) - 1
    assert torch.all(out[1:] >= out[:-1])


@settings(max_examples=60, deadline=None)
@given(total=st.integers(1, 40), window=st.integers(1, 10), seed=st.integers(0, 2**31), data=st.data())
def test_rescheduled_noise_reuses_base_frames(total, window, seed, data):
    overlap = data.draw(st.integers(0, window - 1))
    n = ilt.reschedule_noise(total, window, overlap, (2, 2), seed=seed)
    assert n.shape == (total, 2, 2)
    base = n[:min(window, total)].reshape(min(window, total), -1)
    for w in ilt.plan_windows(total, window, overlap):
        frames = n[w.start:w.end].reshape(len(w), -1)
        # every window holds the same distinct base noise frames, reordered
        d = torch.cdist(frames, base)
        match = d.argmin(dim=1)
        assert torch.allclose(d.min(dim=1).values, torch.zeros(len(w)), atol=0)
        assert sorted(match.tolist()) == list(range(len(w)))


def test_rescheduled_noise_matches_comfy_prepare_noise_for_one_window():
    shape = (5, 4, 3, 3)
    g = torch.manual_seed(7)
    ref = torch.randn(shape, generator=g)
    assert torch.equal(ilt.reschedule_noise(5, 8, 4, shape[1:], seed=7), ref)
    # overlaps share noise frame for frame
    n = ilt.reschedule_noise(20, 8, 4, (4, 3, 3), seed=7)
    assert torch.equal(n[:8], torch.randn((8, 4, 3, 3), generator=torch.manual_seed(7)))
    assert not torch.equal(n[8:12], n[:4]) or not torch.equal(n[12:16], n[4:8])


def test_plan_boundaries_and_carried():
    plan = ilt.WindowPlan(20, 8, 4)
    assert plan.boundaries() == [6, 10, 14]
    pos, alpha = plan.carried(1)
    assert pos == [0, 1, 2, 3] and torch.allclose(alpha, torch.tensor([1, 2 / 3, 1 / 3, 0], dtype=torch.float64))
    cut = ilt.WindowPlan(20, 8, 4, blend_mode="cut")
    acc = torch.zeros(20, dtype=torch.float64)
    for w, wt in zip(cut.windows, cut.weights):
        acc[w.start:w.end] += wt
    assert torch.equal(acc, torch.ones(20, dtype=torch.float64))
    with pytest.raises(ValueError, match="blend"):
        ilt.WindowPlan(20, 8, 4, blend_mode="nope")
