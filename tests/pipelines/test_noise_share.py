"""ZVRD spatial-temporal noise sharing (Eq. 11): pure pipeline tests."""
import math

import pytest
import torch

from temporal_restore.pipelines import noise_share as ns
from temporal_restore.pipelines.flow import FlowField, fb_check


def translation_flow(T, h, w, dx, dy=0.0):
    """FlowField of a scene translating by (dx, dy) pixels per frame."""
    fwd = torch.zeros(T - 1, 2, h, w)
    fwd[:, 0], fwd[:, 1] = dx, dy
    bwd = -fwd
    occ_f, occ_b = fb_check(fwd, bwd), fb_check(bwd, fwd)
    return FlowField(forward=fwd, backward=bwd, occlusion_fwd=occ_f, occlusion_bwd=occ_b,
                     confidence_fwd=1 - occ_f, confidence_bwd=1 - occ_b, height=h, width=w)


def test_static_scene_identical_noise_across_frames():
    share = ns.NoiseShare(seed=3, flow=translation_flow(5, 16, 16, 0.0))
    z = share.initial((5, 4, 16, 16))
    for t in range(1, 5):
        assert torch.equal(z[t], z[0])
    step = share.step_sampler(torch.zeros(5, 4, 16, 16))
    s1, s2 = step(None, None), step(None, None)
    for t in range(1, 5):
        assert torch.equal(s1[t], s1[0])
    assert not torch.allclose(s1, s2), "each step must draw fresh noise"
    assert not torch.allclose(s1, z), "step noise must not repeat the initial noise"


def test_seeded_and_independent_of_global_rng():
    flow = translation_flow(3, 8, 8, 2.0)
    torch.manual_seed(0)
    a = ns.NoiseShare(7, flow).initial((3, 4, 8, 8))
    torch.manual_seed(123)
    b = ns.NoiseShare(7, flow).initial((3, 4, 8, 8))
    c = ns.NoiseShare(8, flow).initial((3, 4, 8, 8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("lam", [0.5, 0.3])
def test_variance_preserving_vs_paper_exact(lam):
    T, h, w, n = 3, 24, 24, 400
    flow = translation_flow(T, h, w, 3.0, 1.0)
    valid = 1 - flow.occlusion_bwd  # [T-1,1,h,w]
    assert valid.sum() > 0.5 * valid.numel()
    share_vp = ns.NoiseShare(0, flow, lam=lam, variance_preserving=True)
    share_px = ns.NoiseShare(0, flow, lam=lam, variance_preserving=False)
    sv = share_vp.step_sampler(torch.zeros(T, 1, h, w))
    sp = share_px.step_sampler(torch.zeros(T, 1, h, w))
    vp = torch.stack([sv() for _ in range(n)])  # [n,T,1,h,w]
    px = torch.stack([sp() for _ in range(n)])
    m = valid.bool().expand(n, T - 1, 1, h, w)
    var_vp = vp[:, 1:][m].var().item()
    var_px = px[:, 1:][m].var().item()
    expected_px = lam ** 2 + (1 - lam) ** 2
    assert abs(var_vp - 1.0) < 0.03, var_vp
    assert abs(var_px - expected_px) < 0.03, (var_px, expected_px)
    # per-pixel variance of the preserving mode stays ~1 everywhere (occluded areas untouched)
    per_pixel = vp.var(0)
    assert abs(per_pixel.mean().item() - 1.0) < 0.03
    assert per_pixel.min().item() > 0.7


def test_blend_follows_motion():
    """lam = 0: a non-occluded pixel of frame i takes the noise of its match in frame i-1."""
    T, h, w = 3, 16, 16
    z = torch.randn(T, 2, h, w, generator=torch.Generator().manual_seed(1))
    flow = translation_flow(T, h, w, 2.0)
    out = ns.blend_noise(z, flow, lam=0.0, variance_preserving=False)
    # frame 1 pixel (y, x) matches frame 0 pixel (y, x - 2)
    assert torch.equal(out[1, :, :, 4:12], z[0, :, :, 2:10])
    assert torch.equal(out[0], z[0])
    # occluded pixels (the ones entering the frame) keep their own noise
    occ = flow.occlusion_bwd[0, 0].bool()
    assert occ.any()
    assert torch.equal(out[1][:, occ], z[1][:, occ])


def test_no_flow_means_pure_sharing():
    z = ns.NoiseShare(5, None).initial((4, 4, 8, 8))
    assert all(torch.equal(z[t], z[0]) for t in range(4))
    assert abs(z.std().item() - 1.0) < 0.3


def test_bad_inputs():
    with pytest.raises(ValueError, match="lam"):
        ns.NoiseShare(0, None, lam=1.5)
    with pytest.raises(ValueError, match="flow"):
        ns.NoiseShare(0, translation_flow(3, 8, 8, 1.0)).initial((4, 4, 8, 8))
    with pytest.raises(ValueError, match="z"):
        ns.blend_noise(torch.zeros(4, 8, 8), None)


def test_frame_window_selects_flow():
    flow = translation_flow(6, 8, 8, 1.0)
    share = ns.NoiseShare(0, flow)
    z = share.initial((3, 4, 8, 8), frame_index=[2, 3, 4])
    assert z.shape == (3, 4, 8, 8)
