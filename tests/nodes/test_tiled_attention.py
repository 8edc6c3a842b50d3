"""TR_TiledSampling bounds the attention score blocks of a tile (nodes/_tiled.bounded_attention): ComfyUI's
score-materialising attention (the CPU default, sub-quadratic) sizes its chunks from the free system memory,
so without the bound a tile used about as much attention memory as the whole frame."""
from __future__ import annotations

import pytest
import torch
from tiled_env import FRAMES, H, TILE, W, _rel, _sample, _tiled, tiled_env  # noqa: F401 (a fixture)


def _attention(name):
    import comfy.ldm.modules.attention as A

    return getattr(A, name).__wrapped__  # the function an optimized_attention_override receives


def _qkv(reshaped: bool, tokens=50, keys=40, b=3, heads=2, d=8):
    g = torch.Generator().manual_seed(0)
    shape = (lambda n: (b, heads, n, d)) if reshaped else (lambda n: (b, n, heads * d))
    return [torch.randn(shape(n), generator=g) for n in (tokens, keys, keys)]


@pytest.mark.parametrize("name", ["attention_sub_quad", "attention_split", "attention_basic"])
@pytest.mark.parametrize("reshaped", [False, True])
def test_query_slices_equal_whole_attention_and_fit_the_budget(comfy_host, name, reshaped):
    from temporal_restore.nodes._tiled import bounded_attention

    func = _attention(name)
    q, k, v = _qkv(reshaped)
    kw = {"skip_reshape": reshaped, "skip_output_reshape": reshaped}
    whole = func(q, k, v, 2, **kw)
    calls = []

    def prev(f, q_, *a, **kwargs):  # a foreign override: called once per slice, around the same function
        calls.append(q_.shape[-2] if reshaped else q_.shape[1])
        return f(q_, *a, **kwargs)

    budget = 3 * 2 * 40 * 4 * 7  # batch*heads x 7 query rows x 40 keys of float32
    out = bounded_attention(func, q, k, v, 2, prev=prev, budget=budget, **kw)
    assert calls == [7] * 7 + [1] and out.shape == whole.shape
    assert torch.allclose(out, whole, rtol=1e-5, atol=1e-6)


def test_memory_efficient_and_masked_attention_run_whole(comfy_host):
    from temporal_restore.nodes._tiled import bounded_attention

    q, k, v = _qkv(False)
    calls = []

    def prev(f, q_, *a, **kwargs):
        calls.append(q_.shape[1])
        return f(q_, *a, **kwargs)

    bounded_attention(_attention("attention_pytorch"), q, k, v, 2, prev=prev, budget=1)
    mask = torch.zeros(50, 40)
    bounded_attention(_attention("attention_sub_quad"), q, k, v, 2, prev=prev, budget=1, mask=mask)
    assert calls == [50, 50]


def test_tiled_sampling_keeps_every_score_block_in_the_budget(tiled_env, monkeypatch):  # noqa: F811
    """A real tiled KSampler run (SW-CFA on the tiles): every sub-quadratic score block of every tile call fits
    the budget, the result equals the run with the default budget, and untiled sampling is not bounded."""
    import comfy.ldm.modules.attention as A

    from temporal_restore.nodes import _tiled as machinery, sw_cfa

    env = tiled_env
    blocks = []
    orig = A.efficient_dot_product_attention

    def spy(query, key, value, query_chunk_size, *args, **kwargs):
        blocks.append(query.shape[0] * min(query_chunk_size, query.shape[1]) * key.shape[-1] * 4)
        return orig(query, key, value, query_chunk_size, *args, **kwargs)

    monkeypatch.setattr(A, "efficient_dot_product_attention", spy)
    model = sw_cfa.install_sw_cfa(env["model"], "sw_cfa", 1)
    free = _sample(_tiled(model), env["pos"], env["neg"], env["latent"], env["noise"])
    budget = 2 * FRAMES * 2 * TILE * TILE * 4 * 16  # 16 query rows of the 16x16-token level
    assert max(blocks) > budget  # without the bound the first level's blocks are bigger (test can fail)
    blocks.clear()
    monkeypatch.setattr(machinery, "ATTENTION_BYTES", budget)
    bounded = _sample(_tiled(model), env["pos"], env["neg"], env["latent"], env["noise"])
    assert blocks and max(blocks) <= budget
    assert _rel(bounded, free) <= 1e-5
    blocks.clear()
    _sample(model, env["pos"], env["neg"], env["latent"], env["noise"])
    assert max(blocks) > budget and H * W > TILE * TILE  # untiled attention keeps ComfyUI's own chunks
