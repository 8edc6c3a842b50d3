"""pipelines/flow.py: warp, forward-backward check, resampling, FlowField windows, DIS accuracy."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from temporal_restore.pipelines import flow as fl


def _astronaut(size=96):
    from skimage import data, transform
    img = data.astronaut().astype(np.float32) / 255.0
    return torch.from_numpy(transform.resize(img, (size, size), anti_aliasing=True).astype(np.float32))


def test_zero_flow_is_identity():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 17, 23, generator=g)
    out = fl.warp(x, torch.zeros(3, 2, 17, 23))
    assert torch.allclose(out, x, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(dx=st.integers(-4, 4), dy=st.integers(-4, 4))
def test_integer_shift_equals_roll_away_from_borders(dx, dy):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 24, 28, generator=g)
    flow = torch.zeros(2, 2, 24, 28)
    flow[:, 0], flow[:, 1] = dx, dy
    out = fl.warp(x, flow)
    # out(p) = x(p + d)  <=>  roll by -d
    ref = torch.roll(x, shifts=(-dy, -dx), dims=(2, 3))
    m = 4
    assert torch.allclose(out[..., m:-m, m:-m], ref[..., m:-m, m:-m], atol=1e-5)


def test_fractional_shift_is_bilinear():
    x = torch.arange(10, dtype=torch.float32).view(1, 1, 1, 10).expand(1, 1, 4, 10).contiguous()
    flow = torch.zeros(1, 2, 4, 10)
    flow[:, 0] = 0.25
    out = fl.warp(x, flow)
    assert torch.allclose(out[..., :8], x[..., :8] + 0.25, atol=1e-5)


def _translation_pair(h, w, dx, dy):
    fwd = torch.zeros(1, 2, h, w)
    fwd[:, 0], fwd[:, 1] = dx, dy
    return fwd, -fwd


def test_fb_check_consistent_translation_only_flags_border():
    fwd, bwd = _translation_pair(20, 30, 3, 0)
    occ = fl.fb_check(fwd, bwd)
    # pixels whose target leaves the frame (last 3 columns) are occluded, the rest are not
    assert occ[..., :, :27].sum() == 0
    assert (occ[..., :, 27:] == 1).all()


def test_fb_check_flags_synthetic_disocclusion():
    """A square moves right by 6 px over a static background: the background strip the square
    uncovers in frame b has no match in frame a, so the backward check must flag it."""
    h, w, s = 40, 40, 6
    y0, y1, x0, x1 = 10, 30, 10, 22
    fwd = torch.zeros(1, 2, h, w)
    fwd[:, 0, y0:y1, x0:x1] = s                      # frame a: square pixels move right
    bwd = torch.zeros(1, 2, h, w)
    bwd[:, 0, y0:y1, x0 + s:x1 + s] = -s             # frame b: square pixels came from the left
    occ_b = fl.fb_check(bwd, fwd)                    # pixels of frame b
    uncovered = occ_b[0, 0, y0 + 1:y1 - 1, x0:x0 + s - 1]
    assert uncovered.mean() == 1.0, "disoccluded strip not flagged"
    assert occ_b[0, 0, y0 + 1:y1 - 1, x0 + s + 1:x1 + s - 1].sum() == 0, "moving square wrongly flagged"
    assert occ_b[0, 0, :, 30:].sum() == 0, "static background wrongly flagged"
    occ_a = fl.fb_check(fwd, bwd)                    # pixels of frame a: background covered by the square
    assert occ_a[0, 0, y0 + 1:y1 - 1, x1 + 1:x1 + s - 1].mean() == 1.0


def test_confidence_eq5():
    fwd, bwd = _translation_pair(16, 16, 2, 1)
    bwd = bwd + torch.tensor([0.5, 0.0]).view(1, 2, 1, 1)  # residual 0.5 px everywhere
    conf = fl.fb_confidence(fwd, bwd)
    inner = conf[..., 2:-2, 2:-4]
    assert torch.allclose(inner, torch.full_like(inner, float(np.exp(-0.25))), atol=1e-5)


def test_resize_to_latent_grid_divides_vectors_by_8():
    g = torch.Generator().manual_seed(2)
    flow = torch.randn(2, 2, 64, 96, generator=g) * 5
    small = fl.resize_flow(flow, 8, 12)
    ref = torch.nn.functional.avg_pool2d(flow, 8) / 8
    assert torch.allclose(small, ref, atol=1e-5)
    # anisotropic: only the y component scales with the height ratio
    stretched = fl.resize_flow(torch.ones(1, 2, 8, 8), 16, 4)
    assert torch.allclose(stretched[:, 0], torch.full((1, 16, 4), 0.5))
    assert torch.allclose(stretched[:, 1], torch.full((1, 16, 4), 2.0))


def _field(T=5, h=16, w=16, dx=1.0, dy=0.0, keyframes=None):
    fwd = torch.zeros(T - 1, 2, h, w)
    fwd[:, 0], fwd[:, 1] = dx, dy
    z = torch.zeros(T - 1, 1, h, w)
    kw = {}
    if keyframes:
        k = len(keyframes) - 1
        gaps = torch.tensor([b - a for a, b in zip(keyframes[:-1], keyframes[1:])], dtype=torch.float32).view(k, 1, 1, 1)
        kf = torch.zeros(k, 2, h, w)
        kf[:, 0:1], kf[:, 1:2] = dx * gaps, dy * gaps
        kz = torch.zeros(k, 1, h, w)
        kw = dict(keyframes=keyframes, key_forward=kf, key_backward=-kf, key_occlusion_fwd=kz, key_occlusion_bwd=kz,
                  key_confidence_fwd=kz + 1, key_confidence_bwd=kz + 1)
    return fl.FlowField(forward=fwd, backward=-fwd, occlusion_fwd=z, occlusion_bwd=z, confidence_fwd=z + 1,
                        confidence_bwd=z + 1, height=h, width=w, **kw)


def test_flowfield_resized_and_select():
    ff = _field(T=6, h=32, w=48, dx=8.0, dy=4.0, keyframes=[0, 3, 5])
    small = ff.resized(4, 6)
    assert (small.height, small.width) == (4, 6)
    assert torch.allclose(small.forward[:, 0], torch.full((5, 4, 6), 1.0))
    assert torch.allclose(small.forward[:, 1], torch.full((5, 4, 6), 0.5))
    assert torch.allclose(small.key_forward[0, 0], torch.full((4, 6), 3.0))
    win = ff.select([2, 3, 4])
    assert win.num_frames == 3 and win.keyframes == [1]
    assert torch.equal(win.forward, ff.forward[2:4])
    gap = ff.select([0, 2, 5])
    assert torch.allclose(gap.forward[1, 0, 8:24, 8:24], torch.full((16, 16), 24.0))
    assert gap.keyframes == [0, 2]


def test_between_composes_and_flags_chain_occlusion():
    ff = _field(T=5, h=20, w=40, dx=2.0)
    f, occ, conf = ff.between(0, 3)
    assert torch.allclose(f[0, :, :30], torch.full((20, 30), 6.0))
    # chained match leaves the frame for the last 6 columns
    assert occ[0, :, 34:].min() == 1
    b, _, _ = ff.between(4, 1)
    assert torch.allclose(b[0, :, 8:], torch.full((20, 32), -6.0))
    with pytest.raises(ValueError, match="frame indices"):
        ff.between(0, 5)


def test_flowfield_validates_shapes():
    z = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match="forward"):
        fl.FlowField(forward=torch.zeros(2, 2, 8, 9), backward=torch.zeros(2, 2, 8, 8), occlusion_fwd=z,
                     occlusion_bwd=z, confidence_fwd=z, confidence_bwd=z, height=8, width=8)


def test_estimate_flow_rejects_bad_frames():
    with pytest.raises(ValueError, match="frames"):
        fl.estimate_flow(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="backend"):
        fl.estimate_flow(torch.zeros(2, 8, 8, 3), backend="gmflow")


def test_raft_missing_weights_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="raft_weights: file not found"):
        fl.RaftEstimator(str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"foo": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a torchvision RAFT"):
        fl.RaftEstimator(str(bad))


def _synthetic_clip():
    """Astronaut under a known affine motion per frame (translation + slight zoom); true flow a->b."""
    try:
        from temporal_restore.pipelines import synthetic  # noqa: F401  (measuring-stick module, when present)
    except Exception:
        synthetic = None
    img = _astronaut(112)
    T, H, W = 4, 96, 96
    frames, fwd_true = [], []
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    cx, cy = (W - 1) / 2, (H - 1) / 2

    def params(t):
        return 1.0 + 0.01 * t, 1.5 * t, 0.75 * t     # scale, tx, ty

    for t in range(T):
        s, tx, ty = params(t)
        # frame t(p) = img(A_t^{-1} p) with A_t p = s (p - c) + c + (tx, ty) + 8 (crop offset)
        u = (xs - cx - tx) / s + cx + 8
        v = (ys - cy - ty) / s + cy + 8
        grid = torch.stack([u / (img.shape[1] - 1) * 2 - 1, v / (img.shape[0] - 1) * 2 - 1], -1)[None]
        fr = torch.nn.functional.grid_sample(img.permute(2, 0, 1)[None], grid, align_corners=True)[0].permute(1, 2, 0)
        frames.append(fr)
    for t in range(T - 1):
        s0, tx0, ty0 = params(t)
        s1, tx1, ty1 = params(t + 1)
        # content at pixel p of frame t: q = (p - c - t0)/s0 + c ; in frame t+1 at s1 (q - c) + c + t1
        qx, qy = (xs - cx - tx0) / s0, (ys - cy - ty0) / s0
        px, py = s1 * qx + cx + tx1, s1 * qy + cy + ty1
        fwd_true.append(torch.stack([px - xs, py - ys]))
    return torch.stack(frames), torch.stack(fwd_true)


def test_dis_end_point_error_on_known_motion():
    frames, true = _synthetic_clip()
    ff = fl.estimate_flow(frames)
    valid = 1 - fl.out_of_frame(true)
    valid[..., :8, :] = 0
    valid[..., -8:, :] = 0
    valid[..., :, :8] = 0
    valid[..., :, -8:] = 0
    epe = fl.end_point_error(ff.forward, true, valid)
    zero = fl.end_point_error(torch.zeros_like(true), true, valid)
    print(f"DIS medium EPE on synthetic affine clip: {epe:.3f} px (zero-flow baseline {zero:.3f} px)")
    assert epe < 0.5, epe
    assert epe < 0.25 * zero
    # backward flows agree with the forward ones: few pixels fail the check inside the frame
    assert float((ff.occlusion_fwd * valid).sum() / valid.sum()) < 0.1


def test_estimate_flow_out_size_and_keyframes():
    frames, true = _synthetic_clip()
    ff = fl.estimate_flow(frames, keyframes=[0, 3], out_size=(12, 12))
    assert (ff.height, ff.width, ff.source_height) == (12, 12, 96)
    assert ff.forward.shape == (3, 2, 12, 12) and ff.key_forward.shape == (1, 2, 12, 12)
    true_small = fl.resize_flow(true, 12, 12)
    assert fl.end_point_error(ff.forward[..., 2:-2, 2:-2], true_small[..., 2:-2, 2:-2]) < 0.15
    # direct keyframe flow ~ sum of three neighbour flows
    chained, _, _ = ff.select([0, 1, 2, 3]).between(0, 3)
    assert fl.end_point_error(ff.key_forward[..., 3:-3, 3:-3], chained[None, :, 3:-3, 3:-3]) < 0.3


def test_raft_from_a_weights_file_small_detected_and_runs(tmp_path):
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    path = tmp_path / "raft_small_random.pth"
    torch.save(raft_small(weights=None, progress=False).state_dict(), path)
    est = fl.RaftEstimator(str(path), iters=2)
    assert est.kind == "raft_small"
    frames = torch.rand(3, 36, 44, 3)  # not a multiple of 8: padded and cropped
    ff = fl.estimate_flow(frames, backend="raft", raft=est)
    assert ff.forward.shape == (2, 2, 36, 44) and ff.backend == "raft"
    assert torch.isfinite(ff.forward).all()


def test_dis_on_measuring_stick_clip_epe_and_occlusion_recall():
    """Mixed camera motion + a moving object (pipelines/synthetic.py ground truth): EPE on valid pixels
    is bounded, and the fb check flags a good share of the true occlusions."""
    synthetic = pytest.importorskip("temporal_restore.pipelines.synthetic")
    clip = synthetic.make_clip("astronaut", frames=4, height=96, width=128, motion="mixed", seed=1)
    ff = fl.estimate_flow(clip.frames)
    valid = (~clip.occlusion).unsqueeze(1).float()
    epe = fl.end_point_error(ff.forward, clip.flow, valid)
    zero = fl.end_point_error(torch.zeros_like(clip.flow), clip.flow, valid)
    occ_true = clip.occlusion.unsqueeze(1)
    recall = float((ff.occlusion_fwd.bool() & occ_true).sum() / occ_true.sum().clamp_min(1))
    false_pos = float((ff.occlusion_fwd.bool() & ~occ_true).sum() / (~occ_true).sum())
    print(f"DIS medium on synthetic mixed-motion clip: EPE {epe:.3f} px (zero flow {zero:.3f}), "
          f"occlusion recall {recall:.2f}, false positives {false_pos:.3f}")
    assert epe < 0.35 * zero and epe < 1.0
    assert recall > 0.3 and false_pos < 0.15


def test_dis_on_noisy_degraded_frames_stays_usable():
    """Flow is estimated on the degraded clip: with Gaussian noise sigma 25/255 the EPE stays bounded."""
    synthetic = pytest.importorskip("temporal_restore.pipelines.synthetic")
    clip = synthetic.make_clip("astronaut", frames=3, height=96, width=128, motion="mixed", seed=1)
    g = torch.Generator().manual_seed(0)
    noisy = (clip.frames + 25 / 255 * torch.randn(clip.frames.shape, generator=g)).clamp(0, 1)
    valid = (~clip.occlusion).unsqueeze(1).float()
    epe = fl.end_point_error(fl.estimate_flow(noisy).forward, clip.flow, valid)
    zero = fl.end_point_error(torch.zeros_like(clip.flow), clip.flow, valid)
    print(f"DIS medium, noise sigma 25: EPE {epe:.3f} px (zero flow {zero:.3f})")
    assert epe < 0.5 * zero and epe < 1.0


@pytest.mark.parametrize("h,w", [(1, 1), (4, 9), (8, 8), (11, 30)])
def test_dis_on_frames_below_its_minimum_size(h, w):
    frames = torch.rand(2, h, w, 3, generator=torch.Generator().manual_seed(h * 31 + w))
    ff = fl.estimate_flow(frames)
    assert ff.forward.shape == (1, 2, h, w) and torch.isfinite(ff.forward).all()
    # a constant frame pair has no motion
    still = fl.estimate_flow(torch.full((2, h, w, 3), 0.5))
    assert still.forward.abs().max() < 1e-3
