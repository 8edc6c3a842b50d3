"""SW-CFA (TDM Eq. 7-9) on small tensors."""
import pytest
import torch

from temporal_restore.pipelines import sw_cfa

HEADS = 2


def _qkv(chunks=2, frames=5, tokens=6, ch=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (chunks * frames, tokens, ch)
    return [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3)]


def naive_attention(q, k, v, heads):
    b, t, c = q.shape
    d = c // heads
    qh = q.reshape(b, t, heads, d).transpose(1, 2)
    kh = k.reshape(b, -1, heads, d).transpose(1, 2)
    vh = v.reshape(b, -1, heads, d).transpose(1, 2)
    w = torch.softmax(qh @ kh.transpose(-1, -2) / d ** 0.5, dim=-1)
    return (w @ vh).transpose(1, 2).reshape(b, t, c)


def naive_window_mean(x, n_chunks, radius, index=None):
    """Loop reference: each frame = mean of the frames of its chunk within |t_j - t_i| <= radius."""
    frames = x.shape[0] // n_chunks
    t = list(range(frames)) if index is None else list(index)
    xs = x.reshape(n_chunks, frames, *x.shape[1:])
    out = torch.empty_like(xs)
    for c in range(n_chunks):
        for i in range(frames):
            sel = [j for j in range(frames) if abs(t[j] - t[i]) <= radius]
            out[c, i] = torch.stack([xs[c, j] for j in sel]).mean(0)
    return out.reshape(x.shape)


def test_sdpa_matches_naive_attention():
    q, k, v = _qkv()
    torch.testing.assert_close(sw_cfa.sdpa_attention(q, k, v, HEADS), naive_attention(q, k, v, HEADS))


