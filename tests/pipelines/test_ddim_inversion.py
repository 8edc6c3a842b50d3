"""DDIM inversion (TDM Eq. 4) and DDIM sampling in k-diffusion sigma form."""
import math

import pytest
import torch

from temporal_restore.pipelines import ddim_inversion as di


def _sd_like_sigmas(steps, t_start=999.0):
    """SD1.5 scaled-linear betas -> sigma(t) (log-linear interpolation), like ComfyUI."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    ac = torch.cumprod(1 - betas, 0)
    log_s = (((1 - ac) / ac) ** 0.5).log()

    def sigma_fn(t):
        t = float(t)
        lo = int(math.floor(t)); hi = min(lo + 1, 999); w = t - lo
        return torch.exp((1 - w) * log_s[lo] + w * log_s[hi])

    return di.uniform_timestep_sigmas(sigma_fn, t_start, 0.0, steps).double()


def constant_noise_model(eps):
    def model(x, sigma):
        return x - sigma.view(-1, *([1] * (x.ndim - 1))) * eps
    return model


class SmoothEps(torch.nn.Module):
    """A tiny smooth denoiser: the exact denoiser of Gaussian data N(mu, s_d^2) plus a small
    conv-net correction (like a trained UNet, its noise estimate varies smoothly with x and sigma)."""

    def __init__(self, ch=4, seed=0, s_d=1.0, strength=0.1):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.c1 = torch.nn.Conv2d(ch + 1, 16, 3, padding=1)
        self.c2 = torch.nn.Conv2d(16, ch, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)
        self.register_buffer("mu", torch.randn(1, ch, 1, 1, generator=g) * 0.5)
        self.s_d, self.strength = s_d, strength
        self.double()

    def forward(self, x, sigma):
        s = sigma.view(-1, 1, 1, 1)
        gauss = self.mu + self.s_d ** 2 / (self.s_d ** 2 + s ** 2) * (x - self.mu)
        xin = x / torch.sqrt(self.s_d ** 2 + s ** 2)
        h = torch.tanh(self.c1(torch.cat([xin, torch.log(s).expand(-1, 1, *x.shape[2:]) / 4], 1)))
        return gauss + self.strength * self.s_d ** 2 / (self.s_d ** 2 + s ** 2) * self.c2(h)


def _latent(seed=0, shape=(2, 4, 8, 8)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("eval_at,refine", [("next", 0), ("current", 0), ("next", 2)])
@pytest.mark.parametrize("steps", [1, 5, 20])
def test_constant_noise_round_trip_is_exact(eval_at, refine, steps):
    x0 = _latent()
    eps = _latent(1)
    model = constant_noise_model(eps)
    sig = _sd_like_sigmas(steps)
    xt = di.ddim_invert(model, x0, sig, eval_at=eval_at, refine=refine)
    # the inverted latent is the clean latent plus sigma_max times the model's noise
    torch.testing.assert_close(xt, x0 + sig[0] * eps, rtol=1e-10, atol=1e-10)
    back = di.ddim_sample(model, xt, sig)
    assert (back - x0).abs().max().item() < 1e-10


def test_smooth_model_round_trip_error_bounded_and_shrinks():
    x0 = _latent(shape=(2, 4, 16, 16))
    model = SmoothEps()
    errs = {}
    with torch.no_grad():
        for steps in (10, 50):
            sig = _sd_like_sigmas(steps)
            for refine in (0, 3):
                xt = di.ddim_invert(model, x0, sig, refine=refine)
                # the inversion really moved the latent to high noise
                assert di.relative_error(xt, x0) > 1.0
                errs[steps, refine] = di.relative_error(di.ddim_sample(model, xt, sig), x0)
    print("smooth model DDIM round-trip relative error (steps, refine): "
          + ", ".join(f"{k}: {v:.2e}" for k, v in errs.items()))
    # plain Eq. 4 inversion: bounded, better with more steps
    assert errs[10, 0] < 1.0
    assert errs[50, 0] < 0.5 * errs[10, 0]
    # fixed-point refinement makes the round trip (near) exact
    assert errs[10, 3] < 0.2 * errs[10, 0]
    assert errs[50, 3] < 1e-3


def test_partial_schedule_round_trip():
    x0 = _latent()
    model = SmoothEps()
    sig = _sd_like_sigmas(10, t_start=500.0)
    assert sig[0] < _sd_like_sigmas(10)[0]
    with torch.no_grad():
        plain = di.relative_error(di.ddim_sample(model, di.ddim_invert(model, x0, sig), sig), x0)
        refined = di.relative_error(di.ddim_sample(model, di.ddim_invert(model, x0, sig, refine=4), sig), x0)
    print(f"partial (t<=500) 10-step round trip: plain {plain:.2e}, refine=4 {refined:.2e}")
    assert plain < 0.2
    assert refined < 0.1 * plain


def test_eval_at_modes_differ_for_non_constant_model():
    x0 = _latent()
    model = SmoothEps()
    sig = _sd_like_sigmas(5)
    with torch.no_grad():
        a = di.ddim_invert(model, x0, sig, eval_at="next")
        b = di.ddim_invert(model, x0, sig, eval_at="current")
    assert (a - b).abs().max().item() > 1e-6


def test_sampling_step_matches_euler_in_sigma():
    x = _latent()
    model = SmoothEps()
    with torch.no_grad():
        d = model(x, torch.full((2,), 3.0, dtype=torch.float64))
        x_next, den = di.ddim_step(model, x, 3.0, 1.5)
    torch.testing.assert_close(den, d)
    torch.testing.assert_close(x_next, d + 1.5 * (x - d) / 3.0)


def test_callbacks_see_every_step():
    seen = []
    model = constant_noise_model(_latent(1))
    sig = _sd_like_sigmas(4)
    xt = di.ddim_invert(model, _latent(), sig, callback=lambda i, d, x, n: seen.append(("inv", i, n)))
    di.ddim_sample(model, xt, sig, callback=lambda i, d, x, n: seen.append(("smp", i, n)))
    assert seen == [("inv", i, 4) for i in range(4)] + [("smp", i, 4) for i in range(4)]


def test_uniform_schedule_shape_and_order():
    sig = _sd_like_sigmas(7)
    assert sig.shape == (8,) and sig[-1] == 0
    assert (sig[:-1] > sig[1:]).all()
    assert sig[0].item() == pytest.approx(14.61, rel=1e-2)  # SD1.5 sigma_max


def test_bad_inputs_raise_value_error():
    model = constant_noise_model(_latent(1))
    with pytest.raises(ValueError, match="sigmas"):
        di.ddim_sample(model, _latent(), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="sigmas"):
        di.ddim_invert(model, _latent(), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="eval_at"):
        di.ddim_invert(model, _latent(), torch.tensor([1.0, 0.0]), eval_at="bogus")
    with pytest.raises(ValueError, match="refine"):
        di.ddim_invert(model, _latent(), torch.tensor([1.0, 0.0]), refine=-1)
    with pytest.raises(ValueError, match="steps"):
        di.uniform_timestep_sigmas(lambda t: t, 10, 0, 0)
