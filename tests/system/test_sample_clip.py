"""The bundled sample clip (samples/sample_clip.mp4) and its ground truth (sample_clip_gt.npz)."""
import os

import numpy as np
import pytest
import torch

from temporal_restore.pipelines import metrics as M
from temporal_restore.pipelines import synthetic as S


def test_ground_truth_file_round_trip(tmp_path):
    pytest.importorskip("skimage")
    c = S.make_clip("coffee", 4, 32, 48, "mixed", seed=9)
    p = str(tmp_path / "gt.npz")
    S.save_ground_truth(p, c, fps=8)
    back = S.load_ground_truth(p)
    u8 = (c.frames * 255).round() / 255
    assert torch.equal(back.frames, u8)  # lossless 8-bit frames
    assert float((back.flow - c.flow).abs().max()) <= 0.5 / S.FLOW_QUANT + 1e-6
    assert float((back.flow_bwd - c.flow_bwd).abs().max()) <= 0.5 / S.FLOW_QUANT + 1e-6
    assert torch.equal(back.occlusion, c.occlusion) and torch.equal(back.disocclusion, c.disocclusion)
    assert torch.equal(back.object_mask, c.object_mask)
    assert back.info["fps"] == 8 and back.info["image"] == "coffee"


def test_bundled_clip_has_video_audio_and_matching_ground_truth(sample_clip):
    import av

    assert os.path.getsize(sample_clip) < 1_000_000
    with av.open(sample_clip) as c:
        kinds = sorted(s.type for s in c.streams)
        assert kinds == ["audio", "video"]
        v = c.streams.video[0]
        assert v.codec_context.name == "h264" and v.codec_context.pix_fmt == "yuv420p"
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    with av.open(sample_clip) as c:
        audio = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=-1)
    assert 0 < float(np.abs(audio).max()) < 0.2  # a quiet tone, not silence
    gt = S.load_ground_truth(os.path.join(os.path.dirname(sample_clip), "sample_clip_gt.npz"))
    assert frames.shape == tuple(gt.frames.shape)
    assert gt.flow.shape == (frames.shape[0] - 1, 2) + frames.shape[1:3]
    dec = torch.from_numpy(frames).float() / 255
    assert M.psnr(dec, gt.frames) > 30  # the mp4 is a close copy of the clean frames
    true = M.warping_error(dec, gt.flow, gt.occlusion)
    zero = M.warping_error(dec, torch.zeros_like(gt.flow), gt.occlusion)
    assert true < 0.25 * zero
