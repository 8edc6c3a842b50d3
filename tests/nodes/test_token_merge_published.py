"""DiffIR2VR-Zero token merging as published (issue 18): merge-level gating, replace-merge against a naive
reference, and the keyframe plan shared by TR_LatentWarp and TR_TokenMerge."""
import pytest
import torch

from temporal_restore.pipelines import latent_warp as lw
from temporal_restore.pipelines import token_merge as tm


def _naive_level(block, h, latent_h):
    """The official code's rule written out: downsample = latent / grid; merge iff 0 < downsample <= 2,
    and the middle block never (it runs at the lowest resolution)."""
    if block[0] == "middle":
        return False
    return latent_h // h in (1, 2)


@pytest.mark.parametrize("block", [("input", 1), ("input", 4), ("input", 7), ("middle", 0), ("output", 3),
                                   ("output", 6), ("output", 11)])
@pytest.mark.parametrize("grid", [64, 32, 16, 8])
def test_merge_levels_match_official_rule(block, grid):
    assert tm.merge_level(block, grid, grid, 64, 64) == _naive_level(block, grid, 64)
    assert tm.merge_level(block, grid, grid, 64, 64, "all")
    with pytest.raises(ValueError, match="levels"):
        tm.merge_level(block, grid, grid, 64, 64, "some")


def test_replace_merge_matches_naive_reference():
    """Replace-merge: the merged sequence of a chunk is the keyframe's tokens (unchanged) followed by the
    kept source tokens; unmerge copies each merged source's target output back (checked token by token)."""
    F, h, w, C = 4, 5, 5, 6
    N = h * w
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2 * F, N, C, generator=g)  # two cond/uncond chunks
    merge, unmerge = tm.plan_merge(x, 2, h, w, range(F), 0.5, chunk_size=F, mode="cosine", keyframe_mode="middle",
                                   merge_mode="replace")
    m = merge(x)
    key = F // 2  # middle keyframe of the one frame chunk
    m_mean = tm.plan_merge(x, 2, h, w, range(F), 0.5, chunk_size=F, mode="cosine", keyframe_mode="middle")[0](x)
    for c in range(2):
        xs = x[c * F:(c + 1) * F]
        srcs = [p for p in range(F) if p != key]
        index, score = tm.cosine_matches(xs[srcs], xs[key], h, w)
        n_merge = int(0.5 * (F - 1) * N)
        order = torch.argsort(score.reshape(-1), descending=True, stable=True)
        merged = set(order[:n_merge].tolist())
        kept = [x_ for x_ in range(len(srcs) * N) if x_ not in merged]
        ref = torch.cat([xs[key]] + [xs[srcs[k // N], k % N][None] for k in kept])
        assert torch.equal(m[c], ref)
        # mean-merge differs exactly on the keyframe tokens that received sources
        targets = {int(index.reshape(-1)[k]) for k in merged}
        diff = (m_mean[c, :N] - ref[:N]).abs().amax(-1) > 1e-6
        assert set(torch.nonzero(diff).flatten().tolist()) == targets
        # unmerge: a merged source takes its target's output, a kept one its own, the keyframe its own
        y = torch.randn_like(m)
        out = unmerge(y)[c * F:(c + 1) * F]
        assert torch.equal(out[key], y[c, :N])
        for s, k in enumerate(range(len(srcs) * N)):
            src_frame, tok = srcs[k // N], k % N
            expect = y[c, int(index.reshape(-1)[k])] if k in merged else y[c, N + kept.index(k)]
            assert torch.equal(out[src_frame, tok], expect)


def test_replace_merge_rejects_missing_owner():
    with pytest.raises(ValueError, match="owner"):
        tm.make_merge(torch.zeros(2, 3, dtype=torch.long), 1, 3, "replace")
    with pytest.raises(ValueError, match="merge_mode"):
        tm.make_merge(torch.zeros(2, 3, dtype=torch.long), 1, 3, "max")


@pytest.mark.parametrize("total", [8, 16, 25, 30])
def test_shared_keyframe_plan(total, comfy_host):
    """With their defaults both nodes pick the same keyframes: one middle frame per batch of 10 (the last,
    shorter batch's middle too), for the whole clip and for any window of it."""
    from temporal_restore.nodes import latent_warp as lw_node
    from temporal_restore.nodes import token_merge as tm_node

    warp_cfg = lw_node.LatentWarpConfig(None, lw.DEFAULT_FRACTION, lw.DEFAULT_BATCH, lw.DEFAULT_KEYFRAME_MODE, 0, 1.0)
    merge_cfg = tm_node.TokenMergeConfig()
    assert (warp_cfg.batch_size, warp_cfg.keyframe_mode) == (merge_cfg.chunk_size, merge_cfg.keyframe_mode) == (10, "middle")
    schema = {i.id: getattr(i, "default", None) for i in lw_node.LatentWarp.define_schema().inputs}
    assert (schema["batch_size"], schema["keyframe_mode"]) == (10, "middle")
    assert schema["fraction"] == lw.DEFAULT_FRACTION == lw.PUBLISHED_FRACTION == 0.1
    schema = {i.id: getattr(i, "default", None) for i in tm_node.TokenMerge.define_schema().inputs}
    assert (schema["chunk_size"], schema["keyframe_mode"], schema["merge_mode"], schema["levels"]) == \
        (10, "middle", "replace", "top2")
    expect = {b: b * 10 + min(10, total - b * 10) // 2 for b in range(-(-total // 10))}
    for frames in (list(range(total)), list(range(min(4, total), total))):
        warp_keys = lw.choose_keyframes(frames, warp_cfg.batch_size, warp_cfg.keyframe_mode, 0, total)
        groups = tm.frame_groups(frames, merge_cfg.chunk_size, merge_cfg.keyframe_mode, 0, total)
        merge_keys = {frames[k] // 10: frames[k] for k, _ in groups}
        assert merge_keys == warp_keys
        if frames[0] == 0:
            assert warp_keys == expect


@pytest.mark.parametrize("levels", ["top2", "all"])
def test_node_patch_merges_only_gated_layers(levels, comfy_host):
    """The attn1 patch TR_TokenMerge installs merges exactly where the official rule says (``top2``), or
    everywhere (``all``): called as ComfyUI calls it, on a 16x16 latent of 4 frames."""
    from temporal_restore.nodes import token_merge as tm_node

    cfg = tm_node.TokenMergeConfig(None, 0.75, 4, "middle", levels=levels)
    for block, grid in [(("input", 1), 16), (("input", 4), 8), (("input", 7), 4), (("middle", 0), 2),
                        (("output", 3), 2), (("output", 6), 4), (("output", 9), 8), (("output", 11), 16)]:
        x = torch.randn(4, grid * grid, 8)
        opts = {"temporal_restore": {"token_merge": cfg}, "block": block, "original_shape": [4, 4, 16, 16],
                "activations_shape": [4, 8, grid, grid], "cond_or_uncond": [0]}
        q, k, v = tm_node.token_merge_attn1_patch(x, x, x, opts)
        merged = q.shape != x.shape
        expect = True if levels == "all" else _naive_level(block, grid, 16)
        assert merged == expect, (block, grid)
        out = tm_node.token_merge_attn1_output_patch(q, opts)
        assert out.shape == x.shape
