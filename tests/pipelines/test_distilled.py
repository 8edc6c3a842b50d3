"""Few-step distilled sampling: schedules match the documented formulas; the sampler step is the
consistency / DDIM update; the nodes compose with SamplerCustom on the tiny model."""
import math

import numpy as np
import pytest
import torch

from temporal_restore.pipelines import distilled as D



@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The shared 2-core host is oversubscribed; one intra-op thread makes the tiny model ~10x faster
    here. Restored afterwards, so other test modules are unaffected."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

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


def test_frame_noise_depends_on_absolute_frame_not_batch():
    x = torch.zeros(3, 2, 4, 4)
    whole = D.frame_noise_sampler(x, 5, [0, 1, 2])
    win = D.frame_noise_sampler(x[1:], 5, [1, 2])
    a1, a2 = whole(1.0, 0.5), whole(0.5, 0.1)
    b1, b2 = win(1.0, 0.5), win(0.5, 0.1)
    assert torch.equal(a1[1:], b1) and torch.equal(a2[1:], b2)
    assert not torch.equal(a1, a2) and not torch.equal(a1[0], a1[1])
    assert not torch.equal(D.frame_noise_sampler(x, 6, [0, 1, 2])(1.0, 0.5), a1)
    with pytest.raises(ValueError, match="frame_index"):
        D.frame_noise_sampler(x, 5, [0, 1])


# ---------------------------------------------------------------- nodes on the tiny SD1.5 model (real ComfyUI)

def _graph(tiny, sampler: dict, sigmas: dict, batch=2, seed=3, cfg=2.0):
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny["checkpoint"]}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": "a clean photo", "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}},
        "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": batch}},
        "smp": sampler,
        "sig": sigmas,
        "run": {"class_type": "SamplerCustom", "inputs": {
            "model": ["ckpt", 0], "add_noise": True, "noise_seed": seed, "cfg": cfg, "positive": ["pos", 0],
            "negative": ["neg", 0], "sampler": ["smp", 0], "sigmas": ["sig", 0], "latent_image": ["lat", 0]}},
    }


def _tr_sigmas(schedule="trailing", steps=4, denoise=1.0):
    return {"class_type": "TR_DistilledSigmas", "inputs": {"model": ["ckpt", 0], "schedule": schedule, "steps": steps,
                                                            "denoise": denoise, "original_steps": 50}}


def _tr_sampler(eta=1.0, per_frame=True):
    return {"class_type": "TR_DistilledSampler", "inputs": {"eta": eta, "s_noise": 1.0, "per_frame_noise": per_frame}}


@pytest.mark.parametrize("schedule", D.SCHEDULES)
def test_sigmas_node_matches_documented_schedule(comfy_host, tiny, schedule):
    for n in (1, 2, 4, 8):
        g = _graph(tiny, _tr_sampler(), _tr_sigmas(schedule, n))
        sig = comfy_host.run(g, outputs=["sig"])["outputs"]["sig"][0]
        ref = D.sigmas_for_timesteps(D.distilled_timesteps(schedule, n))
        assert sig.shape == (n + 1,)
        torch.testing.assert_close(sig.float(), ref, rtol=1e-4, atol=1e-6)


def test_sampler_with_fresh_batch_noise_equals_stock_lcm(comfy_host, tiny):
    stock = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "lcm"}}
    ours = comfy_host.run(_graph(tiny, _tr_sampler(1.0, per_frame=False), _tr_sigmas("lcm", 4)),
                          outputs=["run"])["outputs"]["run"][0]["samples"]
    ref = comfy_host.run(_graph(tiny, stock, _tr_sigmas("lcm", 4)), outputs=["run"])["outputs"]["run"][0]["samples"]
    assert ours.shape == (2, 4, 8, 8) and torch.isfinite(ours).all()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_sampler_modes_differ_and_are_reproducible(comfy_host, tiny):
    def run(eta, per_frame=True, seed=3):
        g = _graph(tiny, _tr_sampler(eta, per_frame), _tr_sigmas("trailing", 4, 0.6), seed=seed)
        return comfy_host.run(g, outputs=["run"])["outputs"]["run"][0]["samples"]

    a, b, det = run(1.0), run(1.0, seed=4), run(0.0)
    assert torch.isfinite(det).all()
    assert not torch.allclose(a, b) and not torch.allclose(a, det)
    assert torch.equal(run(0.0, per_frame=False), det)  # eta 0 draws no noise after the start


