"""pipelines/latent_warp.py: hierarchical latent warping (DiffIR2VR-Zero Eq. 4)."""
import pytest
import torch

from temporal_restore.pipelines import latent_warp as lw
from temporal_restore.pipelines.flow import FlowField


def _field(T, h, w, dx=0, dy=0, occ_fwd=None, occ_bwd=None):
    fwd = torch.zeros(T - 1, 2, h, w)
    fwd[:, 0], fwd[:, 1] = dx, dy
    z = torch.zeros(T - 1, 1, h, w)
    return FlowField(forward=fwd, backward=-fwd, occlusion_fwd=z if occ_fwd is None else occ_fwd,
                     occlusion_bwd=z if occ_bwd is None else occ_bwd, confidence_fwd=z + 1, confidence_bwd=z + 1,
                     height=h, width=w)


def test_zero_flow_makes_every_frame_its_keyframe_and_keyframes_the_first():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, 8, 8, generator=g)
    out = lw.hierarchical_warp(x, _field(6, 8, 8), list(range(6)), batch_size=3, keyframe_mode="random", seed=3)
    keys = lw.choose_keyframes(range(6), 3, "random", 3)
    first = keys[0]
    for f in range(6):
        assert torch.allclose(out[f], x[first], atol=1e-5), f
    assert not torch.equal(out, x)


def test_shift_motion_propagates_keyframe_content():
    g = torch.Generator().manual_seed(1)
    T, h, w, d = 4, 24, 24, 2
    base = torch.randn(4, h, w, generator=g)
    noise = torch.randn(T, 4, h, w, generator=g)
    # content moves right by d per frame: frame t = roll(base, t*d); forward flow = +d
    x = torch.stack([torch.roll(base, t * d, dims=2) for t in range(T)]) + 0.1 * noise
    out = lw.hierarchical_warp(x, _field(T, h, w, dx=d), list(range(T)), batch_size=T, keyframe_mode="stride")
    # keyframe 0; frame f takes keyframe content brought along the motion
    for f in range(1, T):
        ref = torch.roll(x[0], f * d, dims=2)
        m = 8
        assert torch.allclose(out[f][..., m:-m], ref[..., m:-m], atol=1e-5)
    assert torch.equal(out[0], x[0])


def test_occluded_pixels_are_left_alone():
    g = torch.Generator().manual_seed(2)
    T, h, w = 3, 8, 8
    x = torch.randn(T, 4, h, w, generator=g)
    occ = torch.zeros(T - 1, 1, h, w)
    occ[:, :, 2:5, 2:5] = 1
    ff = _field(T, h, w, occ_fwd=occ, occ_bwd=occ)
    out = lw.hierarchical_warp(x, ff, [0, 1, 2], batch_size=3, keyframe_mode="middle")  # keyframe 1
    for f in (0, 2):
        assert torch.equal(out[f][:, 2:5, 2:5], x[f][:, 2:5, 2:5])
        assert torch.allclose(out[f][:, 6:, 6:], x[1][:, 6:, 6:])


def test_strength_zero_is_identity_and_partial_strength_blends():
    x = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    ff = _field(4, 8, 8)
    assert torch.equal(lw.hierarchical_warp(x, ff, range(4), strength=0.0), x)
    half = lw.hierarchical_warp(x, ff, range(4), batch_size=4, keyframe_mode="stride", strength=0.5)
    assert torch.allclose(half[2], 0.5 * x[2] + 0.5 * x[0], atol=1e-6)


