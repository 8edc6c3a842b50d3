"""Low precision and device hygiene of the pipelines the model patches run inside sampling.

* Device: every function runs on tensors of the ``meta`` device. A tensor the function creates on the
  CPU and combines with its input raises there ("Tensor on device meta is not on the expected device
  cpu"), as it would on a GPU; CI has no GPU, the meta device stands in for it. (Indexing with a CPU
  index tensor is allowed on both.) Token merging plans with ``nonzero`` (data-dependent, no meta
  kernel): it is checked on dtype only.
* Dtype: bf16 and fp16 inputs give outputs of the same dtype (no silent upcast of a whole clip), close
  to the fp32 result: max |low - fp32| <= TOL[dtype] * max |fp32| (bf16 keeps 8 bits of mantissa,
  fp16 11; measured: at most 1.1e-2 (bf16) and 1.0e-3 (fp16) over these cases).
"""
from __future__ import annotations

import pytest
import torch

from temporal_restore.pipelines import ilt, noise_share, latent_warp, slr_attention, sw_cfa, token_merge
from temporal_restore.pipelines.flow import FlowField

F, N, C, HEADS = 4, 64, 32, 2
TOL = {torch.bfloat16: 3e-2, torch.float16: 4e-3}


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _qkv():
    return [_rand(2 * F, N, C, seed=s) for s in range(3)]


def _flow():
    z = torch.zeros(F - 1, 1, 8, 8)
    fwd = torch.zeros(F - 1, 2, 8, 8)
    fwd[:, 0] = 1.0  # one token to the right per frame
    return FlowField(forward=fwd, backward=-fwd, occlusion_fwd=z, occlusion_bwd=z, confidence_fwd=z + 1,
                     confidence_bwd=z + 1, height=8, width=8)


def _token_merge(q, k, v):
    """Matching is a discrete choice that near-ties flip between precisions: both runs plan on the
    bf16-rounded tokens, so the comparison measures the merge / attention / unmerge arithmetic."""
    merge, unmerge = token_merge.plan_merge(q.to(torch.bfloat16), 2, 8, 8, range(F), 0.5, chunk_size=F, mode="cosine")
    return unmerge(sw_cfa.sdpa_attention(merge(q), merge(k), merge(v), HEADS))


CASES = {  # name -> (fn(*inputs), inputs, meta-capable)
    "sw_cfa": (lambda q, k, v: sw_cfa.sw_cfa_attention(q, k, v, HEADS, n_chunks=2, radius=2), _qkv, True),
    "sw_cfa_first_frame": (lambda q, k, v: sw_cfa.sw_cfa_attention(q, k, v, HEADS, n_chunks=2, mode="first_frame"),
                           _qkv, True),
    "slr_cross_neighbour": (lambda q, k, v: slr_attention.cross_neighbour_attention(q, k, v, HEADS, chunks=2),
                            _qkv, True),
    "token_merge": (_token_merge, _qkv, False),
    "latent_warp": (lambda x: latent_warp.hierarchical_warp(x, _flow(), list(range(F)), 4),
                    lambda: [_rand(F, 4, 8, 8)], True),
    "ilt_blend": (lambda a, b: ilt.blend([a, b], ilt.plan_windows(6, 4, 2)),
                  lambda: [_rand(4, 4, 8, 8), _rand(4, 4, 8, 8, seed=1)], True),
    "noise_share": (lambda z: noise_share.blend_noise(z, _flow()), lambda: [_rand(F, 4, 8, 8)], True),
}


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c[2]])
def test_follows_the_input_device(name):
    fn, make, _ = CASES[name]
    out = fn(*[x.to("meta") for x in make()])
    assert out.device.type == "meta" and out.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", list(CASES))
def test_low_precision_keeps_dtype_and_is_close_to_fp32(name, dtype):
    fn, make, _ = CASES[name]
    inputs = make()
    ref = fn(*inputs)
    out = fn(*[x.to(dtype) for x in inputs])
    assert out.dtype == dtype and out.shape == ref.shape
    err = (out.float() - ref).abs().max().item()
    assert err <= TOL[dtype] * ref.abs().max().item(), (name, err)


def test_the_meta_check_can_fail():
    """A function that builds a CPU tensor and mixes it with its input fails the device check."""
    def bad(x):
        return x + torch.ones(x.shape)

    with pytest.raises(RuntimeError, match="device"):
        bad(torch.zeros(2, device="meta"))
