"""Property fuzzing of the pure algorithms in pipelines/ (reliability issue, item 5).

For random small shapes, windows, ratios and flows: no exception other than the documented ValueError,
no NaN or Inf from finite input, shapes preserved, and the documented invariants (identities, partitions
of unity, coverage) hold.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from temporal_restore.pipelines import ddim_inversion, degrade, distilled, early_stop, ilt, latent_warp, metrics
from temporal_restore.pipelines import noise_share, recurrent_align, sw_cfa
from temporal_restore.pipelines import flow as flowlib
from temporal_restore.pipelines import token_merge as tm

FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_flow(n, h, w, scale, seed) -> torch.Tensor:
    return torch.randn(n, 2, h, w, generator=gen(seed)) * scale


def flow_field(frames: int, h: int, w: int, scale: float, seed: int, keyframes=None) -> flowlib.FlowField:
    """A consistent FlowField: backward flows from the forward ones, fb_check occlusions, confidences."""
    n = frames - 1
    fwd = rand_flow(n, h, w, scale, seed)
    bwd = -flowlib.warp(fwd, fwd) if n else fwd.clone()
    kw = {}
    if n:
        occ_f, occ_b = flowlib.fb_check(fwd, bwd), flowlib.fb_check(bwd, fwd)
        conf_f, conf_b = flowlib.fb_confidence(fwd, bwd), flowlib.fb_confidence(bwd, fwd)
    else:
        occ_f = occ_b = conf_f = conf_b = torch.zeros(0, 1, h, w)
    if keyframes:
        k = len(keyframes) - 1
        kf = rand_flow(k, h, w, scale, seed + 1)
        kb = -kf
        z = torch.zeros(k, 1, h, w)
        kw = dict(keyframes=keyframes, key_forward=kf, key_backward=kb, key_occlusion_fwd=z, key_occlusion_bwd=z,
                  key_confidence_fwd=z + 1, key_confidence_bwd=z + 1)
    return flowlib.FlowField(forward=fwd, backward=bwd, occlusion_fwd=occ_f, occlusion_bwd=occ_b,
                             confidence_fwd=conf_f, confidence_bwd=conf_b, height=h, width=w, **kw)


sizes = st.integers(1, 9)
frames_st = st.integers(1, 7)
seeds = st.integers(0, 2**16)
flow_scale = st.sampled_from([0.0, 0.5, 2.0, 10.0, 1e4])


# == sw_cfa ===================================================================================================
@FUZZ
@given(chunks=st.integers(1, 3), frames=frames_st, tokens=st.integers(1, 6), heads=st.sampled_from([1, 2]),
       radius=st.integers(0, 9), mode=st.sampled_from(sw_cfa.MODES), shuffled=st.booleans(), seed=seeds)
def test_sw_cfa_shapes_finite_and_never_mixes_chunks(chunks, frames, tokens, heads, radius, mode, shuffled, seed):
    g = gen(seed)
    c = heads * 4
    q, k, v = (torch.randn(chunks * frames, tokens, c, generator=g) for _ in range(3))
    index = torch.randperm(frames, generator=g).tolist() if shuffled else None
    out = sw_cfa.sw_cfa_attention(q, k, v, heads, chunks, mode, radius, index)
    assert out.shape == q.shape and finite(out)
    # chunks never mix: changing chunk 0's k/v leaves the other chunks' outputs unchanged
    k2, v2 = k.clone(), v.clone()
    k2[:frames] += 5.0
    v2[:frames] -= 3.0
    out2 = sw_cfa.sw_cfa_attention(q, k2, v2, heads, chunks, mode, radius, index)
    assert torch.allclose(out[frames:], out2[frames:], atol=1e-5)
    if mode == "self" or radius == 0 and mode == "sw_cfa" or frames == 1:
        assert torch.allclose(out, sw_cfa.sdpa_attention(q, k, v, heads), atol=1e-5)


@FUZZ
@given(frames=frames_st, radius=st.integers(0, 9), seed=seeds)
def test_sw_cfa_window_mean_is_a_mean(frames, radius, seed):
    x = torch.randn(frames, 3, 2, generator=gen(seed))
    m = sw_cfa.window_mean(x, 1, radius)
    assert m.shape == x.shape and finite(m)
    # every output lies within the min/max of the input frames (a convex combination)
    assert bool((m <= x.amax(0) + 1e-5).all()) and bool((m >= x.amin(0) - 1e-5).all())
    # identical frames: any window gives the same frames back
    same = x[:1].expand_as(x).contiguous()
    assert torch.allclose(sw_cfa.window_mean(same, 1, radius), same, atol=1e-6)


@FUZZ
@given(batch=st.integers(1, 7), chunks=st.integers(1, 4), radius=st.integers(-3, 3),
       mode=st.sampled_from(list(sw_cfa.MODES) + ["bogus"]), n_index=st.integers(0, 8))
def test_sw_cfa_bad_arguments_raise_value_error(batch, chunks, radius, mode, n_index):
    x = torch.zeros(batch, 2, 4)
    frames = batch // chunks if batch % chunks == 0 else None
    index = list(range(n_index))
    ok = (frames is not None and mode in sw_cfa.MODES and (radius >= 0 or mode != "sw_cfa")
          and n_index == frames)
    try:
        out = sw_cfa.sw_cfa_attention(x, x, x, 1, chunks, mode, radius, index)
    except ValueError:
        assert not ok
        return
    assert out.shape == x.shape and finite(out)


# == flow: warp / fb_check / resize / FlowField ===============================================================
@FUZZ
@given(n=st.integers(1, 3), c=st.integers(1, 3), h=sizes, w=sizes, scale=flow_scale,
       pad=st.sampled_from(["border", "zeros"]), seed=seeds)
def test_warp_shapes_finite_and_zero_flow_identity(n, c, h, w, scale, pad, seed):
    x = torch.randn(n, c, h, w, generator=gen(seed))
    f = rand_flow(n, h, w, scale, seed + 1)
    out = flowlib.warp(x, f, padding_mode=pad)
    assert out.shape == x.shape and finite(out)
    if pad == "border":  # bilinear with border clamping never leaves the input's range
        assert bool((out <= x.amax() + 1e-5).all()) and bool((out >= x.amin() - 1e-5).all())
    assert torch.allclose(flowlib.warp(x, torch.zeros(n, 2, h, w), padding_mode=pad), x, atol=1e-5)


@FUZZ
@given(h=sizes, w=sizes, dx=st.integers(-3, 3), dy=st.integers(-3, 3), seed=seeds)
def test_warp_integer_shift_is_a_roll_away_from_borders(h, w, dx, dy, seed):
    x = torch.randn(1, 2, h, w, generator=gen(seed))
    f = torch.zeros(1, 2, h, w)
    f[:, 0], f[:, 1] = dx, dy
    out = flowlib.warp(x, f)
    ys = slice(max(0, -dy), min(h, h - dy))
    xs = slice(max(0, -dx), min(w, w - dx))
    assume(ys.start < ys.stop and xs.start < xs.stop)
    want = torch.roll(x, shifts=(-dy, -dx), dims=(2, 3))
    assert torch.allclose(out[..., ys, xs], want[..., ys, xs], atol=1e-5)


@FUZZ
@given(n=st.integers(1, 3), h=sizes, w=sizes, scale=flow_scale, seed=seeds)
def test_fb_check_binary_and_consistent_pairs_pass(n, h, w, scale, seed):
    fwd = rand_flow(n, h, w, scale, seed)
    bwd = rand_flow(n, h, w, scale, seed + 7)
    occ = flowlib.fb_check(fwd, bwd)
    assert occ.shape == (n, 1, h, w) and finite(occ)
    assert bool(((occ == 0) | (occ == 1)).all())
    conf = flowlib.fb_confidence(fwd, bwd)
    assert conf.shape == (n, 1, h, w) and bool(((conf >= 0) & (conf <= 1)).all())
    # zero flow both ways: consistent everywhere, nothing leaves the frame
    z = torch.zeros(n, 2, h, w)
    assert float(flowlib.fb_check(z, z).sum()) == 0.0
    # a constant shift and its inverse: only pixels leaving the frame are flagged
    s = torch.zeros(n, 2, h, w)
    s[:, 0] = 1.0
    occ_s = flowlib.fb_check(s, -s)
    assert torch.equal(occ_s, flowlib.out_of_frame(s))


@FUZZ
@given(n=st.integers(1, 3), h=sizes, w=sizes, h2=sizes, w2=sizes, scale=flow_scale, seed=seeds)
def test_resize_flow_shapes_finite_and_constant_flow_scaled(n, h, w, h2, w2, scale, seed):
    f = rand_flow(n, h, w, scale, seed)
    r = flowlib.resize_flow(f, h2, w2)
    assert r.shape == (n, 2, h2, w2) and finite(r)
    c = torch.zeros(n, 2, h, w)
    c[:, 0], c[:, 1] = 3.0, -2.0
    rc = flowlib.resize_flow(c, h2, w2)
    assert torch.allclose(rc[:, 0], torch.full_like(rc[:, 0], 3.0 * w2 / w), atol=1e-4)
    assert torch.allclose(rc[:, 1], torch.full_like(rc[:, 1], -2.0 * h2 / h), atol=1e-4)


@FUZZ
@given(frames=st.integers(1, 6), h=sizes, w=sizes, h2=sizes, w2=sizes, scale=flow_scale, seed=seeds,
       stride=st.integers(0, 3))
def test_flowfield_resized_between_select(frames, h, w, h2, w2, scale, seed, stride):
    keys = flowlib.keyframe_indices(frames, stride) if stride else None
    if keys is not None and len(keys) < 2:
        keys = None
    ff = flow_field(frames, h, w, scale, seed, keys)
    r = ff.resized(h2, w2)
    assert (r.height, r.width, r.num_frames) == (h2, w2, frames)
    for name, t in r._tensors().items():
        if t is not None:
            assert t.shape[-2:] == (h2, w2) and finite(t), name
    assert bool(((r.occlusion_fwd == 0) | (r.occlusion_fwd == 1)).all())
    assert bool(((r.confidence_fwd >= 0) & (r.confidence_fwd <= 1)).all())
    g = gen(seed)
    a, b = (int(torch.randint(frames, (1,), generator=g)) for _ in range(2))
    f_ab, occ, conf = r.between(a, b)
    assert f_ab.shape == (2, h2, w2) and occ.shape == conf.shape == (1, h2, w2)
    assert finite(f_ab) and finite(occ) and finite(conf)
    if a == b:
        assert float(f_ab.abs().sum()) == 0.0
    sub = sorted({a, b})
    s = r.select(sub)
    assert s.num_frames == len(sub)
    with pytest.raises(ValueError):
        r.between(frames, 0)
    with pytest.raises(ValueError):
        ff.resized(0, w2)


# == token merge ==============================================================================================
@FUZZ
@given(chunks=st.integers(1, 2), frames=st.integers(1, 6), h=st.integers(1, 6), w=st.integers(1, 6),
       ratio=st.floats(0.0, 1.0), chunk_size=st.integers(1, 5), mode=st.sampled_from(tm.MATCH_MODES),
       keyframe_mode=st.sampled_from(["random", "stride", "middle"]), R=st.sampled_from([0.0, 1.0, 4.0, 9.0]),
       offset=st.integers(0, 5), scale=flow_scale, seed=seeds)
def test_token_merge_roundtrip(chunks, frames, h, w, ratio, chunk_size, mode, keyframe_mode, R, offset, scale, seed):
    n = h * w
    x = torch.randn(chunks * frames, n, 8, generator=gen(seed))
    idx = list(range(offset, offset + frames))
    ff = flow_field(offset + frames, h, w, scale, seed)
    plan = tm.plan_merge(x, chunks, h, w, idx, ratio, chunk_size=chunk_size, mode=mode,
                         flow=ff.between if mode == "flow" else None, R=R, keyframe_mode=keyframe_mode, seed=seed)
    if plan is None:  # documented: ratio 0 or no chunk of two frames -> no patch
        assert ratio <= 0 or all(len(g[1]) < 2 for g in tm.frame_groups(idx, chunk_size, keyframe_mode, seed))
        return
    merge, unmerge = plan
    m = merge(x)
    assert m.ndim == 3 and m.shape[-1] == 8 and finite(m)
    assert m.shape[0] * m.shape[1] <= x.shape[0] * n
    u = unmerge(m)
    assert u.shape == x.shape and finite(u)
    # unmerge(merge(.)) is idempotent: merging an unmerged tensor gives the same merged tokens back
    assert torch.allclose(merge(u), m, atol=1e-5)
    # identical frames: merging only averages identical tokens in flow mode with zero flow,
    # and unmerge(merge(x)) == x for every merged token whose source equals its target
    if ratio == 0:
        assert torch.equal(u, x)


@FUZZ
@given(frames=st.integers(2, 6), h=st.integers(1, 5), w=st.integers(1, 5), ratio=st.floats(0.0, 1.0),
       chunk_size=st.integers(2, 6), seed=seeds)
def test_token_merge_identical_frames_unmerge_exactly(frames, h, w, ratio, chunk_size, seed):
    """Identical frames + zero flow: every merged token averages copies of itself, so unmerge(merge(x)) == x."""
    n = h * w
    one = torch.randn(1, n, 8, generator=gen(seed))
    x = one.expand(frames, n, 8).contiguous()
    ff = flow_field(frames, h, w, 0.0, seed)
    plan = tm.plan_merge(x, 1, h, w, list(range(frames)), ratio, chunk_size=chunk_size, mode="flow",
                         flow=ff.between, keyframe_mode="stride")
    if plan is None:
        assert ratio == 0
        return
    merge, unmerge = plan
    assert torch.allclose(unmerge(merge(x)), x, atol=1e-5)


@FUZZ
@given(step=st.floats(-5, 50), r=st.floats(-0.5, 1.5), i_beg=st.floats(0, 30), i_end=st.floats(0, 30),
       delta=st.floats(-1, 5))
def test_token_merge_ratio_schedule(step, r, i_beg, i_end, delta):
    try:
        v = tm.merge_ratio(step, r, i_beg, i_end, delta)
    except ValueError:
        assert not (0 <= r <= 1) or delta <= 0
        return
    assert 0.0 <= v <= r + 1e-12 and math.isfinite(v)


@FUZZ
@given(sizes_=st.lists(st.integers(1, 6), min_size=1, max_size=5), n=st.integers(1, 20), ratio=st.floats(0, 1))
def test_token_merge_counts_equal_lengths(sizes_, n, ratio):
    counts = tm.merge_counts(sizes_, n, ratio)
    lengths = {f * n - m for f, m in zip(sizes_, counts)}
    assert len(lengths) == 1
    assert all(0 <= m <= (f - 1) * n for f, m in zip(sizes_, counts))


# == latent warp ==============================================================================================
@FUZZ
@given(frames=st.integers(1, 7), offset=st.integers(0, 4), c=st.integers(1, 4), h=sizes, w=sizes,
       batch_size=st.integers(1, 8), mode=st.sampled_from(latent_warp.KEYFRAME_MODES), strength=st.floats(0, 1),
       scale=flow_scale, seed=seeds)
def test_latent_warp_shapes_finite_and_zero_strength_identity(frames, offset, c, h, w, batch_size, mode, strength,
                                                              scale, seed):
    x0 = torch.randn(frames, c, h, w, generator=gen(seed))
    idx = list(range(offset, offset + frames))
    ff = flow_field(offset + frames, h, w, scale, seed)
    out = latent_warp.hierarchical_warp(x0, ff, idx, batch_size=batch_size, keyframe_mode=mode, seed=seed,
                                        strength=strength)
    assert out.shape == x0.shape and finite(out)
    assert out is not x0
    if strength == 0 or frames == 1:
        assert torch.equal(out, x0)
    # identical frames, zero flow: warping changes nothing
    same = x0[:1].expand_as(x0).contiguous()
    ff0 = flow_field(offset + frames, h, w, 0.0, seed)
    got = latent_warp.hierarchical_warp(same, ff0, idx, batch_size=batch_size, keyframe_mode=mode, seed=seed,
                                        strength=strength)
    assert torch.allclose(got, same, atol=1e-5)


@FUZZ
@given(frames=st.integers(1, 6), flow_frames=st.integers(1, 6), h=sizes, w=sizes, fh=sizes, strength=st.floats(-1, 2))
def test_latent_warp_mismatches_raise_value_error(frames, flow_frames, h, w, fh, strength):
    x0 = torch.zeros(frames, 2, h, w)
    ff = flow_field(flow_frames, fh, w, 1.0, 0)
    ok = flow_frames >= frames and fh == h and 0 <= strength <= 1
    try:
        out = latent_warp.hierarchical_warp(x0, ff, list(range(frames)), strength=strength)
    except ValueError:
        assert not ok
        return
    assert ok and out.shape == x0.shape


@FUZZ
@given(frames=st.lists(st.integers(0, 40), min_size=1, max_size=10, unique=True), batch_size=st.integers(1, 9),
       mode=st.sampled_from(latent_warp.KEYFRAME_MODES), seed=seeds)
def test_latent_warp_keyframes_one_per_batch_and_present(frames, batch_size, mode, seed):
    keys = latent_warp.choose_keyframes(frames, batch_size, mode, seed)
    assert set(keys) == {f // batch_size for f in frames}
    assert all(k in frames and k // batch_size == b for b, k in keys.items())


@FUZZ
@given(n_steps=st.integers(1, 50), fraction=st.floats(0, 1), sigma=st.floats(0, 20))
def test_latent_warp_step_index_in_range(n_steps, fraction, sigma):
    sched = torch.linspace(14.6, 0.0, n_steps + 1)
    i, n = latent_warp.step_index(sigma, sched)
    assert n == n_steps and 0 <= i < n_steps
    assert latent_warp.active(0, n_steps, fraction) == (fraction > 0)


# == ILT window plans and blend weights =======================================================================
@FUZZ
@given(total=st.integers(-1, 40), window=st.integers(-1, 12), overlap=st.integers(-1, 12),
       blend_mode=st.sampled_from(["ilt", "cut"]))
def test_ilt_plan_covers_every_frame_and_weights_sum_to_one(total, window, overlap, blend_mode):
    ok = total >= 1 and window >= 1 and 0 <= overlap < window
    try:
        plan = ilt.WindowPlan(total, window, overlap, blend_mode)
    except ValueError:
        assert not ok
        return
    assert ok
    cover = torch.zeros(total, dtype=torch.float64)
    for w, wt in zip(plan.windows, plan.weights):
        assert 0 <= w.start < w.end <= total and len(w) == min(window, total)
        assert wt.shape == (len(w),) and finite(wt) and bool((wt >= 0).all())
        cover[w.start:w.end] += wt
    assert torch.allclose(cover, torch.ones(total, dtype=torch.float64), atol=1e-9)
    assert plan.windows[0].start == 0 and plan.windows[-1].end == total
    for prev, cur in zip(plan.windows, plan.windows[1:]):
        assert prev.start < cur.start <= prev.end  # ordered, no gaps
    b = plan.boundaries()
    assert all(1 <= x <= total - 1 for x in b) and b == sorted(b)
    for i in range(len(plan)):
        pos, alpha = plan.carried(i)
        assert len(pos) == alpha.numel() and bool(((alpha >= 0) & (alpha <= 1)).all())


@FUZZ
@given(total=st.integers(1, 20), window=st.integers(1, 8), overlap=st.integers(0, 7), seed=seeds)
def test_ilt_blend_of_identical_parts_is_identity_and_noise_finite(total, window, overlap, seed):
    assume(overlap < window)
    wins = ilt.plan_windows(total, window, overlap)
    clip = torch.randn(total, 2, 3, generator=gen(seed))
    out = ilt.blend([clip[w.start:w.end] for w in wins], wins, total=total)
    assert out.shape == clip.shape and torch.allclose(out, clip, atol=1e-5)
    noise = ilt.reschedule_noise(total, window, overlap, (2, 3), seed=seed)
    assert noise.shape == (total, 2, 3) and finite(noise)
    # every window gets the base noise frames, reordered (FreeNoise): same multiset of frames per window
    base = noise[wins[0].start:wins[0].end]
    for w in wins[1:]:
        cur = noise[w.start:w.end]
        assert sorted(cur.flatten(1).sum(1).tolist()) == pytest.approx(sorted(base.flatten(1).sum(1).tolist()))


# == noise share ==============================================================================================
@FUZZ
@given(frames=st.integers(1, 6), c=st.integers(1, 4), h=sizes, w=sizes, lam=st.floats(0, 1), vp=st.booleans(),
       scale=flow_scale, seed=seeds)
def test_noise_blend_shapes_finite_and_lambda_one_identity(frames, c, h, w, lam, vp, scale, seed):
    z = torch.randn(frames, c, h, w, generator=gen(seed))
    ff = flow_field(frames, max(1, h + 1), max(1, w - 1), scale, seed)  # any grid: resized inside
    out = noise_share.blend_noise(z, ff, lam, vp)
    assert out.shape == z.shape and finite(out)
    assert torch.equal(out[0], z[0])
    if lam == 1.0:
        assert torch.allclose(out, z, atol=1e-6)
    ns = noise_share.NoiseShare(seed, ff, lam, vp)
    init = ns.initial((frames, c, h, w))
    assert init.shape == (frames, c, h, w) and finite(init)
    step = ns.step_sampler(init)(None, None)
    assert step.shape == init.shape and finite(step)
    with pytest.raises(ValueError):
        noise_share.blend_noise(z, flow_field(frames + 1, h, w, scale, seed), lam) if frames > 1 else \
            noise_share.blend_noise(z, ff, lam + 1.5)


@FEW
@given(lam=st.floats(0, 1), seed=seeds)
def test_noise_blend_keeps_unit_variance(lam, seed):
    """Independent frames blended along a random flow keep unit variance (variance-preserving mode)."""
    z = torch.randn(2, 4, 32, 32, generator=gen(seed))
    ff = flow_field(2, 32, 32, 3.0, seed)
    out = noise_share.blend_noise(z, ff, lam, True)
    assert abs(float(out[1].std()) - 1.0) < 0.12


# == distilled schedules ======================================================================================
@FUZZ
@given(schedule=st.sampled_from(list(distilled.SCHEDULES) + ["bogus"]), steps=st.integers(-2, 12),
       denoise=st.one_of(st.floats(-0.5, 1.5), st.just(math.nan)), original_steps=st.integers(0, 60))
def test_distilled_schedules_descending_in_range_or_value_error(schedule, steps, denoise, original_steps):
    try:
        ts = distilled.distilled_timesteps(schedule, steps, denoise, 1000, original_steps)
    except ValueError:
        return
    assert schedule in distilled.SCHEDULES and 1 <= steps <= distilled.MAX_STEPS and 0 < denoise <= 1
    assert len(ts) == steps
    assert all(0 <= t <= 999 for t in ts) and ts == sorted(ts, reverse=True) and len(set(ts)) == len(ts)
    sig = distilled.sigmas_for_timesteps(ts)
    assert sig.shape == (steps + 1,) and finite(sig) and float(sig[-1]) == 0.0
    assert bool((sig[:-1] > 0).all()) and bool((sig[:-1] >= sig[1:]).all())


# == metrics ==================================================================================================
clips = st.tuples(st.integers(1, 4), st.integers(3, 12), st.integers(3, 12))


@FUZZ
@given(shape=clips, seed=seeds, noise=st.floats(0, 0.5))
def test_metrics_finite_and_bounded(shape, seed, noise):
    t, h, w = shape
    g = gen(seed)
    ref = torch.rand(t, h, w, 3, generator=g)
    res = (ref + noise * torch.randn(t, h, w, 3, generator=g)).clamp(0, 1)
    p = metrics.psnr_per_frame(res, ref)
    assert p.shape == (t,) and not bool(torch.isnan(p).any())
    s = metrics.ssim_per_frame(res, ref)
    assert s.shape == (t,) and finite(s) and bool((s <= 1 + 1e-9).all()) and bool((s >= -1 - 1e-9).all())
    assert metrics.psnr(ref, ref) == math.inf
    assert metrics.ssim(ref, ref) == pytest.approx(1.0, abs=1e-9)
    f = metrics.flicker_per_pair(res)
    assert f.shape == (max(t - 1, 0),) and finite(f) and bool((f >= 0).all())
    fl = metrics.flicker_per_pair(res, "lowpass")
    assert fl.shape == f.shape and finite(fl)
    zero = torch.zeros(max(t - 1, 0), 2, h, w)
    we = metrics.warping_error_per_pair(res, zero)
    assert we.shape == (max(t - 1, 0),) and finite(we) and bool((we >= 0).all() and (we <= 1).all())
    m = metrics.video_metrics(res, reference=ref, flow=zero if t > 1 else None)
    assert m["frames"] == t and (m["height"], m["width"]) == (h, w)
    metrics.metrics_to_json(m)  # strict JSON, never raises on inf / nan


@FUZZ
@given(shape=clips, other=clips, seed=seeds)
def test_metrics_shape_mismatch_is_value_error_naming_input(shape, other, seed):
    assume(shape != other)
    a = torch.rand(*shape, 3, generator=gen(seed))
    b = torch.rand(*other, 3, generator=gen(seed + 1))
    with pytest.raises(ValueError, match="reference"):
        metrics.video_metrics(a, reference=b)
    t, h, w = shape
    if t > 1:
        with pytest.raises(ValueError, match="flow"):
            metrics.warping_error_per_pair(a, torch.zeros(t, 2, h, w))


@FUZZ
@given(shape=clips, bounds=st.lists(st.integers(-2, 14), min_size=0, max_size=4), seed=seeds)
def test_metrics_seam_ratio_value_error_or_nonnegative(shape, bounds, seed):
    x = torch.rand(*shape, 3, generator=gen(seed))
    t = shape[0]
    b = sorted(set(bounds))
    ok = bool(b) and b[0] >= 1 and b[-1] <= t - 1 and len(b) < t - 1
    try:
        r = metrics.seam_ratio(x, bounds)
    except ValueError:
        assert not ok
        return
    assert ok and (r >= 0 and not math.isnan(r))


# == flow estimation, degradations and metrics on tiny / odd frames ==========================================
@FEW
@given(t=st.integers(1, 3), h=st.integers(1, 20), w=st.integers(1, 20), stride=st.integers(0, 2),
       preset=st.sampled_from(flowlib.DIS_PRESETS), grid=st.sampled_from([None, (1, 1), (3, 2)]), seed=seeds)
def test_dis_estimate_flow_any_frame_size(t, h, w, stride, preset, grid, seed):
    """OpenCV DIS on frames down to 1x1 pixels: a FlowField of the right shape, finite, or a ValueError."""
    frames = torch.rand(t, h, w, 3, generator=gen(seed))
    try:
        ff = flowlib.estimate_flow(frames, keyframes=flowlib.keyframe_indices(t, stride), preset=preset,
                                   out_size=grid)
    except ValueError:
        assert min(h, w) < 8, "a documented ValueError is only acceptable for frames too small to estimate"
        return
    gh, gw = (h, w) if grid is None else grid
    assert (ff.num_frames, ff.height, ff.width) == (t, gh, gw)
    for name, v in ff._tensors().items():
        if v is not None:
            assert finite(v), name


@FEW
@given(task=st.sampled_from(sorted(degrade.TASKS)), t=st.integers(1, 3), h=st.integers(1, 24),
       w=st.integers(1, 24), seed=seeds)
def test_degrade_any_frame_size(task, t, h, w, seed):
    frames = torch.rand(t, h, w, 3, generator=gen(seed))
    try:
        out = degrade.degrade(frames, task, None, seed)
    except ValueError as e:
        assert str(e).split(":")[0] in ("frames", "images", "task", "strength", "height", "width"), str(e)
        return
    assert out.ndim == 4 and out.shape[0] == t and out.shape[-1] == 3 and finite(out)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    if task == "sr_x2":
        assert out.shape[1:3] == (max(1, h // 2), max(1, w // 2)) or out.shape[1:3] == (-(-h // 2), -(-w // 2))
    elif task == "sr_x4":
        assert out.shape[1:3] == (max(1, h // 4), max(1, w // 4)) or out.shape[1:3] == (-(-h // 4), -(-w // 4))
    else:
        assert out.shape == frames.shape


@FEW
@given(t=st.integers(1, 3), h=st.integers(1, 16), w=st.integers(1, 16), seed=seeds)
def test_video_metrics_any_frame_size_with_dis(t, h, w, seed):
    """video_metrics with DIS flow (no flow given) on tiny frames: numbers or a ValueError naming the input."""
    g = gen(seed)
    ref = torch.rand(t, h, w, 3, generator=g)
    res = (ref + 0.05 * torch.randn(t, h, w, 3, generator=g)).clamp(0, 1)
    try:
        m = metrics.video_metrics(res, reference=ref)
    except ValueError as e:
        assert str(e).split(":")[0] in ("restored", "reference", "frames"), str(e)
        assert min(h, w) < 3
        return
    assert m["frames"] == t
    for k, v in m.items():
        if isinstance(v, float):
            assert not math.isnan(v), k
    metrics.metrics_to_json(m)


# == early stop, recurrent alignment, DDIM inversion ==========================================================
def descending(n: int, seed: int) -> torch.Tensor:
    steps = torch.rand(n, generator=gen(seed)) + 0.01
    return torch.cat([torch.flip(torch.cumsum(steps, 0), [0]), torch.zeros(1)])


@FUZZ
@given(n=st.integers(1, 30), stop_at=st.one_of(st.floats(-0.5, 1.5), st.just(math.nan)), seed=seeds)
def test_early_stop_sigmas_prefix_ending_in_zero(n, stop_at, seed):
    sig = descending(n, seed)
    try:
        out = early_stop.early_stop_sigmas(sig, stop_at)
    except ValueError:
        assert not 0 <= stop_at <= 1
        return
    assert 0 <= stop_at <= 1 and finite(out) and float(out[-1]) == 0.0
    k = out.numel() - 1
    assert 0 <= k <= n and torch.equal(out[:k], sig[:k])
    assert bool((out[:-1] > out[1:]).all()) or k == 0
    for v in out[:-1].tolist():
        assert 0.0 <= early_stop.schedule_progress(v, sig) < 1.0


@FUZZ
@example(n=1, h=1, w=1, tau=1.0, blur=1e-50, strength=0.0, scale=0.0, with_occ=False, seed=0)  # found by fuzzing
@given(n=st.integers(1, 2), h=st.integers(1, 12), w=st.integers(1, 12), tau=st.floats(0.001, 1.0),
       blur=st.floats(0.0, 4.0), strength=st.floats(0, 1), scale=flow_scale, with_occ=st.booleans(), seed=seeds)
def test_recurrent_alignment_confidence_and_blend(n, h, w, tau, blur, strength, scale, with_occ, seed):
    g = gen(seed)
    prev, cur = torch.rand(n, 3, h, w, generator=g), torch.rand(n, 3, h, w, generator=g)
    fb, ff = rand_flow(n, h, w, scale, seed), rand_flow(n, h, w, scale, seed + 1)
    blurred = recurrent_align.gaussian_blur(cur, blur)
    assert blurred.shape == cur.shape and finite(blurred)
    m = recurrent_align.alignment_confidence(prev, cur, fb, flow_fwd=ff if with_occ else None, tau=tau, blur=blur)
    assert m.shape == (n, 1, h, w) and finite(m) and bool(((m >= 0) & (m <= 1)).all())
    out = recurrent_align.blend(cur, prev, m, strength)
    assert out.shape == cur.shape and finite(out)
    lo, hi = torch.minimum(cur, prev), torch.maximum(cur, prev)
    assert bool((out >= lo - 1e-5).all() and (out <= hi + 1e-5).all())  # a per-pixel convex combination
    # identical frames under zero flow are fully trusted
    same = recurrent_align.alignment_confidence(cur, cur, torch.zeros(n, 2, h, w), tau=tau, blur=blur)
    assert torch.allclose(same, torch.ones_like(same))


@FUZZ
@given(n=st.integers(1, 12), shape=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 5)),
       refine=st.integers(0, 2), eval_at=st.sampled_from(list(ddim_inversion.EVAL_AT)), seed=seeds)
def test_ddim_invert_then_sample_is_identity_for_constant_noise_model(n, shape, refine, eval_at, seed):
    """A model that predicts a constant noise field: DDIM inversion then sampling returns the input exactly."""
    g = gen(seed)
    eps = torch.randn(*shape, generator=g, dtype=torch.float64)
    x0 = torch.randn(*shape, generator=g, dtype=torch.float64)

    def model(x, s):
        return x - s.view(-1, *([1] * (x.ndim - 1))) * eps

    sig = descending(n, seed).double() * 5
    noisy = ddim_inversion.ddim_invert(model, x0, sig, eval_at=eval_at, refine=refine)
    assert noisy.shape == x0.shape and finite(noisy)
    back = ddim_inversion.ddim_sample(model, noisy, sig)
    assert torch.allclose(back, x0, atol=1e-9 * (1 + float(sig[0])))
    with pytest.raises(ValueError):
        ddim_inversion.ddim_sample(model, noisy, torch.flip(sig, [0]))
