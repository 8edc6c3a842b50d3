"""pipelines/synthetic: clips with exact flow and occlusion ground truth."""
import sys

import pytest
import torch

pytest.importorskip("skimage")

from temporal_restore.pipelines import flow as FL  # noqa: E402
from temporal_restore.pipelines import metrics as M  # noqa: E402
from temporal_restore.pipelines import synthetic as S  # noqa: E402


def test_shapes_dtypes_and_range():
    c = S.make_clip("coffee", frames=5, height=32, width=48, motion="mixed", seed=0)
    assert c.frames.shape == (5, 32, 48, 3) and c.frames.dtype == torch.float32
    assert float(c.frames.min()) >= 0 and float(c.frames.max()) <= 1
    assert c.flow.shape == (4, 2, 32, 48) and c.flow.dtype == torch.float32
    assert c.flow_bwd.shape == (4, 2, 32, 48)
    assert c.occlusion.shape == (4, 32, 48) and c.occlusion.dtype == torch.bool
    assert c.disocclusion.shape == (4, 32, 48) and c.disocclusion.dtype == torch.bool
    assert c.object_mask.shape == (5, 32, 48)
    assert 0 < float(c.object_mask.float().mean()) < 0.5
    assert float(c.frames.std()) > 0.05  # a real picture, not a flat field


def test_deterministic_with_seed():
    a = S.make_clip("chelsea", 4, 32, 32, "mixed", seed=5)
    b = S.make_clip("chelsea", 4, 32, 32, "mixed", seed=5)
    c = S.make_clip("chelsea", 4, 32, 32, "mixed", seed=6)
    assert torch.equal(a.frames, b.frames) and torch.equal(a.flow, b.flow)
    assert torch.equal(a.occlusion, b.occlusion)
    assert not torch.equal(a.frames, c.frames)


def test_integer_pan_is_an_exact_shift():
    dx, dy = 2, 1
    c = S.make_clip("astronaut", 3, 32, 48, "pan", seed=0, pan=(dx, dy), moving_object=False)
    assert torch.allclose(c.flow[:, 0], torch.full_like(c.flow[:, 0], float(dx)), atol=1e-9)
    assert torch.allclose(c.flow[:, 1], torch.full_like(c.flow[:, 1], float(dy)), atol=1e-9)
    f = c.frames
    # content at p in frame t sits at p + (dx, dy) in frame t+1
    assert torch.allclose(f[0, : 32 - dy, : 48 - dx], f[1, dy:, dx:], atol=1e-5)
    # only pixels that leave the frame are occluded: the last dx columns and dy rows
    occ = c.occlusion[0]
    assert bool(occ[:, -dx:].all()) and bool(occ[-dy:, :].all())
    assert not bool(occ[: 32 - dy, : 48 - dx].any())


@pytest.mark.parametrize("motion", ["pan", "zoom", "rotate", "mixed"])
def test_true_flow_explains_the_motion(motion):
    c = S.make_clip("astronaut", 6, 48, 64, motion, seed=2)
    true_err = M.warping_error(c.frames, c.flow, c.occlusion)
    zero_err = M.warping_error(c.frames, torch.zeros_like(c.flow), c.occlusion)
    assert true_err < 0.35 * zero_err, (true_err, zero_err)
    assert true_err < 0.01


def test_object_translates_with_its_velocity():
    v = (3.0, -1.5)
    c = S.make_clip("rocket", 4, 48, 64, "static", seed=1, object_velocity=v)
    m = c.object_mask
    assert torch.allclose(c.flow[0, 0][m[0]], torch.full_like(c.flow[0, 0][m[0]], v[0]))
    assert torch.allclose(c.flow[0, 1][m[0]], torch.full_like(c.flow[0, 1][m[0]], v[1]))
    # the background of a static camera does not move
    assert float(c.flow[0][:, ~m[0]].abs().max()) < 1e-9
    ys, xs = torch.meshgrid(torch.arange(48.0), torch.arange(64.0), indexing="ij")
    cx = [float(xs[m[t]].mean()) for t in range(4)]
    cy = [float(ys[m[t]].mean()) for t in range(4)]
    assert abs((cx[3] - cx[0]) / 3 - v[0]) < 0.5 and abs((cy[3] - cy[0]) / 3 - v[1]) < 0.5


def test_occlusion_marks_covered_background_and_disocclusion_the_uncovered():
    v = (4.0, 0.0)
    c = S.make_clip("astronaut", 3, 48, 64, "static", seed=3, object_velocity=v)
    m0, m1 = c.object_mask[0], c.object_mask[1]
    covered = m1 & ~m0  # background in frame 0 that the object covers in frame 1
    uncovered = m0 & ~m1  # frame-1 background that frame 0's object hid
    assert covered.sum() > 0 and uncovered.sum() > 0
    assert bool(c.occlusion[0][covered].all())
    assert bool(c.disocclusion[0][uncovered].all())
    # far from the object nothing is occluded with a static camera
    far = ~(torch.nn.functional.max_pool2d((m0 | m1)[None, None].float(), 7, 1, 3)[0, 0] > 0)
    assert not bool(c.occlusion[0][far].any())
    assert not bool(c.disocclusion[0][far].any())
    # the object interior is not occluded (it is visible in both frames)
    inner = -torch.nn.functional.max_pool2d(-m0[None, None].float(), 5, 1, 2)[0, 0] > 0
    assert not bool(c.occlusion[0][inner].any())


def test_forward_and_backward_ground_truth_agree():
    c = S.make_clip("coffee", 4, 32, 48, "mixed", seed=4)
    occ = FL.fb_check(c.flow.double(), c.flow_bwd.double())[:, 0] > 0.5
    valid = ~c.occlusion
    # the FB check of the exact flows fails only where the ground truth says occluded
    assert float((occ & valid).float().sum()) / float(valid.float().sum()) < 0.01


def test_bad_sizes_and_names():
    with pytest.raises(ValueError, match="height"):
        S.make_clip("astronaut", 4, 60, 64)
    with pytest.raises(ValueError, match="width"):
        S.make_clip("astronaut", 4, 64, 12)
    with pytest.raises(ValueError, match="image"):
        S.make_clip("lena", 4, 32, 32)
    with pytest.raises(ValueError, match="motion"):
        S.make_clip("astronaut", 4, 32, 32, motion="dolly")


def test_missing_scikit_image_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)
    with pytest.raises(ImportError, match="scikit-image"):
        S.load_image("astronaut")


def test_flow_field_carries_the_ground_truth():
    c = S.make_clip("astronaut", 4, 32, 48, "pan", seed=0, moving_object=False)
    ff = c.flow_field()
    assert ff.num_frames == 4 and (ff.height, ff.width) == (32, 48)
    assert torch.equal(ff.forward, c.flow) and torch.equal(ff.backward, c.flow_bwd)
    assert torch.equal(ff.occlusion_fwd[:, 0] > 0.5, c.occlusion)
    assert torch.equal(ff.occlusion_bwd[:, 0] > 0.5, c.disocclusion)
    # chaining two neighbour steps gives the exact two-frame pan on pixels visible throughout
    f02, occ, _ = ff.between(0, 2)
    pan = torch.tensor(c.info["pan"]).view(2, 1, 1)
    vis = occ[0] < 0.5
    assert torch.allclose(f02[:, vis], (2 * pan).expand(2, 32, 48)[:, vis], atol=1e-4)
