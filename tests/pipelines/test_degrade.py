"""pipelines/degrade: seeded, deterministic clip degradations."""
import numpy as np
import pytest
import torch

from temporal_restore.pipelines import degrade as D


def smooth_clip(t=4, h=32, w=48, seed=0):
    """A textured but smooth random clip [T,H,W,3] in 0.1..0.9 (no skimage needed)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(t, 3, h // 4, w // 4, generator=g)
    x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return (0.1 + 0.8 * x).permute(0, 2, 3, 1).contiguous()


def psnr(a, b):
    return float(10 * torch.log10(1 / ((a.double() - b.double()) ** 2).mean()))


@pytest.mark.parametrize("task", sorted(D.TASKS))
def test_every_task_shape_range_and_effect(task):
    x = smooth_clip()
    y = D.degrade(x, task, seed=3)
    t, h, w, _ = x.shape
    s = {"sr_x2": 2, "sr_x4": 4}.get(task, 1)
    assert y.shape == (t, h // s, w // s, 3)
    assert y.dtype == torch.float32
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    if s == 1:
        assert float((y - x).abs().mean()) > 1e-3, f"{task} did not change the clip"


@pytest.mark.parametrize("task", sorted(D.TASKS))
def test_same_seed_bit_identical(task):
    x = smooth_clip()
    strength = 10.0 if task.startswith("sr_") else None  # make the SR noise (seeded) active
    a = D.degrade(x, task, strength, seed=11)
    b = D.degrade(x, task, strength, seed=11)
    assert torch.equal(a, b)


@pytest.mark.parametrize("task", ["denoise", "derain", "dehaze", "low_light", "sr_x2"])
def test_different_seed_differs(task):
    x = smooth_clip()
    strength = 10.0 if task == "sr_x2" else None
    assert not torch.equal(D.degrade(x, task, strength, seed=1), D.degrade(x, task, strength, seed=2))


def test_no_global_rng_use():
    torch.manual_seed(123)
    np.random.seed(123)
    ts, ns = torch.get_rng_state(), np.random.get_state()[1].copy()
    x = smooth_clip()
    for task in ("denoise", "derain", "dehaze", "low_light"):
        D.degrade(x, task, seed=5)
    assert torch.equal(torch.get_rng_state(), ts)
    assert np.array_equal(np.random.get_state()[1], ns)


@pytest.mark.parametrize("task", ["denoise", "low_light"])
def test_sensor_noise_independent_across_frames(task):
    x = torch.full((4, 64, 64, 3), 0.5)
    y = D.degrade(x, task, seed=7).double()
    # constant input: the noise is the deviation from each frame's own mean
    n = (y - y.mean(dim=(1, 2, 3), keepdim=True)).reshape(4, -1)
    assert float(n[0].std()) > 0.01
    c = torch.corrcoef(n)
    off = c[~torch.eye(4, dtype=torch.bool)]
    # 12288 samples per frame: the correlation of independent noise has std ~0.009
    assert float(off.abs().max()) < 0.05, c


def test_gaussian_noise_sigma_on_255_scale():
    x = torch.full((2, 64, 64, 3), 0.5)
    y = D.degrade(x, "denoise", 25, seed=0)
    assert abs(float((y - x).std()) * 255 - 25) < 25 * 0.03
    assert abs(float((y - x).mean())) < 0.005


def test_blur_strength_zero_is_identity_and_blur_smooths():
    x = smooth_clip() + 0.05 * torch.randn(4, 32, 48, 3, generator=torch.Generator().manual_seed(0))
    x = x.clamp(0, 1)
    assert torch.allclose(D.degrade(x, "deblur", 0), x)
    y = D.degrade(x, "deblur", 2.0)

    def tv(z):
        return float((z[:, 1:] - z[:, :-1]).abs().mean() + (z[:, :, 1:] - z[:, :, :-1]).abs().mean())

    assert tv(y) < 0.5 * tv(x)


def test_downscale_sizes_floor_and_constant_preserved():
    x = torch.full((2, 30, 44, 3), 0.25)
    y = D.degrade(x, "sr_x4")
    assert y.shape == (2, 7, 11, 3)
    assert torch.allclose(y, torch.full_like(y, 0.25), atol=1e-6)
    z = D.degrade(smooth_clip(), "sr_x2")
    assert z.shape == (4, 16, 24, 3)


def test_jpeg_quality_orders_psnr():
    x = smooth_clip(2, 64, 64) + 0.1 * torch.randn(2, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    x = x.clamp(0, 1)
    assert psnr(D.degrade(x, "jpeg", 90), x) > psnr(D.degrade(x, "jpeg", 10), x) + 3


def test_video_codec_roundtrip_frame_count_odd_size_and_crf_order():
    x = smooth_clip(5, 31, 45)
    lo = D.degrade(x, "video_codec", 18)
    hi = D.degrade(x, "video_codec", 45)
    assert lo.shape == x.shape and hi.shape == x.shape
    assert psnr(lo, x) > psnr(hi, x)
    m = D.degrade(x, "video_codec", codec="mpeg4", bitrate=100)
    assert m.shape == x.shape


def test_haze_moves_towards_airlight_and_lowers_contrast():
    x = smooth_clip()
    y = D.degrade(x, "dehaze", 2.0, seed=0)
    assert float(y.mean()) > float(x.mean())
    assert float(y.std()) < float(x.std())
    assert torch.allclose(D.degrade(x, "dehaze", 0.0), x, atol=1e-6)


def test_rain_only_brightens_and_moves_across_frames():
    x = torch.zeros(3, 48, 64, 3)
    y = D.degrade(x, "derain", 0.8, seed=2)
    assert float(y.min()) >= 0.0
    assert float((y > 0.05).float().mean()) > 0.01  # streaks exist
    assert not torch.equal(y[0], y[1])  # rain falls: the layer changes between frames
    z = smooth_clip(3, 48, 64)
    assert bool((D.degrade(z, "derain", 0.8, seed=2) >= z - 1e-6).all())


def test_low_light_darkens():
    x = smooth_clip()
    assert float(D.degrade(x, "low_light", 0.8, seed=0).mean()) < 0.6 * float(x.mean())


def test_bad_inputs_name_the_input():
    x = smooth_clip()
    with pytest.raises(ValueError, match="task"):
        D.degrade(x, "sharpen")
    with pytest.raises(ValueError, match="frames"):
        D.degrade(x[..., 0], "denoise")
    with pytest.raises(ValueError, match="frames"):
        D.degrade(x.permute(0, 3, 1, 2), "denoise")
    with pytest.raises(ValueError, match="strength"):
        D.degrade(x, "jpeg", 0)
    with pytest.raises(ValueError, match="strength"):
        D.degrade(x, "derain", 2.0)
    with pytest.raises(ValueError, match="params"):
        D.degrade(x, "denoise", bitrate=3)
    with pytest.raises(ValueError, match="codec"):
        D.degrade(x, "video_codec", codec="vp9")
