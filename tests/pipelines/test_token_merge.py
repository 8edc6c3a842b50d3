"""pipelines/token_merge.py: Eq. 5-8 token merging, (merge, unmerge) closures, chunk isolation."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from temporal_restore.pipelines import token_merge as tm


def _attn(x):
    """Plain single-head self-attention (the stand-in for the UNet's attn1)."""
    return torch.softmax(x @ x.transpose(-1, -2) / math.sqrt(x.shape[-1]), -1) @ x


@settings(max_examples=30, deadline=None)
@given(r=st.floats(0, 1), i_beg=st.integers(0, 10), span=st.integers(1, 20), delta=st.floats(0.25, 4),
       step=st.integers(0, 40))
def test_eq8_matches_formula(r, i_beg, span, delta, step):
    i_end = i_beg + span
    u = delta * (step - i_beg) / (i_end - i_beg)
    expect = r * math.cos(math.pi / 2 * max(min(u, 1), 0))
    assert tm.merge_ratio(step, r, i_beg, i_end, delta) == pytest.approx(expect, abs=1e-9)


def test_eq8_chosen_steps():
    r = 0.8
    assert tm.merge_ratio(0, r, 5, 25) == pytest.approx(0.8)
    assert tm.merge_ratio(5, r, 5, 25) == pytest.approx(0.8)
    assert tm.merge_ratio(15, r, 5, 25) == pytest.approx(0.8 * math.cos(math.pi / 4))
    assert tm.merge_ratio(25, r, 5, 25) == 0.0
    assert tm.merge_ratio(10, r, 5, 25, delta=2.0) == pytest.approx(0.8 * math.cos(math.pi / 4))
    assert tm.merge_ratio(15, r, 5, 25, delta=2.0) == 0.0
    with pytest.raises(ValueError, match="ratio"):
        tm.merge_ratio(0, 1.5, 0, 10)


def test_ratio_zero_is_no_patch():
    x = torch.randn(8, 16, 8)
    assert tm.plan_merge(x, 2, 4, 4, range(4), 0.0) is None


def _frames(F=4, h=6, w=6, C=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(F, h * w, C, generator=g)


@pytest.mark.parametrize("mode", ["cosine", "flow"])
def test_identical_frames_merged_attention_equals_per_frame(mode):
    h = w = 6
    one = _frames(1, h, w)
    x = one.repeat(4, 1, 1)
    zero = torch.zeros(2, h, w)
    flow = (lambda a, b: (zero, torch.zeros(1, h, w), torch.ones(1, h, w))) if mode == "flow" else None
    merge, unmerge = tm.plan_merge(x, 1, h, w, range(4), 1.0, chunk_size=4, mode=mode, flow=flow)
    merged = merge(x)
    assert merged.shape == (1, h * w, 16)  # r = 1: only the keyframe's tokens are left
    out = unmerge(_attn(merged))
    assert torch.allclose(out, _attn(x), atol=1e-5)


def test_merge_shrinks_tokens_and_round_trip_restores_unmerged_tokens():
    h = w = 8
    x = _frames(4, h, w, seed=1)
    merge, unmerge = tm.plan_merge(x, 1, h, w, range(4), 0.75, chunk_size=4, mode="cosine", R=4.0)
    m = merge(x)
    N = h * w
    assert m.shape == (1, N + 3 * N - int(0.75 * 3 * N), 16)
    back = unmerge(m)
    same = (back == x).all(-1)
    # every token either round-trips exactly or was merged: at least the unmerged share is exact
    assert int(same.sum()) >= N + 3 * N - int(0.75 * 3 * N) - N
    # a token that was merged equals the mean of its slot, which includes its keyframe target
    assert back.shape == x.shape


def test_cond_and_uncond_never_mix():
    h = w = 6
    cond = _frames(4, h, w, seed=2)
    unc1 = _frames(4, h, w, seed=3)
    unc2 = _frames(4, h, w, seed=4)
    outs = []
    for unc in (unc1, unc2):
        x = torch.cat([unc, cond])
        merge, unmerge = tm.plan_merge(x, 2, h, w, range(4), 0.5, chunk_size=2, mode="cosine")
        outs.append(unmerge(_attn(merge(x))))
    assert torch.equal(outs[0][4:], outs[1][4:])
    assert not torch.equal(outs[0][:4], outs[1][:4])


def test_cosine_matches_find_shift_within_window():
    h = w = 10
    key = _frames(1, h, w, seed=5)[0]
    src = key.view(h, w, -1).roll(shifts=(1, -2), dims=(0, 1)).reshape(1, h * w, -1)
    index, score = tm.cosine_matches(src, key, h, w, R=8.0)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    expect = ((ys - 1) * w + (xs + 2)).view(-1)
    inner = ((ys >= 1) & (xs < w - 2)).view(-1)
    assert torch.equal(index[0][inner], expect[inner])
    assert torch.allclose(score[0][inner], torch.ones(int(inner.sum())), atol=1e-5)
    # window is bounded: no match further than W tokens in either direction
    W = tm.spatial_window(8.0)
    ty, tx = index[0] // w, index[0] % w
    assert (ty - ys.reshape(-1)).abs().max() <= W and (tx - xs.reshape(-1)).abs().max() <= W


def test_spatial_weight_prefers_near_duplicates():
    """Two equally similar keyframe tokens: Eq. 7 picks the one inside the uniform radius."""
    h, w, C = 1, 9, 4
    key = torch.zeros(h * w, C)
    key[:, 0] = 1.0
    key[2] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    key[7] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    src = torch.zeros(1, h * w, C)
    src[0, :, 2] = 1.0
    src[0, 6] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    index, score = tm.cosine_matches(src, key, h, w, R=2.0)
    assert int(index[0, 6]) == 7 and score[0, 6] == pytest.approx(1.0)


def test_flow_matches_follow_flow_and_confidence():
    h, w = 6, 8
    f = torch.zeros(2, h, w)
    f[0] = 2.0
    idx, sc = tm.flow_matches(f, -f)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    inside = (xs < w - 2).reshape(-1)
    assert torch.equal(idx[inside], (ys * w + xs + 2).reshape(-1)[inside])
    assert torch.allclose(sc[inside], torch.ones(int(inside.sum())))
    assert torch.isinf(sc[~inside]).all()
    bad = -f + torch.tensor([1.0, 0.0]).view(2, 1, 1)  # 1-token fb residual
    _, sc2 = tm.flow_matches(f, bad)
    assert torch.allclose(sc2[inside], torch.full((int(inside.sum()),), math.exp(-1.0)), atol=1e-6)


def test_padding_tokens_are_never_targets():
    h = w = 8
    x = _frames(2, h, w, seed=6)
    valid = tm.valid_token_mask(h, w, 8, 8, pad_bottom=2, pad_right=2)
    assert int(valid.sum()) == 36
    index, score = tm.cosine_matches(x[1:], x[0], h, w, R=4.0, valid=valid)
    ok = torch.isfinite(score[0])
    assert valid[index[0][ok]].all() and not ok[~valid].any()


def test_unequal_chunks_share_one_merged_length():
    h = w = 4
    x = _frames(6, h, w, seed=7)
    plan = tm.plan_merge(x, 1, h, w, range(6), 0.5, chunk_size=4, mode="cosine", keyframe_mode="stride")
    merge, unmerge = plan
    m = merge(x)
    assert m.shape[0] == 2 and unmerge(m).shape == x.shape
    # largest chunk keeps its ratio when the short one can follow, else both shorten to the short one's length
    assert tm.merge_counts([4, 2], 16, 0.75) == [36, 4]
    assert tm.merge_counts([4, 2], 16, 0.5) == [32, 0]
    assert tm.merge_counts([4, 4], 16, 0.5) == [24, 24]


def test_window_uses_absolute_frames_for_chunks():
    groups = tm.frame_groups([6, 7, 8, 9], 4, keyframe_mode="stride")
    assert groups == [(0, [0, 1]), (2, [2, 3])]


@settings(max_examples=12, deadline=None)
@given(h=st.integers(1, 13), w=st.integers(1, 13), R=st.sampled_from([0.0, 1.0, 4.0, 9.0]), seed=st.integers(0, 99),
       pad=st.booleans())
def test_tiled_cosine_matches_equal_reference(h, w, R, seed, pad):
    g = torch.Generator().manual_seed(seed)
    src = torch.randn(2, h * w, 8, generator=g)
    tgt = torch.randn(h * w, 8, generator=g)
    valid = tm.valid_token_mask(h, w, h, w, pad_bottom=1, pad_right=1) if pad and h > 1 and w > 1 else None
    i1, s1 = tm.cosine_matches(src, tgt, h, w, R, valid, tile=4)
    i2, s2 = tm.cosine_matches_reference(src, tgt, h, w, R, valid)
    fin = torch.isfinite(s2)
    assert torch.equal(torch.isfinite(s1), fin)
    assert torch.allclose(s1[fin], s2[fin], atol=1e-5)
    # ties may resolve differently: the target the tiled version chose must itself score the best score
    cos = torch.nn.functional.cosine_similarity(src, tgt[i1], dim=-1)
    p = torch.arange(h * w)
    d2 = ((i1 // w - p // w) ** 2 + (i1 % w - p % w) ** 2).float()
    wgt = torch.exp(-torch.floor(d2 / R)) if R > 0 else (d2 == 0).float()
    assert torch.allclose((cos * wgt)[fin], s2[fin], atol=1e-5)


def test_auto_levels_skip_grids_below_the_token_floor():
    """levels="auto": the top2 layers, minus grids with fewer than AUTO_MIN_TOKENS tokens per frame."""
    floor = tm.AUTO_MIN_TOKENS
    side = int(floor ** 0.5)
    # a 8x8 latent: level 1 (8x8 = 64 tokens) merges, level 2 (4x4 = 16) is skipped; top2 merges both
    assert tm.merge_level(("input", 1), side, side, side, side, "auto")
    assert not tm.merge_level(("input", 4), side // 2, side // 2, side, side, "auto")
    assert tm.merge_level(("input", 4), side // 2, side // 2, side, side, "top2")
    # at SD1.5 sizes (32x32 and 64x64 latents) auto equals top2 on every grid
    for lat in (32, 64):
        for ds in (1, 2, 4, 8):
            for block in (("input", 1), ("middle", 0), ("output", 9)):
                g = lat // ds
                assert tm.merge_level(block, g, g, lat, lat, "auto") == tm.merge_level(block, g, g, lat, lat, "top2")


def test_joint_cost_skips_merging_where_the_merged_attention_costs_more():
    """A merged chunk is one attention sequence: at a high ratio it is cheaper than per-frame attention, at a
    low (annealed) ratio dearer; with max_cost (levels="auto") plan_merge then returns None (no patch)."""
    F, side, C = 8, 8, 8
    N = side * side
    high, low = tm.joint_cost([F], N, 0.75, C), tm.joint_cost([F], N, 0.3, C)
    assert high < tm.AUTO_MAX_COST < 1.0 < low
    # the cost model by hand for r 0.3: 134 of the 7 * 64 source tokens merged, one sequence of 378 tokens
    merged = 2 * 378 ** 2 * C + 4 * 378 * C * C
    assert low == pytest.approx(merged / (F * (2 * N ** 2 * C + 4 * N * C * C)))
    x = torch.randn(F, N, C, generator=torch.Generator().manual_seed(0))
    kw = dict(chunk_size=10, mode="cosine", keyframe_mode="middle", merge_mode="replace")
    assert tm.plan_merge(x, 1, side, side, list(range(F)), 0.3, **kw) is not None
    assert tm.plan_merge(x, 1, side, side, list(range(F)), 0.3, max_cost=tm.AUTO_MAX_COST, **kw) is None
    plan = tm.plan_merge(x, 1, side, side, list(range(F)), 0.75, max_cost=tm.AUTO_MAX_COST, **kw)
    assert plan is not None and plan[0](x).shape[1] < F * N
