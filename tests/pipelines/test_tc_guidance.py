"""ZVRD temporal consistency guidance (Eq. 8-10): pure pipeline tests."""
import pytest
import torch

from temporal_restore.pipelines import tc_guidance as tc
from temporal_restore.pipelines.flow import warp
from temporal_restore.pipelines.slr_attention import latent_to_rgb

from flow_helpers import translation_flow


def g(seed):
    return torch.Generator().manual_seed(seed)


def test_pc_loss_zero_for_consistent_motion_and_masks_occlusions():
    T, h, w = 3, 12, 12
    tex = torch.rand(1, 3, h, w + 4, generator=g(0))
    rgb = torch.cat([tex[..., 2 - t: 2 - t + w] for t in range(T)])  # moves right 1 px/frame
    flow = translation_flow(T, h, w, 1.0)
    assert tc.pc_loss(rgb, flow).item() < 1e-3  # grid_sample rounding only
    still = translation_flow(T, h, w, 0.0)
    assert tc.pc_loss(rgb, still).item() > 1.0
    # Eq. 8 by hand
    m = 1 - flow.occlusion_bwd
    rgb2 = torch.rand(T, 3, h, w, generator=g(1))
    ref = sum((m[i - 1] * (rgb2[i] - warp(rgb2[i - 1:i], flow.backward[i - 1:i])[0]).abs()).sum() for i in range(1, T))
    torch.testing.assert_close(tc.pc_loss(rgb2, flow), ref)


def test_scale_zero_is_identity_and_positive_scale_reduces_loss():
    T, h, w = 4, 10, 10
    x0 = torch.randn(T, 4, h, w, generator=g(2))
    flow = translation_flow(T, h, w, 1.0, 1.0)
    out, _ = tc.guide_x0(x0, flow, 0.0)
    assert out is x0
    before = tc.pc_loss(latent_to_rgb(x0, clamp=False), flow).item()
    out, loss = tc.guide_x0(x0, flow, 0.05)
    after = tc.pc_loss(latent_to_rgb(out, clamp=False), flow).item()
    assert abs(loss - before) < 1e-3 * before
    assert after < before * 0.98, (before, after)


def test_semantic_term_reduces_embedding_distance():
    T, h, w = 3, 8, 8
    x0 = torch.randn(T, 4, h, w, generator=g(3))
    proj = torch.randn(3, 5, generator=g(4))

    def embed(rgb):  # a tiny differentiable "image encoder"
        return torch.einsum("tchw,cd->td", rgb, proj) / (h * w) + torch.tensor([0.1, 0, 0, 0, 0])

    before = tc.sc_loss(embed(latent_to_rgb(x0))).item()
    out, _ = tc.guide_x0(x0, None, 0.5, gamma=1.0, embed=embed)
    after = tc.sc_loss(embed(latent_to_rgb(out))).item()
    assert after < before


def test_runs_inside_inference_mode():
    flow = translation_flow(2, 6, 6, 1.0)
    with torch.inference_mode():
        x0 = torch.randn(2, 4, 6, 6)
        out, loss = tc.guide_x0(x0, flow, 0.1)
    assert loss > 0 and not torch.equal(out, x0)


def test_guidance_object_gates_on_progress_and_uses_previous_x0_flow():
    T, h, w = 3, 16, 16
    guide = tc.TCGuidance(scale=0.1, guidance_start=0.5)
    x0 = torch.randn(T, 4, h, w, generator=g(5))
    assert guide(x0, 0.2, [0, 1, 2], run_key="a") is x0           # before T_TC, remembers x0
    out = guide(x0, 0.6, [0, 1, 2], run_key="a")                  # flow from the previous x0
    assert out is not x0 and guide.guided_steps == 1
    assert guide(x0, 0.6, [0, 1, 2], run_key="b") is x0           # new run: no previous x0 yet
    flow = translation_flow(T, h, w, 0.0)
    g2 = tc.TCGuidance(scale=0.1, guidance_start=0.0, input_flow=flow)
    assert g2(x0, 0.0, [0, 1, 2], run_key="a") is not x0
    assert tc.TCGuidance(scale=0.0)(x0, 1.0, [0, 1, 2]) is x0


def test_bad_inputs():
    guide = tc.TCGuidance(scale=0.1, input_flow=translation_flow(2, 4, 4, 0.0))
    with pytest.raises(ValueError, match="flow: .*2 frames"):
        guide(torch.zeros(3, 4, 4, 4), 1.0, [0, 1, 2])
    with pytest.raises(ValueError, match="scale"):
        tc.TCGuidance(scale=-1)
    with pytest.raises(ValueError, match="guidance_start"):
        tc.TCGuidance(scale=1, guidance_start=3)
    with pytest.raises(ValueError, match="flow"):
        tc.pc_loss(torch.zeros(3, 3, 4, 4), translation_flow(2, 4, 4, 0.0))
