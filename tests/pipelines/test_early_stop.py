"""ZVRD early stopping: schedule truncation returns the x0 estimate of the stop step."""
import pytest
import torch

from temporal_restore.pipelines import early_stop as es


def toy_denoiser(x, sigma):
    """A smooth sigma-dependent x0 predictor (stands in for a model)."""
    return torch.tanh(x) / (1 + sigma) + 0.1 * sigma


def euler(x, sigmas, trace=None):
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        d0 = toy_denoiser(x, s)
        if trace is not None:
            trace.append((x.clone(), d0))
        x = x + (x - d0) / s * (s_next - s)
    return x


@pytest.mark.parametrize("stop_at", [0.0, 0.3, 0.5, 0.8])
def test_returns_x0_of_stop_step(stop_at):
    sigmas = torch.linspace(10.0, 0.5, 10).tolist() + [0.0]
    sigmas = torch.tensor(sigmas)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 10
    trace = []
    euler(x, sigmas, trace)
    k = es.stop_index(10, stop_at)
    assert k == round(stop_at * 10)
    cut = es.early_stop_sigmas(sigmas, stop_at)
    assert cut.shape[0] == k + 2 and float(cut[-1]) == 0.0
    out = euler(x, cut)
    torch.testing.assert_close(out, trace[k][1], rtol=1e-5, atol=1e-5)
    if k > 0:
        assert not torch.allclose(out, trace[k - 1][1])


def test_full_schedule_is_identity():
    sigmas = torch.tensor([5.0, 2.0, 1.0, 0.0])
    assert es.early_stop_sigmas(sigmas, 1.0) is sigmas
    assert es.early_stop_sigmas(sigmas, 0.95) is sigmas


def test_progress():
    ss = torch.tensor([8.0, 4.0, 2.0, 1.0, 0.0])
    assert es.schedule_progress(8.0, ss) == 0.0
    assert es.schedule_progress(2.0, ss) == 0.5
    assert es.schedule_progress(1.0, ss) == 0.75


def test_bad_inputs():
    with pytest.raises(ValueError, match="stop_at"):
        es.early_stop_sigmas(torch.tensor([1.0, 0.0]), 1.5)
    with pytest.raises(ValueError, match="sigmas"):
        es.early_stop_sigmas(torch.tensor([1.0]), 0.5)
