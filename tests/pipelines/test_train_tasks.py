"""pipelines.train_tasks: training pairs for task-prompt ControlNet fine-tuning (pure torch/numpy)."""
from __future__ import annotations

import pytest
import torch

from temporal_restore.pipelines import train_tasks as tt


def _images():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(1, 3, 80, 96, generator=g), torch.rand(1, 3, 70, 70, generator=g)]


def test_crops_shape_range_and_seeded():
    a = tt.random_crops(_images(), 6, 32, seed=3)
    b = tt.random_crops(_images(), 6, 32, seed=3)
    c = tt.random_crops(_images(), 6, 32, seed=4)
    assert a.shape == (6, 32, 32, 3) and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_task_pairs_round_robin_and_sizes():
    clean = tt.random_crops(_images(), 4, 32, seed=0)
    deg, names = tt.task_pairs(clean, ["denoise", "sr_x4"], seed=1)
    assert names == ["denoise", "sr_x4", "denoise", "sr_x4"]
    assert deg.shape == clean.shape
    assert (deg[0] - clean[0]).abs().mean() > 0.05  # sigma 25 noise
    # sr_x4 input: bicubic-upsampled 8x8 -> smooth, close to the clean crop in the mean
    assert abs(float(deg[1].mean() - clean[1].mean())) < 0.05
    with pytest.raises(ValueError, match="tasks"):
        tt.task_pairs(clean, ["nope"], seed=0)


def test_sd_sigmas_match_sd15_schedule():
    s = tt.sd_sigmas()
    assert s.shape == (1000,) and bool((s[1:] > s[:-1]).all())
    assert abs(float(s[0]) - 0.0292) < 1e-3 and abs(float(s[-1]) - 14.6146) < 1e-2


def test_noisy_input_and_loss_weighting():
    z = torch.zeros(2, 4, 2, 2)
    n = torch.ones(2, 4, 2, 2)
    s = torch.tensor([0.5, 3.0])
    x = tt.noisy_input(z, s, n)
    assert torch.allclose(x[1], torch.full_like(x[1], 3.0 / (10.0 ** 0.5)))
    e = torch.zeros_like(n)
    assert float(tt.eps_loss(e, n, s, "eps")) == pytest.approx(1.0)
    assert float(tt.eps_loss(e, n, s, "x0")) == pytest.approx((0.25 + 4.0) / 2)  # sigma^2 capped at 4


def test_every_task_has_one_prompt_and_a_node_label():
    """The prompts live once (pipelines.tasks): the trainers see the same objects, every task the demo is
    trained on can be picked in TR_TaskPromptControlNet (it has a combo label; labels are distinct), and
    the ablation's wrong prompt is another demo task's, a different string."""
    from temporal_restore.pipelines import tasks

    assert tt.TASK_PROMPTS is tasks.TASK_PROMPTS and tt.DEMO_TASKS is tasks.DEMO_TASKS
    assert set(tasks.NODE_LABELS) == set(tasks.TASK_PROMPTS)
    assert len(set(tasks.NODE_LABELS.values())) == len(tasks.NODE_LABELS)
    assert len(set(tasks.TASK_PROMPTS.values())) == len(tasks.TASK_PROMPTS)
    for task in tt.DEMO_TASKS:
        wrong = tt.WRONG_TASK[task]
        assert wrong in tt.DEMO_TASKS and tt.TASK_PROMPTS[wrong] != tt.TASK_PROMPTS[task], task


def test_heldout_images_never_in_training():
    assert not set(tt.HELDOUT_IMAGES) & set(tt.TRAIN_IMAGES)
    clip = tt.heldout_clip("astronaut", frames=3, size=32)
    assert clip.shape == (3, 32, 32, 3) and not torch.equal(clip[0], clip[1])
    with pytest.raises(ValueError, match="name"):
        tt.heldout_clip("coffee")


def test_prompt_pairs_off_task_targets_are_unchanged_inputs():
    """TPG with off-task prompts: a pair whose prompt does not name its degradation has the degraded crop as
    target; the others are (degraded, clean, the task's prompt) pairs."""
    clean = tt.random_crops(_images(), 24, 16, seed=0)
    deg, target, prompts = tt.prompt_pairs(clean, ["denoise", "deblur"], seed=5, off_task=0.5)
    ref_deg, names = tt.task_pairs(clean, ["denoise", "deblur"], seed=5)
    assert torch.equal(deg, ref_deg) and len(prompts) == 24
    off = [i for i, (p, n) in enumerate(zip(prompts, names)) if p != tt.TASK_PROMPTS[n]]
    assert 4 <= len(off) <= 20  # about half, seeded
    assert any(prompts[i] == "" for i in off) and any(prompts[i] in tt.TASK_PROMPTS.values() for i in off)
    for i in range(24):
        assert torch.equal(target[i], deg[i] if i in off else clean[i]), i
    again = tt.prompt_pairs(clean, ["denoise", "deblur"], seed=5, off_task=0.5)
    assert again[2] == prompts and torch.equal(again[1], target)
    assert tt.prompt_pairs(clean, ["denoise"], seed=5, off_task=0.0)[2] == [tt.TASK_PROMPTS["denoise"]] * 24
    with pytest.raises(ValueError, match="off_task"):
        tt.prompt_pairs(clean, ["denoise"], seed=5, off_task=1.0)


def test_stereo_training_images_are_bundled():
    img = tt.load_image("motorcycle_left")
    assert img.shape == (500, 741, 3) and img.dtype.name == "float32" and 0.0 <= img.min() and img.max() <= 1.0
    assert not (img == tt.load_image("motorcycle_right")).all()


def test_work_scale_round_trip_and_bad_scale():
    frames = tt.random_crops(_images(), 3, 16, seed=5)
    up = tt.to_work_scale(frames, 2)
    assert up.shape == (3, 32, 32, 3) and float(up.min()) >= 0.0 and float(up.max()) <= 1.0
    back = tt.from_work_scale(up, 2)
    assert back.shape == frames.shape
    # bicubic up then 2x2 area down is close to the identity (it only smooths a little)
    assert float((back - frames).abs().mean()) < 0.05
    assert tt.to_work_scale(frames, 1) is frames and tt.from_work_scale(frames, 1) is frames
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="scale"):
            tt.to_work_scale(frames, bad)
        with pytest.raises(ValueError, match="scale"):
            tt.from_work_scale(up, bad)


def test_sample_timesteps_focus():
    g = torch.Generator().manual_seed(0)
    plain = tt.sample_timesteps(4000, g)
    focused = tt.sample_timesteps(4000, torch.Generator().manual_seed(0), focus=300, focus_frac=0.75)
    assert 0 <= float(plain.min()) and float(plain.max()) <= 999
    assert 0.4 < float((plain < 500).float().mean()) < 0.6
    # 75% below 300 plus the uniform quarter's own 30% of that
    assert 0.78 < float((focused < 300).float().mean()) < 0.86 and float(focused.max()) > 300
