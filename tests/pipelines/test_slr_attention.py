"""ZVRD SLR temporal attention (Eq. 5-7): pure pipeline tests."""
import pytest
import torch

from temporal_restore.pipelines import slr_attention as slr
from temporal_restore.pipelines.sw_cfa import sdpa_attention

from flow_helpers import translation_flow


def g(seed):
    return torch.Generator().manual_seed(seed)


def test_identical_frames_equal_stock_attention():
    F_, N, C, heads = 4, 16, 8, 2
    one = torch.randn(3, 1, N, C, generator=g(0))
    q, k, v = (one[i].expand(F_, N, C).contiguous() for i in range(3))
    out = slr.cross_neighbour_attention(q, k, v, heads)
    ref = sdpa_attention(q, k, v, heads)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_single_frame_is_self_attention_and_different_frames_differ():
    q, k, v = (torch.randn(1, 9, 8, generator=g(i)) for i in range(3))
    torch.testing.assert_close(slr.cross_neighbour_attention(q, k, v, 2), sdpa_attention(q, k, v, 2))
    q, k, v = (torch.randn(3, 9, 8, generator=g(i)) for i in range(3))
    out = slr.cross_neighbour_attention(q, k, v, 2)
    assert not torch.allclose(out, sdpa_attention(q, k, v, 2), atol=1e-4)
    # frame 1 attends to frames 0 and 2 only: equals attention on their concatenated K/V
    ref1 = sdpa_attention(q[1:2], torch.cat([k[0:1], k[2:3]], 1), torch.cat([v[0:1], v[2:3]], 1), 2)
    torch.testing.assert_close(out[1:2], ref1)


def test_cfg_chunks_and_frame_groups_match_per_chunk_attention(monkeypatch):
    """Two CFG chunks in one batch: each frame's neighbours come from its own chunk, and splitting the
    attention into small frame groups (the cache budget) changes nothing."""
    F_, N, C, heads = 5, 12, 8, 2
    q, k, v = (torch.randn(2 * F_, N, C, generator=g(50 + i)) for i in range(3))
    idx = [3, 4, 5, 7, 8]
    per_chunk = torch.cat([slr.cross_neighbour_attention(q[s], k[s], v[s], heads, idx)
                           for s in (slice(0, F_), slice(F_, 2 * F_))])
    torch.testing.assert_close(slr.cross_neighbour_attention(q, k, v, heads, idx, chunks=2), per_chunk)
    monkeypatch.setattr(slr, "SCORE_BUDGET", heads * N * 2 * N * 3)  # groups of 3 frames across the chunk seam
    torch.testing.assert_close(slr.cross_neighbour_attention(q, k, v, heads, idx, chunks=2), per_chunk)
    with pytest.raises(ValueError, match="chunks"):
        slr.cross_neighbour_attention(q, k, v, heads, idx, chunks=3)


def test_neighbour_positions_respect_absolute_indices():
    prev, nxt = slr.neighbour_positions([4, 5, 7, 8])
    assert prev == [0, 0, 2, 2]   # 4 has no 3 in the batch; 7 has no 6
    assert nxt == [1, 1, 3, 3]
    with pytest.raises(ValueError, match="frame_index"):
        slr.neighbour_positions([1, 1])


def shifted_pair(h=12, w=12, shift=2, seed=0):
    """frame 1 = frame 0 moved right by `shift`: token p of frame 1 matches p - shift in frame 0."""
    f0 = torch.rand(1, 3, h, w, generator=g(seed))
    f1 = torch.roll(f0, shifts=shift, dims=-1)
    return f0, f1


def test_choose_displacement_picks_lower_warp_error():
    h, w, s = 12, 12, 2
    f0, f1 = shifted_pair(h, w, s)
    right = torch.zeros(1, 2, h, w, dtype=torch.long)
    right[:, 0] = -s                         # the true match of frame 1 in frame 0
    wrong = torch.zeros(1, 2, h, w, dtype=torch.long)
    wrong[:, 0] = -s + 1
    wrong[:, 1] = 1
    best, which = slr.choose_displacement(f1, f0, [wrong, right], patch_radius=1)
    interior = (slice(None), slice(2, h - 2), slice(s + 2, w - 2))
    assert (which[interior] == 1).all()
    assert torch.equal(best[:, :, 2:h - 2, s + 2:w - 2], right[:, :, 2:h - 2, s + 2:w - 2])
    # swapping the order does not change the winner
    best2, which2 = slr.choose_displacement(f1, f0, [right, wrong], patch_radius=1)
    assert (which2[interior] == 0).all()
    # the error really is lower for the chosen one
    e_r = slr.warp_error(f1, f0, right)[interior]
    e_w = slr.warp_error(f1, f0, wrong)[interior]
    assert (e_r < e_w).all()