def test_window_uses_absolute_frame_indices():
    """A window [4..7] of a 10-frame clip sees the same keyframes as the whole clip."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(10, 4, 8, 8, generator=g)
    ff = _field(10, 8, 8)
    full = lw.choose_keyframes(range(10), 4, "random", seed=11, num_frames=10)
    win = lw.choose_keyframes(range(4, 8), 4, "random", seed=11, num_frames=10)
    assert win[1] == full[1]
    out = lw.hierarchical_warp(x[4:8], ff, list(range(4, 8)), batch_size=4, keyframe_mode="random", seed=11)
    k = full[1]
    for f in range(4):
        assert torch.allclose(out[f], x[k], atol=1e-5)


def test_keyframes_one_per_batch_and_seeded():
    a = lw.choose_keyframes(range(20), 6, "random", seed=5, num_frames=20)
    b = lw.choose_keyframes(range(20), 6, "random", seed=5, num_frames=20)
    c = lw.choose_keyframes(range(20), 6, "random", seed=6, num_frames=20)
    assert a == b and sorted(a) == [0, 1, 2, 3]
    assert all(k // 6 == blk for blk, k in a.items())
    assert a != c or lw.choose_keyframes(range(20), 6, "random", seed=7, num_frames=20) != a
    assert lw.choose_keyframes(range(20), 6, "stride") == {0: 0, 1: 6, 2: 12, 3: 18}
    with pytest.raises(ValueError, match="keyframe_mode"):
        lw.choose_keyframes(range(4), 2, "best")


def test_bad_inputs_name_the_input():
    x = torch.zeros(3, 4, 8, 8)
    with pytest.raises(ValueError, match="flow: grid"):
        lw.hierarchical_warp(x, _field(3, 16, 16), range(3))
    with pytest.raises(ValueError, match="frame_idx"):
        lw.hierarchical_warp(x, _field(3, 8, 8), range(2))
    with pytest.raises(ValueError, match="flow: covers"):
        lw.hierarchical_warp(x, _field(3, 8, 8), [3, 4, 5])


def test_step_index_and_active_fraction():
    sched = torch.linspace(14.6, 0.0, 11)  # 10 steps
    for i in range(10):
        assert lw.step_index(sched[i], sched) == (i, 10)
    assert lw.step_index(torch.stack([sched[3], sched[3]]), sched) == (3, 10)
    on = [lw.active(i, 10, 0.3) for i in range(10)]
    assert on == [True] * 3 + [False] * 7
    assert lw.active(0, 4, 0.01) and not lw.active(1, 4, 0.01)
    assert not any(lw.active(i, 10, 0.0) for i in range(10))


def _gray_u8(frame):
    import cv2
    import numpy as np

    a = np.clip(frame.numpy().astype(np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2GRAY)


def _cv2_dis(a, b):
    """Naive reference: OpenCV DIS (medium) between the two frames themselves, [2,H,W]."""
    import cv2

    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return torch.from_numpy(dis.calc(_gray_u8(a), _gray_u8(b), None)).permute(2, 0, 1).float()


@pytest.fixture(scope="module")
def moving_clip():
    from temporal_restore.pipelines import synthetic

    return synthetic.make_clip("coffee", frames=8, height=64, width=64, motion="pan", seed=3).frames


def test_direct_keyframe_flow_is_estimated_between_the_two_frames(moving_clip):
    from temporal_restore.pipelines.flow import estimate_flow

    ff = estimate_flow(moving_clip)
    ref = _cv2_dis(moving_clip[0], moving_clip[4])
    direct = ff.between(0, 4, direct=True)[0]
    chained = ff.between(0, 4)[0]
    assert torch.allclose(direct, ref, atol=1e-5)
    assert (chained - ref).abs().max() > 1e-2  # composing neighbour flows is a different flow
    window = ff.select([2, 3, 4, 5])  # a sampled window: indices renumbered, same source frames
    assert torch.allclose(window.between(0, 2, direct=True)[0], _cv2_dis(moving_clip[2], moving_clip[4]), atol=1e-5)


def test_direct_flow_cache_is_bounded_lru_and_returns_the_same_flows(moving_clip):
    from temporal_restore.pipelines import flow

    ff = flow.estimate_flow(moving_clip)
    calls = []
    estimator = ff.pair_estimator

    def counting(a, b):
        calls.append((a, b))
        return estimator(a, b)

    ff.pair_estimator = counting
    pairs = [(a, b) for a in range(8) for b in range(8) if a != b]
    first = {p: ff.direct(*p) for p in pairs}
    assert len(ff.direct_cache) == flow.DIRECT_CACHE_SIZE < len(pairs)
    n = len(calls)
    recent = pairs[-1]
    assert all(torch.equal(x, y) for x, y in zip(ff.direct(*recent), first[recent])) and len(calls) == n  # a hit
    evicted = pairs[0]
    again = ff.direct(*evicted)  # dropped long ago: estimated again, the same flow
    assert len(calls) == n + 2 and all(torch.equal(x, y) for x, y in zip(again, first[evicted]))
    assert len(ff.direct_cache) == flow.DIRECT_CACHE_SIZE
    assert list(ff.direct_cache)[-1] == (*evicted, ff.height, ff.width)  # now the most recent


def test_hierarchical_warp_uses_direct_keyframe_flows_by_default(moving_clip):
    from temporal_restore.pipelines.flow import estimate_flow, fb_check, warp

    ff = estimate_flow(moving_clip)
    x0 = torch.randn(8, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    idx = list(range(8))
    out = lw.hierarchical_warp(x0, ff, idx, batch_size=10, keyframe_mode="middle")
    k = lw.choose_keyframes(idx, 10, "middle", num_frames=8)[0]
    ref = x0.clone()
    for f in idx:  # naive Eq. 4 local step with flows computed frame -> keyframe by cv2
        if f == k:
            continue
        fw, bw = _cv2_dis(moving_clip[f], moving_clip[k])[None], _cv2_dis(moving_clip[k], moving_clip[f])[None]
        keep = 1 - fb_check(fw, bw)[0]
        ref[f] = x0[f] + keep * (warp(x0[k][None], fw)[0] - x0[f])
    assert torch.allclose(out, ref, atol=1e-4)
    chained = lw.hierarchical_warp(x0, ff, idx, batch_size=10, keyframe_mode="middle", direct=False)
    assert (chained - ref).abs().max() > 1e-2