def test_sampler_uses_noise_sampler_factory_from_transformer_options(comfy_host, tiny):
    import comfy.sample
    import comfy.samplers

    from temporal_restore.nodes import _patching
    from temporal_restore.nodes import distilled as ND

    g = _graph(tiny, _tr_sampler(), _tr_sigmas())
    out = comfy_host.run(g, outputs=["ckpt", "pos", "neg"])["outputs"]
    model, pos, neg = out["ckpt"][0], out["pos"][0], out["neg"][0]
    calls = []

    def factory(x, seed, frame_index):
        calls.append((tuple(x.shape), seed, frame_index))
        return lambda s, sn: torch.zeros_like(x)

    patched = _patching.clone_with_options(model, "noise_sampler", factory)
    sampler = ND.DistilledSampler.execute(1.0, 1.0, True).args[0]
    sig = ND.distilled_sigmas(model, "trailing", 4, 1.0, 50)
    lat = torch.zeros(2, 4, 8, 8)
    noise = comfy.sample.prepare_noise(lat, 5)
    z = comfy.sample.sample_custom(patched, noise, 2.0, sampler, sig, pos, neg, lat, disable_pbar=True, seed=5)
    det = comfy.sample.sample_custom(model, noise, 2.0, comfy.samplers.KSAMPLER(ND.make_sampler_function(0.0, 1.0, True)),
                                     sig, pos, neg, lat, disable_pbar=True, seed=5)
    assert calls == [((2, 4, 8, 8), 5, [0, 1])]
    assert not torch.allclose(z, det)  # zero re-noise != DDIM's reused noise, but the factory's noise was used
    z2 = comfy.sample.sample_custom(model, noise, 2.0, sampler, sig, pos, neg, lat, disable_pbar=True, seed=5)
    assert not torch.allclose(z, z2)


def test_bad_eta_in_node_raises(comfy_host):
    with pytest.raises(ValueError, match="eta"):
        comfy_host.node("TR_DistilledSampler").execute(1.5, 1.0, True)


def test_composes_with_noiseshare_through_sampler_custom_advanced(comfy_host, tiny):
    """TR_NoiseShare (shared initial noise) + TR_NoiseShareSampler around TR_DistilledSampler: the wrapper's
    noise_sampler reaches our sampler, so identical frames stay identical; our own per-frame noise does not."""
    def graph(wrapped):
        g = _graph(tiny, _tr_sampler(1.0, per_frame=True), _tr_sigmas("trailing", 4))
        del g["run"]
        g["share"] = {"class_type": "TR_NoiseShare", "inputs": {"seed": 11, "blend": 0.5, "variance_preserving": True,
                                                                "blend_initial": True}}
        g["wrap"] = {"class_type": "TR_NoiseShareSampler", "inputs": {"sampler": ["smp", 0], "noise": ["share", 0]}}
        g["guider"] = {"class_type": "CFGGuider", "inputs": {"model": ["ckpt", 0], "positive": ["pos", 0],
                                                              "negative": ["neg", 0], "cfg": 2.0}}
        g["run"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["share", 0], "guider": ["guider", 0], "sampler": ["wrap" if wrapped else "smp", 0],
            "sigmas": ["sig", 0], "latent_image": ["lat", 0]}}
        return g

    shared = comfy_host.run(graph(True), outputs=["run"])["outputs"]["run"][0]["samples"]
    own = comfy_host.run(graph(False), outputs=["run"])["outputs"]["run"][0]["samples"]
    assert torch.isfinite(shared).all()
    torch.testing.assert_close(shared[0], shared[1], rtol=1e-4, atol=1e-4)  # batched conv rounding only
    assert (own[0] - own[1]).abs().max() > 1e-3


def test_sampler_runs_inside_the_ilt_chunker(comfy_host, tiny):
    """TR_DistilledSampler as the chunker's SAMPLER, both modes. The chunker publishes window frame indices per
    model call only, so the sampler falls back to batch positions for its per-frame noise (see report)."""
    import comfy.samplers

    from temporal_restore.nodes import distilled as ND
    from temporal_restore.nodes import ilt

    out = comfy_host.run(_graph(tiny, _tr_sampler(), _tr_sigmas()), outputs=["ckpt", "pos", "neg"])["outputs"]
    model, pos, neg = out["ckpt"][0], out["pos"][0], out["neg"][0]
    sizes = []
    inner = ND.make_sampler_function(1.0, 1.0, True)

    def spy(model_k, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
        sizes.append(x.shape[0])
        return inner(model_k, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                     noise_sampler=noise_sampler)

    sig = ND.distilled_sigmas(model, "trailing", 2, 0.5, 50)
    lat = {"samples": torch.zeros(3, 4, 8, 8)}
    for mode in ("sequential", "fused"):
        res = ilt.chunked_sample(model, pos, neg, lat, 3, 1.0, comfy.samplers.KSAMPLER(spy), sig, window=2,
                                 overlap=1, mode=mode, carry_state=False, progress=False)["samples"]
        assert res.shape == (3, 4, 8, 8) and torch.isfinite(res).all()
    assert sizes == [2, 2, 3]  # one run per window (sequential), one run over the clip (fused)