def test_similarity_finds_shift_and_tracker_corrects_bad_flow():
    T, h, w, s, C = 3, 10, 10, 1, 16
    base = torch.randn(1, C, h, w + 4 * s, generator=g(3))
    feats = torch.cat([base[..., i * s:i * s + w] for i in range(T)])  # content moves left by s per frame
    rgb = torch.cat([base[:, :3, :, i * s:i * s + w] for i in range(T)]).sigmoid()
    k = feats.flatten(2).transpose(1, 2).contiguous()  # [T,N,C]
    disp = slr.similarity_displacement(k[1:], k[:-1], h, w, radius=2)
    # token p of frame t+1 shows what frame t showed at p + s
    assert (disp[:, 0, :, : w - s] == s).all() and (disp[:, 1, :, : w - s] == 0).all()
    bad = translation_flow(T, h, w, 3.0, 2.0)  # a wrong flow
    tracker = slr.TrajectoryTracker(search_radius=2, patch_radius=1)
    traj, counts = tracker.select(k, rgb, [bad], key="c")
    assert counts["similarity"] > counts["flow"]
    # trajectory of frame 0 token (y=4, x=5) lands on x=4 in frame 1 and x=3 in frame 2
    p = 4 * w + 5
    assert traj[0, 1, p] == 4 * w + 4 and traj[0, 2, p] == 4 * w + 3
    assert traj[2, 0, 4 * w + 3] == p
    # second call: the historical best is a candidate and wins (it is the previous best)
    traj2, counts2 = tracker.select(k, rgb, [bad], key="c")
    assert counts2["history"] > 0
    assert torch.equal(traj, traj2)


def test_chain_and_trajectory_attention_reference():
    T, N, C, heads = 3, 6, 4, 2
    back = torch.stack([torch.randperm(N, generator=g(i)) for i in range(T - 1)])
    fwd = torch.stack([torch.randperm(N, generator=g(10 + i)) for i in range(T - 1)])
    traj = slr.chain_trajectories(back, fwd)
    assert torch.equal(traj[2, 1], back[1]) and torch.equal(traj[2, 0], back[0][back[1]])
    assert torch.equal(traj[0, 2], fwd[1][fwd[0]])
    qh, k, v = (torch.randn(T, N, C, generator=g(20 + i)) for i in range(3))
    out = slr.trajectory_attention(qh, k, v, traj, heads)
    d = C // heads
    for i in range(T):
        for p in range(N):
            others = [j for j in range(T) if j != i]
            kk = torch.stack([k[j, traj[i, j, p]] for j in others]).view(-1, heads, d)
            vv = torch.stack([v[j, traj[i, j, p]] for j in others]).view(-1, heads, d)
            qq = qh[i, p].view(heads, d)
            wts = torch.softmax(torch.einsum("hd,mhd->hm", qq, kk) / d ** 0.5, -1)
            ref = torch.einsum("hm,mhd->hd", wts, vv).reshape(C)
            torch.testing.assert_close(out[i, p], ref, rtol=1e-5, atol=1e-5)


def test_slr_layer_gates_on_progress_and_x0():
    T, h, w, C, heads = 3, 8, 8, 8, 2
    q, k, v = (torch.randn(T, h * w, C, generator=g(30 + i)) for i in range(3))
    layer = slr.SLRAttention(trajectory_start=0.5, x0_flow=False)
    layer.new_run("run1")
    eq5 = slr.cross_neighbour_attention(q, k, v, heads)
    args = dict(heads=heads, frame_index=[0, 1, 2], chunk=0, hw=(h, w))
    torch.testing.assert_close(layer(q, k, v, progress=0.9, largest=True, **args), eq5)  # no x0 yet
    layer.record_x0(torch.randn(T, 4, h, w, generator=g(40)), (0, 1, 2))
    torch.testing.assert_close(layer(q, k, v, progress=0.2, largest=True, **args), eq5)  # before T_TA
    torch.testing.assert_close(layer(q, k, v, progress=0.9, largest=False, **args), eq5)  # not largest res
    out = layer(q, k, v, progress=0.9, largest=True, **args)
    assert not torch.allclose(out, eq5, atol=1e-4)
    assert layer.trajectory_calls == 1
    layer.new_run("run2")  # a new run forgets the x0
    torch.testing.assert_close(layer(q, k, v, progress=0.9, largest=True, **args), eq5)


def test_x0_flow_on_preview_recovers_motion():
    T, h, w = 2, 16, 16
    yy, xx = torch.meshgrid(torch.arange(h + 8.0), torch.arange(w + 8.0), indexing="ij")
    tex = torch.stack([torch.sin(xx * 0.9) * torch.cos(yy * 0.7), torch.cos(xx * 0.5 + yy * 0.3),
                       torch.sin(yy * 1.1), torch.cos(xx * 1.3)])
    lat = torch.stack([tex[:, 2:2 + h, 2:2 + w], tex[:, 2:2 + h, 3:3 + w]]) * 2  # moves left by 1 latent px
    rgb = slr.latent_to_rgb(lat)
    assert rgb.shape == (T, 3, h, w) and rgb.min() >= 0 and rgb.max() <= 1
    fl = slr.preview_flow(rgb)
    assert (fl.height, fl.width) == (h, w)
    inner = fl.forward[0, 0, 4:-4, 4:-4]
    assert abs(inner.median().item() + 1.0) < 0.3, inner.median()


def test_bad_inputs():
    layer = slr.SLRAttention(input_flow=translation_flow(2, 4, 4, 0.0))
    q = torch.zeros(3, 16, 4)
    with pytest.raises(ValueError, match="flow: .*2 frames"):
        layer(q, q, q, 1, [0, 1, 2], chunk=0, hw=(4, 4), progress=0.0, largest=False)
    with pytest.raises(ValueError, match="trajectory_start"):
        slr.SLRAttention(trajectory_start=2.0)
    with pytest.raises(ValueError, match="factors"):
        slr.latent_to_rgb(torch.zeros(1, 16, 4, 4))
    with pytest.raises(ValueError, match="q/k/v"):
        slr.cross_neighbour_attention(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), 1)
