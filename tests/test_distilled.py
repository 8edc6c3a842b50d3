"""Few-step distilled sampling: schedules match the documented formulas; the sampler step is the
consistency / DDIM update; the nodes compose with SamplerCustom on the tiny model."""
import math

import numpy as np
import pytest
import torch

from temporal_restore.pipelines import distilled as D


# ---------------------------------------------------------------- schedules (formulas, recomputed here)

def _trailing_ref(n, d=1.0, T=1000):
    # diffusers "trailing" spacing: np.round(np.arange(T_d, 0, -T_d / n)) - 1
    T_d = round(d * T)
    return (np.round(np.arange(T_d, 0, -T_d / n)).astype(np.int64) - 1).tolist()


def _lcm_ref(n, d=1.0, T=1000, N=50):
    c = T // N
    origin = (np.arange(1, int(math.floor(d * N)) + 1) * c - 1)[::-1]
    idx = np.floor(np.linspace(0, len(origin), num=n, endpoint=False)).astype(np.int64)
    return origin[idx].tolist()


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_trailing_schedule_matches_formula(n):
    ts = D.trailing_timesteps(n)
    assert ts == _trailing_ref(n)
    assert ts[0] == 999 and len(ts) == n
    assert all(a > b for a, b in zip(ts, ts[1:]))


def test_trailing_known_values():
    assert D.trailing_timesteps(1) == [999]
    assert D.trailing_timesteps(2) == [999, 499]
    assert D.trailing_timesteps(4) == [999, 749, 499, 249]
    assert D.trailing_timesteps(8) == [999, 874, 749, 624, 499, 374, 249, 124]
    assert D.trailing_timesteps(4, denoise=0.5) == _trailing_ref(4, 0.5) == [499, 374, 249, 124]


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_lcm_schedule_matches_formula(n):
    assert D.lcm_timesteps(n) == _lcm_ref(n)


def test_lcm_known_values():
    assert D.lcm_timesteps(4) == [999, 759, 499, 259]
    assert D.lcm_timesteps(2) == [999, 499]
    assert D.lcm_timesteps(8) == [999, 879, 759, 639, 499, 379, 259, 139]
    assert D.lcm_timesteps(4, denoise=0.6) == _lcm_ref(4, 0.6)


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_turbo_schedule(n):
    assert D.turbo_timesteps(n) == [999 - 100 * i for i in range(n)]


def test_sigmas_match_ddpm_schedule():
    ts = D.trailing_timesteps(4)
    s = D.sigmas_for_timesteps(ts)
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
    abar = np.cumprod(1 - betas)
    ref = np.sqrt((1 - abar[ts]) / abar[ts])
    assert s.shape == (5,) and s[-1] == 0
    np.testing.assert_allclose(s[:-1].numpy(), ref, rtol=1e-5)
    assert (s[:-1][:-1] > s[:-1][1:]).all()


@pytest.mark.parametrize("bad", [dict(steps=0), dict(steps=9), dict(steps=2.5), dict(denoise=0.0),
                                 dict(denoise=1.5), dict(schedule="karras")])
def test_bad_schedule_inputs_raise(bad):
    kw = dict(schedule="trailing", steps=4, denoise=1.0) | bad
    with pytest.raises(ValueError) as e:
        D.distilled_timesteps(kw["schedule"], kw["steps"], kw["denoise"])
    assert list(bad)[0] in str(e.value)


# ---------------------------------------------------------------- sampler step

class _ConstX0:
    """Denoiser that always predicts the same x0 and records its calls."""

    def __init__(self, x0):
        self.x0, self.calls = x0, []

    def __call__(self, x, sigma, **kw):
        self.calls.append((x.clone(), sigma.clone()))
        return self.x0.expand_as(x).clone()


def test_consistency_step_renoises_x0_with_fresh_noise():
    torch.manual_seed(0)
    x0 = torch.randn(1, 4, 8, 8)
    sig = D.sigmas_for_timesteps(D.trailing_timesteps(4))
    zs = [torch.randn(2, 4, 8, 8) for _ in range(3)]
    it = iter(zs)
    model = _ConstX0(x0)
    x = torch.randn(2, 4, 8, 8) * sig[0]
    out = D.sample_distilled(model, x, sig, noise_sampler=lambda a, b: next(it), eta=1.0)
    assert len(model.calls) == 4
    for i in range(1, 4):  # the input of step i is x0 + sigma_i * z_{i-1}
        xi, si = model.calls[i]
        torch.testing.assert_close(xi, x0 + sig[i] * zs[i - 1])
        assert torch.allclose(si, sig[i].expand(2))
    torch.testing.assert_close(out, x0.expand(2, -1, -1, -1))


def test_deterministic_eta0_is_ddim_and_ignores_noise_sampler():
    torch.manual_seed(1)
    x0 = torch.randn(1, 4, 8, 8)
    sig = D.sigmas_for_timesteps(D.lcm_timesteps(4))
    eps = torch.randn(1, 4, 8, 8)
    x = x0 + sig[0] * eps
    model = _ConstX0(x0)

    def boom(a, b):
        raise AssertionError("eta=0 must not draw noise")

    D.sample_distilled(model, x, sig, noise_sampler=boom, eta=0.0)
    for i, (xi, _) in enumerate(model.calls):  # DDIM keeps the implied noise: x_i = x0 + sigma_i * eps
        torch.testing.assert_close(xi, x0 + sig[i] * eps, rtol=1e-4, atol=1e-4)


def test_default_noise_is_seeded_and_varies_per_step():
    x0 = torch.zeros(1, 4, 8, 8)
    sig = D.sigmas_for_timesteps(D.trailing_timesteps(4))
    runs = []
    for seed in (3, 3, 4):
        m = _ConstX0(x0)
        D.sample_distilled(m, torch.zeros(1, 4, 8, 8), sig, extra_args={"seed": seed})
        runs.append([c[0] for c in m.calls])
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not torch.equal(runs[0][1], runs[2][1])
    assert not torch.allclose(runs[0][1] / sig[1], runs[0][2] / sig[2])  # fresh noise each step


def test_custom_noise_scaling_is_used():
    # flow-matching style forward noising x = (1-s) x0 + s n; eta=0 must still keep the implied noise
    ns = lambda s, n, x0: (1 - s) * x0 + s * n  # noqa: E731
    x0 = torch.full((1, 1, 2, 2), 2.0)
    eps = torch.randn(1, 1, 2, 2)
    sig = torch.tensor([0.9, 0.5, 0.2, 0.0])
    m = _ConstX0(x0)
    D.sample_distilled(m, ns(sig[0], eps, x0), sig, eta=0.0, noise_scaling=ns)
    for i, (xi, _) in enumerate(m.calls):
        torch.testing.assert_close(xi, ns(sig[i], eps, x0), rtol=1e-5, atol=1e-5)


def test_bad_eta_raises():
    with pytest.raises(ValueError, match="eta"):
        D.sample_distilled(_ConstX0(torch.zeros(1)), torch.zeros(1, 1), torch.tensor([1.0, 0.0]), eta=2.0)
