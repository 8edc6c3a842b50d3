"""pipelines/color (wavelet / AdaIN colour correction, temporal smoothing) and pipelines/color_diff
(CIEDE2000 colour difference and colour flicker, issue 23)."""
import math

import pytest
import torch

from temporal_restore.pipelines import color as C
from temporal_restore.pipelines import color_diff as CD
from temporal_restore.pipelines import metrics as M


def smooth_clip(t=4, h=24, w=20, seed=0, lo=0.2, hi=0.8):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(t, 3, max(1, h // 4), max(1, w // 4), generator=g)
    x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return (lo + (hi - lo) * x).permute(0, 2, 3, 1).contiguous()


def textured(t=4, h=24, w=20, seed=0):
    g = torch.Generator().manual_seed(seed + 100)
    return (smooth_clip(t, h, w, seed, 0.3, 0.7) + 0.1 * (torch.rand(t, h, w, 3, generator=g) - 0.5))


def nchw(x):
    return x.permute(0, 3, 1, 2)


@pytest.mark.parametrize("method", C.METHODS)
def test_identity_when_restored_is_reference(method):
    x = textured(5, 17, 13)
    out = C.color_match(x, x.clone(), method, 0, chunk=2)
    assert out.shape == x.shape
    assert torch.allclose(out, x, atol=2e-6), (out - x).abs().max()
    # with a temporal window too, as long as the clip's colour statistics do not change over time
    static = x[:1].expand(5, -1, -1, -1).contiguous()
    assert torch.allclose(C.color_match(static, static.clone(), method, 2, chunk=2), static, atol=2e-6)


def test_adain_has_reference_statistics():
    x, ref = textured(3, 20, 24, seed=1), smooth_clip(3, 20, 24, seed=2, lo=0.35, hi=0.6)
    out = C.color_match(x, ref, "adain", clamp=False)
    for a, b in ((out, ref),):
        assert torch.allclose(a.mean((1, 2)), b.mean((1, 2)), atol=1e-5)
        assert torch.allclose(a.std((1, 2), correction=0), b.std((1, 2), correction=0), atol=1e-5)
    assert not torch.allclose(x.mean((1, 2)), ref.mean((1, 2)), atol=1e-2)  # the test has something to fix


@pytest.mark.parametrize("levels", [1, 3, 5])
def test_wavelet_keeps_high_band_exactly(levels):
    x, ref = textured(3, 21, 19, seed=3), smooth_clip(3, 21, 19, seed=4)
    out = C.color_match(x, ref, "wavelet", levels=levels, clamp=False)
    high_x = nchw(x) - C.lowpass(nchw(x), levels)
    assert torch.allclose(nchw(out) - C.lowpass(nchw(ref), levels), high_x, atol=1e-6)
    # and the low band is the reference's: a uniform colour offset of the restored frame is removed
    shifted = C.color_match((ref + 0.1).clamp(0, 1), ref, "wavelet", levels=levels)
    assert torch.allclose(shifted, ref, atol=1e-5)


def test_lowpass_definition():
    """L_1 of a unit impulse is the separable [1,2,1]/4 kernel; later levels spread by 2^i; DC is kept."""
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 1
    k = torch.tensor([1.0, 2.0, 1.0]) / 4
    l1 = C.lowpass(x, 1)[0, 0]
    assert torch.allclose(l1[3:6, 3:6], k[:, None] * k[None, :])
    assert l1.sum() == pytest.approx(1.0)
    l2 = C.lowpass(x, 2)[0, 0]
    assert l2[4, 7] > 0 and l2[4, 8] == 0 and l2[4, 4] < l1[4, 4]  # support 1 + 2 = 3 pixels
    assert torch.allclose(C.lowpass(torch.full((1, 3, 5, 7), 0.3), 5), torch.full((1, 3, 5, 7), 0.3))


@pytest.mark.parametrize("method", ["wavelet", "adain"])
def test_temporal_constant_on_static_clip(method):
    frame = textured(1, 16, 15, seed=5)
    x = frame.expand(7, -1, -1, -1).contiguous()
    ref = (0.8 * frame + 0.15).expand(7, -1, -1, -1).contiguous()
    out = C.color_match(x, ref, method, window=3, chunk=3)
    assert torch.allclose(out, out[:1].expand_as(out), atol=1e-6)
    assert torch.allclose(out, C.color_match(x, ref, method, window=0), atol=1e-5)


def test_temporal_adain_statistics_change_no_faster_than_window():
    """The reference's brightness jumps at frame 6 of 14: with radius r the applied mean moves by at most
    (max - min) / (2r+1) per frame and ramps over 2r+1 frames instead of jumping."""
    t, r = 14, 3
    x = textured(1, 12, 12, seed=6).expand(t, -1, -1, -1).contiguous()
    ref = x.clone()
    ref[6:] = (ref[6:] + 0.2).clamp(0, 1)
    per = C.color_match(x, ref, "adain", 0, clamp=False).mean((1, 2, 3))
    smooth = C.color_match(x, ref, "adain", r, clamp=False, chunk=4).mean((1, 2, 3))
    jump = float(per.max() - per.min())
    steps = (smooth[1:] - smooth[:-1]).abs()
    assert float((per[1:] - per[:-1]).abs().max()) == pytest.approx(jump, rel=1e-4)
    assert float(steps.max()) <= jump / (2 * r + 1) + 1e-5
    assert int((steps > 1e-5).sum()) == 2 * r + 1  # the ramp spans the whole window


@pytest.mark.parametrize("method", ["wavelet", "adain"])
def test_temporal_removes_restorer_drift_and_smooths_reference_colour(method):
    """restored = base + d_t (the restorer's per-frame drift), reference = base + c_t (an input whose colour
    flickers): the output is base + box_r(c)_t, the drift gone and the input's flicker averaged over 2r+1."""
    t, r = 9, 2
    base = textured(1, 14, 11, seed=7).expand(t, -1, -1, -1)
    g = torch.Generator().manual_seed(8)
    d = 0.1 * torch.rand(t, 1, 1, 3, generator=g) - 0.05
    c = 0.1 * torch.rand(t, 1, 1, 3, generator=g) - 0.05
    out = C.color_match(base + d, base + c, method, r, clamp=False, chunk=2)
    idx = torch.arange(-r, t + r).clamp(0, t - 1)
    box_c = torch.stack([c[idx[i:i + 2 * r + 1]].mean(0) for i in range(t)])
    assert torch.allclose(out, base + box_c, atol=1e-5), (out - base - box_c).abs().max()
    bound = float((c.amax(0) - c.amin(0)).max()) / (2 * r + 1)
    assert float((box_c[1:] - box_c[:-1]).abs().max()) <= bound + 1e-7
    # per frame (r = 0) the output follows the reference's colour frame by frame
    assert torch.allclose(C.color_match(base + d, base + c, method, 0, clamp=False), base + c, atol=1e-5)


@pytest.mark.parametrize("method", ["wavelet", "adain"])
def test_sr_size_mismatch_and_odd_sizes(method):
    x = textured(3, 33, 27, seed=9)
    small = torch.nn.functional.interpolate(nchw(x), size=(11, 9), mode="area").permute(0, 2, 3, 1)
    out = C.color_match(x, (small * 0.9 + 0.05), method)
    assert out.shape == x.shape and torch.isfinite(out).all()
    # a reference larger than the output is area-averaged down
    assert C.color_match(small, x, method).shape == small.shape
    assert C.color_match(torch.rand(2, 1, 1, 3), torch.rand(2, 3, 5, 3), method).shape == (2, 1, 1, 3)


def test_match_size_modes():
    r = torch.rand(1, 3, 4, 6)
    assert torch.equal(C.match_size(r, 4, 6), r)
    assert torch.allclose(C.match_size(r, 2, 3), torch.nn.functional.avg_pool2d(r, 2))
    up = C.match_size(r, 8, 12)
    assert up.shape == (1, 3, 8, 12)


@pytest.mark.parametrize("method", C.METHODS)
def test_dtype_and_device_follow_restored(method):
    x = textured(3, 10, 9).to(torch.bfloat16)
    ref = smooth_clip(3, 5, 5).to(torch.float64)
    out = C.color_match(x, ref, method, window=1)
    assert out.dtype == torch.bfloat16 and out.device == x.device and out.shape == x.shape
    ref32 = C.color_match(x.float(), ref.float(), method, window=1)
    assert (out.float() - ref32).abs().max() < 1e-2


def test_strength_blends():
    x, ref = textured(2, 12, 12), smooth_clip(2, 12, 12, seed=3)
    full = C.color_match(x, ref, "adain", clamp=False)
    half = C.color_match(x, ref, "adain", strength=0.5, clamp=False)
    assert torch.allclose(half, (x + full) / 2, atol=1e-6)
    assert torch.equal(C.color_match(x, ref, "wavelet", strength=0.0), x)


@pytest.mark.parametrize("kwargs, word", [
    (dict(method="bogus"), "method"), (dict(window=-1), "window"), (dict(window=1.5), "window"),
    (dict(strength=1.5), "strength"), (dict(levels=0), "levels"), (dict(chunk=0), "chunk")])
def test_bad_arguments_are_named(kwargs, word):
    x = textured(2, 8, 8)
    with pytest.raises(ValueError, match=word):
        C.color_match(x, x, **kwargs)


def test_bad_clips_are_named():
    x = textured(3, 8, 8)
    with pytest.raises(ValueError, match=r"reference: expected 3 frames like restored, got 2"):
        C.color_match(x, x[:2])
    with pytest.raises(ValueError, match="restored"):
        C.color_match(x[..., :2], x)
    with pytest.raises(ValueError, match="reference"):
        C.color_match(x, (x * 255).to(torch.uint8))


# ------------------------------------------------------------------------------------- colour metric
def grey_of_lightness(lightness: float) -> float:
    """sRGB value of the neutral grey with CIELAB L* = lightness (inverse CIE L*, inverse sRGB curve)."""
    f = (lightness + 16) / 116
    y = f ** 3 if f ** 3 > 216 / 24389 else (116 * f - 16) * 27 / 24389
    return 1.055 * y ** (1 / 2.4) - 0.055 if y > 0.0031308 else 12.92 * y


def test_rgb_to_lab_matches_skimage():
    skc = pytest.importorskip("skimage.color")
    rgb = torch.rand(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rgb[0] = 0
    rgb[1] = 1
    want = torch.from_numpy(skc.rgb2lab(rgb.numpy()[None])[0])
    assert torch.allclose(CD.rgb_to_lab(rgb), want, atol=2e-3)


def test_ciede2000_sharma_pairs_and_skimage():
    # Sharma, Wu, Dalal 2005, Table 1 (pairs 1, 7, 17, 19, 25)
    pairs = [((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
             ((50.0, 0.0, 0.0), (50.0, -1.0, 2.0), 2.3669),
             ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
             ((50.0, 2.5, 0.0), (50.0, 3.1736, 0.5854), 1.0000),
             ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644)]
    a = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    b = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    got = CD.delta_e_2000(a, b)
    assert torch.allclose(got, torch.tensor([p[2] for p in pairs], dtype=torch.float64), atol=1e-4)
    assert torch.allclose(CD.delta_e_2000(b, a), got, atol=1e-10)  # symmetric
    skc = pytest.importorskip("skimage.color")
    g = torch.Generator().manual_seed(1)
    l1 = torch.rand(200, 3, generator=g, dtype=torch.float64) * torch.tensor([100, 200, 200]) - torch.tensor([0, 100, 100])
    l2 = l1 + 20 * torch.randn(200, 3, generator=g, dtype=torch.float64)
    want = torch.from_numpy(skc.deltaE_ciede2000(l1.numpy(), l2.numpy()))
    assert torch.allclose(CD.delta_e_2000(l1, l2), want, atol=1e-6)


def test_metric_zero_for_identical_and_known_for_constant_shift():
    x = smooth_clip(4, 32, 40)
    m = M.video_metrics(x, reference=x.clone())
    assert m["color_delta_e"] == pytest.approx(0.0, abs=1e-9) and m["color_flicker"] == pytest.approx(0.0, abs=1e-9)
    # neutral greys at L* 45 and 55: CIEDE2000 = dL* / S_L with S_L = 1 at mean L* 50, i.e. 10; steady -> no flicker
    a = torch.full((3, 16, 16, 3), grey_of_lightness(45.0))
    b = torch.full((3, 16, 16, 3), grey_of_lightness(55.0))
    assert CD.color_metrics(a, b)["color_delta_e"] == pytest.approx(10.0, abs=0.02)
    assert CD.color_metrics(a, b)["color_flicker"] == pytest.approx(0.0, abs=1e-9)
    # a cast that pumps 45 / 55 / 45 around a steady L* 50: dE00 = 5 / S_L(47.5 or 52.5), flicker |+5 - -5| = 10
    ref = torch.full((3, 16, 16, 3), grey_of_lightness(50.0))
    pump = torch.stack([a[0], b[0], a[0]])
    s_l = 1 + 0.015 * 2.5 ** 2 / math.sqrt(20 + 2.5 ** 2)
    got = M.video_metrics(pump, reference=ref)
    assert got["color_delta_e"] == pytest.approx(5 / s_l, abs=0.02)
    assert got["color_flicker"] == pytest.approx(10.0, abs=0.02)


def test_metric_is_on_lowpassed_frames_and_keeps_old_keys():
    x = smooth_clip(3, 32, 32, seed=2)
    g = torch.Generator().manual_seed(3)
    noisy = (x + 0.2 * (torch.rand(x.shape, generator=g) - 0.5)).clamp(0, 1)
    m = M.video_metrics(noisy, reference=x, degraded=noisy)
    per_pixel = float(CD.delta_e_2000(CD.rgb_to_lab(noisy.double()), CD.rgb_to_lab(x.double())).mean())
    assert m["color_delta_e"] < 0.5 * per_pixel  # zero-mean noise mostly averages out in the 4x4 blocks
    assert m["color_delta_e_degraded"] == pytest.approx(m["color_delta_e"])
    for key in ("psnr", "ssim", "warping_error", "flicker", "flicker_lowpass", "psnr_degraded", "ssim_degraded"):
        assert key in m
    assert "color_delta_e" not in M.video_metrics(x)  # needs a reference
    with pytest.raises(ValueError, match="reference"):
        CD.color_metrics(x, x[:, :16])
