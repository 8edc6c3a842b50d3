"""pipelines/metrics: PSNR, SSIM, warping error, flicker, seam ratio."""
import json
import math

import pytest
import torch

from temporal_restore.pipelines import degrade as D
from temporal_restore.pipelines import metrics as M


def rand_clip(t=4, h=32, w=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(t, 3, h // 4, w // 4, generator=g)
    x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return (0.1 + 0.8 * x).permute(0, 2, 3, 1).contiguous()


@pytest.fixture(scope="module")
def clip():
    pytest.importorskip("skimage")
    from temporal_restore.pipelines import synthetic as S

    return S.make_clip("astronaut", 6, 48, 64, "mixed", seed=1)


def test_identical_clips_psnr_inf_ssim_one():
    x = rand_clip()
    assert math.isinf(M.psnr(x, x.clone()))
    assert M.ssim(x, x.clone()) == pytest.approx(1.0, abs=1e-12)
    assert M.ssim(x, x.clone(), channel="rgb") == pytest.approx(1.0, abs=1e-12)


def test_psnr_known_values():
    x = torch.full((2, 32, 32, 3), 0.4)
    d = 0.05
    assert M.psnr(x + d, x) == pytest.approx(10 * math.log10(1 / d ** 2), abs=1e-4)  # float32 inputs
    # AWGN sigma=25/255 on mid-grey (no clipping at 5 sigma): PSNR = 20 log10(255 / 25)
    g = torch.full((2, 64, 64, 3), 0.5)
    n = D.degrade(g, "denoise", 25, seed=0)
    assert M.psnr(n, g) == pytest.approx(20 * math.log10(255 / 25), abs=0.15)


@pytest.mark.parametrize("channel", ["y", "rgb"])
def test_ssim_matches_skimage(channel):
    skm = pytest.importorskip("skimage.metrics")
    x = rand_clip(2, 40, 48)
    y = D.degrade(x, "denoise", 20, seed=1)
    ours = M.ssim_per_frame(y, x, channel=channel)
    for i in range(2):
        if channel == "y":
            a, b = M.luma(y[i:i + 1].double())[0].numpy(), M.luma(x[i:i + 1].double())[0].numpy()
            ref = skm.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                            use_sample_covariance=False, data_range=1.0)
        else:
            ref = skm.structural_similarity(y[i].double().numpy(), x[i].double().numpy(), gaussian_weights=True,
                                            sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=2)
        assert float(ours[i]) == pytest.approx(ref, abs=1e-6)


def test_ssim_drops_with_noise():
    x = rand_clip()
    assert M.ssim(D.degrade(x, "denoise", 40, seed=0), x) < M.ssim(D.degrade(x, "denoise", 10, seed=0), x) < 1


def test_shape_mismatch_is_a_value_error():
    with pytest.raises(ValueError, match="reference"):
        M.psnr(rand_clip(4, 32, 40), rand_clip(4, 32, 32))
    with pytest.raises(ValueError, match="flow"):
        M.warping_error(rand_clip(4), torch.zeros(4, 2, 32, 40))


def test_warping_error_true_flow_much_lower_than_zero_flow(clip):
    true = M.warping_error(clip.frames, clip.flow, clip.occlusion)
    zero = M.warping_error(clip.frames, torch.zeros_like(clip.flow), clip.occlusion)
    assert true < 0.25 * zero, (true, zero)
    # the occlusion mask matters: without it the covered background adds error
    assert M.warping_error(clip.frames, clip.flow) > true
    # an estimated (DIS) flow with a forward-backward mask sits in between
    est = M.warping_error(clip.frames)
    assert true < est < zero


def test_warping_error_of_still_clip_is_zero_and_noise_raises_it():
    x = rand_clip(1).expand(4, -1, -1, -1).contiguous()
    z = torch.zeros(3, 2, 32, 40)
    assert M.warping_error(x, z) < 1e-12  # grid_sample at integer positions: exact up to rounding
    assert M.warping_error(D.degrade(x, "denoise", 20, seed=0), z) > 0.02


def test_warping_error_integer_shift_flow():
    x = rand_clip(1, 32, 40)[0]
    frames = torch.stack([x, torch.roll(x, shifts=(1, 3), dims=(0, 1))])
    flow = torch.zeros(1, 2, 32, 40)
    flow[:, 0], flow[:, 1] = 3.0, 1.0
    assert M.warping_error(frames, flow) < 1e-6  # pixels that leave the frame are excluded
    assert M.warping_error(frames, torch.zeros_like(flow)) > 0.01


def test_flicker_uniform_and_seam_ratio():
    base = rand_clip(1, 32, 40)[0] * 0.5 + 0.2
    d = 0.02
    frames = torch.stack([base + (d if t % 2 else -d) for t in range(9)])
    per = M.flicker_per_pair(frames)
    # float32 frames: exact up to float32 rounding
    assert torch.allclose(per, torch.full_like(per, 2 * d), rtol=0, atol=1e-6)
    assert M.flicker(frames) == pytest.approx(2 * d, abs=1e-6)
    assert M.seam_ratio(frames, [4]) == pytest.approx(1.0, abs=1e-4)
    assert M.seam_ratio(frames, [4], mode="lowpass") == pytest.approx(1.0, abs=1e-4)
    # a brightness jump when a new window starts at frame 4 (and stays for the window)
    jump = frames.clone()
    jump[4:] += 0.2  # pair (3, 4) changes by 0.2 - 2d = 0.16, four times the others
    assert M.seam_ratio(jump, [4]) > 3
    assert M.seam_ratio(jump, [4], mode="lowpass") > 3
    assert M.seam_ratio(jump, [2, 6]) < 1  # the jump is not at these seams


def test_seam_ratio_warp_mode_uses_the_flow(clip):
    x = clip.frames.clone()
    x[3:] = D.degrade(x[3:], "deblur", 1.5)  # a texture change at the seam 2 -> 3
    r = M.seam_ratio(x, [3], mode="warp", flow=clip.flow, occlusion=clip.occlusion)
    assert r > 2
    assert M.seam_ratio(clip.frames, [3], mode="warp", flow=clip.flow, occlusion=clip.occlusion) < r


def test_seam_ratio_bad_boundaries():
    x = rand_clip(5)
    with pytest.raises(ValueError, match="boundaries"):
        M.seam_ratio(x, [0])
    with pytest.raises(ValueError, match="boundaries"):
        M.seam_ratio(x, [5])
    with pytest.raises(ValueError, match="boundaries"):
        M.seam_ratio(x, [1, 2, 3, 4])


def test_video_metrics_dict_and_strict_json(clip):
    ref = clip.frames
    noisy = D.degrade(ref, "denoise", 15, seed=0)
    small = D.degrade(ref, "sr_x2")
    m = M.video_metrics(noisy, reference=ref, flow=clip.flow, occlusion=clip.occlusion, degraded=small,
                        boundaries=[3])
    for k in ("psnr", "ssim", "psnr_degraded", "ssim_degraded", "warping_error", "warping_error_reference",
              "flicker", "flicker_lowpass", "flicker_reference", "seam_ratio", "seam_ratio_lowpass"):
        assert isinstance(m[k], float) and math.isfinite(m[k]), k
    assert m["flow_source"] == "given"
    assert m["warping_error"] > 3 * m["warping_error_reference"]  # noise is temporally inconsistent
    same = M.video_metrics(ref, reference=ref)
    assert math.isinf(same["psnr"]) and same["flow_source"] == "reference"
    assert same["warping_error"] == same["warping_error_reference"]
    s = M.metrics_to_json(same)
    assert json.loads(s)["psnr"] == "inf"  # strict JSON, no Infinity token
    one = M.video_metrics(ref[:1])
    assert "warping_error" not in one and one["frames"] == 1


def test_flowfield_is_accepted(clip):
    from temporal_restore.pipelines import flow as FL

    ff = FL.estimate_flow(clip.frames)
    a = M.warping_error(clip.frames, ff)
    b = M.warping_error(clip.frames, ff.forward, ff.occlusion_fwd[:, 0] > 0.5)
    assert a == pytest.approx(b)