@pytest.mark.parametrize("mode", ["sw_cfa", "self"])
def test_radius_zero_is_self_attention(mode):
    q, k, v = [t.float() for t in _qkv()]
    out = sw_cfa.sw_cfa_attention(q, k, v, HEADS, n_chunks=2, mode=mode, radius=0)
    ref = sw_cfa.sdpa_attention(q, k, v, HEADS)
    assert (out - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("mode,radius", [("sw_cfa", 1), ("sw_cfa", 3), ("sw_cfa", 50), ("first_frame", 3), ("self", 3)])
def test_identical_frames_equal_self_attention(mode, radius):
    chunks, frames = 2, 6
    q1, k1, v1 = [t.float()[::frames] for t in _qkv(chunks, frames)]  # one frame per chunk
    rep = lambda t: t.repeat_interleave(frames, dim=0)
    q, k, v = rep(q1), rep(k1), rep(v1)
    out = sw_cfa.sw_cfa_attention(q, k, v, HEADS, n_chunks=chunks, mode=mode, radius=radius)
    ref = sw_cfa.sdpa_attention(q, k, v, HEADS)
    assert (out - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("mode", ["sw_cfa", "first_frame"])
def test_window_changes_output_on_distinct_frames(mode):
    q, k, v = _qkv()
    out = sw_cfa.sw_cfa_attention(q, k, v, HEADS, n_chunks=2, mode=mode, radius=2)
    ref = sw_cfa.sdpa_attention(q, k, v, HEADS)
    assert (out - ref).abs().max().item() > 1e-3


@pytest.mark.parametrize("mode", ["sw_cfa", "first_frame", "self"])
def test_cond_and_uncond_never_mix(mode):
    chunks, frames = 2, 5
    q, k, v = _qkv(chunks, frames)
    out = sw_cfa.sw_cfa_attention(q, k, v, HEADS, n_chunks=chunks, mode=mode, radius=3)
    # perturb the uncond chunk (first chunk) only
    k2, v2, q2 = k.clone(), v.clone(), q.clone()
    for t in (q2, k2, v2):
        t[:frames] += 10 * torch.randn_like(t[:frames])
    out2 = sw_cfa.sw_cfa_attention(q2, k2, v2, HEADS, n_chunks=chunks, mode=mode, radius=3)
    assert torch.equal(out[frames:], out2[frames:])
    assert not torch.allclose(out[:frames], out2[:frames])


@pytest.mark.parametrize("radius", [0, 1, 2, 4, 9])
@pytest.mark.parametrize("chunks", [1, 3])
def test_window_mean_equals_naive_reference(radius, chunks):
    (x, _, _) = _qkv(chunks, 7)
    torch.testing.assert_close(sw_cfa.window_mean(x, chunks, radius), naive_window_mean(x, chunks, radius))


def test_clip_ends_are_clipped_windows():
    # frames of value t: frame i's mean over the clipped window is known in closed form
    frames, radius = 6, 2
    x = torch.arange(frames, dtype=torch.float64).view(frames, 1, 1).expand(frames, 2, 3).contiguous()
    out = sw_cfa.window_mean(x, 1, radius)[:, 0, 0]
    expected = [sum(range(max(0, i - radius), min(frames - 1, i + radius) + 1))
                / (min(frames - 1, i + radius) - max(0, i - radius) + 1) for i in range(frames)]
    assert out.tolist() == pytest.approx(expected)
    assert out[0].item() == pytest.approx(1.0)  # frames 0,1,2
    assert out[-1].item() == pytest.approx(4.0)  # frames 3,4,5


@pytest.mark.parametrize("index", [[10, 11, 12, 13, 14], [3, 5, 7, 9, 11], [14, 10, 12, 11, 13], [0, 1, 2, 8, 9]])
def test_window_uses_absolute_frame_index(index):
    (x, _, _) = _qkv(2, 5)
    torch.testing.assert_close(sw_cfa.window_mean(x, 2, 2, index), naive_window_mean(x, 2, 2, index))


def test_contiguous_index_equals_positions():
    (x, _, _) = _qkv(2, 5)
    torch.testing.assert_close(sw_cfa.window_mean(x, 2, 2, [20, 21, 22, 23, 24]), sw_cfa.window_mean(x, 2, 2))


def test_first_frame_uses_smallest_index():
    chunks, frames = 2, 4
    q, k, v = _qkv(chunks, frames)
    index = [7, 5, 6, 8]
    kk, vv = sw_cfa.cross_frame_kv(k, v, chunks, "first_frame", index=index)
    for c in range(chunks):
        for i in range(frames):
            assert torch.equal(kk[c * frames + i], k[c * frames + 1])
            assert torch.equal(vv[c * frames + i], v[c * frames + 1])


def test_half_precision_window_mean_close():
    (x, _, _) = _qkv(1, 8)
    out = sw_cfa.window_mean(x.half(), 1, 3)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.double(), naive_window_mean(x, 1, 3), atol=2e-3, rtol=2e-3)


def test_pluggable_attention_is_called_with_averaged_kv():
    q, k, v = _qkv(1, 4)
    seen = {}

    def attn(q_, k_, v_, heads):
        seen["k"], seen["heads"] = k_, heads
        return q_

    out = sw_cfa.sw_cfa_attention(q, k, v, 2, n_chunks=1, radius=1, attention=attn)
    assert out is q and seen["heads"] == 2
    torch.testing.assert_close(seen["k"], naive_window_mean(k, 1, 1))


def test_bad_inputs_raise_value_error():
    q, k, v = _qkv(2, 3)
    with pytest.raises(ValueError, match="mode"):
        sw_cfa.sw_cfa_attention(q, k, v, HEADS, n_chunks=2, mode="bogus")
    with pytest.raises(ValueError, match="radius"):
        sw_cfa.sw_cfa_attention(q, k, v, HEADS, n_chunks=2, radius=-1)
    with pytest.raises(ValueError, match="n_chunks"):
        sw_cfa.window_mean(k, 4, 1)
    with pytest.raises(ValueError, match="index"):
        sw_cfa.window_mean(k, 2, 1, index=[0, 1])


@pytest.mark.parametrize("block", [1, 5, 16, 64])
def test_window_mean_blocks_match_naive(block):
    frames = 37
    x = torch.randn(2 * frames, 3, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(sw_cfa.window_mean(x, 2, 3, block=block), naive_window_mean(x, 2, 3))
    perm = torch.randperm(frames, generator=torch.Generator().manual_seed(4)).tolist()
    torch.testing.assert_close(sw_cfa.window_mean(x, 2, 3, index=perm, block=block), naive_window_mean(x, 2, 3, perm))


def test_window_weights_rows_sum_to_one_and_are_banded():
    w = sw_cfa.window_weights(10, 2, dtype=torch.float64)
    torch.testing.assert_close(w.sum(1), torch.ones(10, dtype=torch.float64))
    assert (w[0, :3] > 0).all() and (w[0, 3:] == 0).all()
    assert w[5, 3:8].tolist() == pytest.approx([0.2] * 5)
