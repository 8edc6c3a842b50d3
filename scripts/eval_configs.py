"""The configurations of ``scripts/evaluate.py``: one ``(group, name, run)`` per table row.

Every ``run()`` returns restored latents ``[T,4,h,w]`` of the degraded clip. All rows share the model,
the ControlNet hint (the degraded frames), cfg 1, the seed and, where a row samples per frame, the DDIM
sampler from the degraded latent at ``denoise`` (img2img, as the paper pipelines start from the input).
The FLOW the temporal rows get is estimated on the *degraded* frames (what a user has), on the latent grid.

Groups:
  tdm        per-frame; +DDIM inversion; +SW-CFA; TDM full; TDM without / with the wrong task prompt (the
             inversion rows invert under the empty source prompt and restore under the row's prompt)
  zvrd       ZVRD components added one by one: SLR attention (Eq. 5-7), + temporal consistency guidance
             (Eq. 8), + NoiseShare (Eq. 10-11 initial noise; the DDIM sampler draws no step noise),
             + early stopping at 0.9 of the schedule
  diffir2vr  DiffIR2VR-Zero: latent warping, token merging, both
  distilled  DistilledSampler (4 trailing steps, denoise 0.5) per frame, and D2-VR's recurrent fast
             restore (flow-aligned previous restored frame, strength 0.5)
  te3d       (not in the default run) DiffVSR's TE-3D decoder (TR_TE3DVAEDecode, temporal_weights auto: the weights shipped for the demo
             VAE) against the 2D decode of the same per-frame / TDM-full latents. These rows are
             ``(group, name, run, decode)``: ``decode(samples) -> [T,H,W,3]`` replaces ``vae.decode``.
"""
from __future__ import annotations

GROUPS = ("tdm", "zvrd", "diffir2vr", "distilled", "te3d")
DEFAULT_GROUPS = GROUPS[:4]  # te3d only when asked for: it re-samples rows of tdm to compare decoders
# issue 23: the colour fixes evaluate.py --color applies to a restored row, as (label, method, temporal radius);
# the reference is the degraded input (what a user has), as in the bundled workflows' TR_ColorMatch
COLOR_FIXES = (("no colour fix", "none", 0), ("wavelet", "wavelet", 0), ("wavelet, temporal r=2", "wavelet", 2),
               ("adain", "adain", 0), ("adain, temporal r=2", "adain", 2))


def configurations(ctx, groups=DEFAULT_GROUPS):
    """``ctx``: namespace with model, clip, vae, control, degraded ``[T,H,W,3]``, latent ``[T,4,h,w]``,
    task, steps, denoise, seed, radius, tt (``pipelines.train_tasks``). Returns ``[(group, name, run)]``."""
    import comfy.sample
    import comfy.samplers

    from temporal_restore.nodes import (ddim_invert, distilled, early_stop, latent_warp, noise_share,
                                        recurrent_restore, slr_attention, sw_cfa, task_prompt, tc_guidance,
                                        token_merge)
    from temporal_restore.pipelines import noise_share as nsh
    from temporal_restore.pipelines.flow import estimate_flow

    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"groups: expected names from {GROUPS}, got {sorted(unknown)}")
    model, lat = ctx.model, ctx.latent
    enc = lambda t: ctx.clip.encode_from_tokens_scheduled(ctx.clip.tokenize(t))  # noqa: E731

    def conds(prompt):
        return task_prompt.apply_controlnet(enc(prompt), enc(""), ctx.control, ctx.degraded, 1.0, 0.0, 1.0)

    prompt = ctx.tt.TASK_PROMPTS[ctx.task]
    wrong = ctx.tt.TASK_PROMPTS[ctx.tt.WRONG_TASK.get(ctx.task, "denoise")]
    cached = {}

    def flow():
        if "flow" not in cached:
            cached["flow"] = estimate_flow(ctx.degraded, out_size=tuple(lat.shape[-2:]))
        return cached["flow"]

    def ddim_sigmas(m):
        return comfy.samplers.KSampler(m, steps=ctx.steps, device=m.load_device, sampler="ddim",
                                       scheduler="normal", denoise=ctx.denoise).sigmas

    def sample(m, sampler=None, sigmas=None, noise=None, p=prompt):
        pos, neg = conds(p)
        noise = comfy.sample.prepare_noise(lat, ctx.seed) if noise is None else noise
        return comfy.sample.sample_custom(m, noise, 1.0, sampler or comfy.samplers.sampler_object("ddim"),
                                          ddim_sigmas(m) if sigmas is None else sigmas, pos, neg, lat,
                                          disable_pbar=True, seed=ctx.seed)

    def inverted(m, p):
        # invert under the source prompt (empty: the clip as it is), restore under the task prompt, as
        # inversion-based editing does (null-text inversion, TDM [8]); the same prompt for both would cancel
        inv = ddim_invert.invert(m, *conds(""), {"samples": lat}, ctx.steps, 1.0, ctx.denoise)
        return ddim_invert.restore(m, *conds(p), inv, ctx.steps, 1.0)["samples"]

    rows = []
    if "tdm" in groups:
        swm = sw_cfa.install_sw_cfa(model, "sw_cfa", ctx.radius)
        rows += [("tdm", "per-frame", lambda: sample(model)),
                 ("tdm", "+DDIM inversion", lambda: inverted(model, prompt)),
                 ("tdm", "+SW-CFA", lambda: sample(swm)),
                 ("tdm", "TDM full", lambda: inverted(swm, prompt)),
                 ("tdm", "TDM w/o task prompt", lambda: inverted(swm, "")),
                 ("tdm", f"TDM wrong task prompt ({wrong!r})", lambda: inverted(swm, wrong))]
    if "zvrd" in groups:
        def slr():
            return slr_attention.install_slr(model, flow=flow())[0]

        def slr_tc():
            return tc_guidance.install_tc_guidance(slr(), 0.1, flow=flow())[0]  # the node's default T_TC

        def shared(stop=None):
            share = nsh.NoiseShare(ctx.seed, flow())
            smp = noise_share.NoiseShareSampler(comfy.samplers.sampler_object("ddim"), share)
            if stop is not None:
                smp = early_stop.EarlyStopSampler(smp, stop)
            return sample(slr_tc(), smp, noise=noise_share.SharedNoise(share).generate_noise({"samples": lat}))

        rows += [("zvrd", "ZVRD: +SLR attention", lambda: sample(slr())),
                 ("zvrd", "ZVRD: +TC guidance", lambda: sample(slr_tc())),
                 ("zvrd", "ZVRD: +NoiseShare", lambda: shared()),
                 ("zvrd", "ZVRD: +early stop 0.9 (full ZVRD)", lambda: shared(0.9))]
    if "diffir2vr" in groups:
        def warp(m):
            return latent_warp.LatentWarp.execute(m, flow()).args[0]

        def merge(m):
            return token_merge.TokenMerge.execute(m, flow()).args[0]

        rows += [("diffir2vr", "DiffIR2VR-Zero: latent warping", lambda: sample(warp(model))),
                 ("diffir2vr", "DiffIR2VR-Zero: token merging", lambda: sample(merge(model))),
                 ("diffir2vr", "DiffIR2VR-Zero: both", lambda: sample(merge(warp(model))))]
    if "distilled" in groups:
        def fast_parts():
            return (distilled.DistilledSampler.execute(1.0, 1.0, True).args[0],
                    distilled.distilled_sigmas(model, "trailing", 4, 0.5, 50))

        def recurrent(group):
            smp, sig = fast_parts()
            return recurrent_restore.recurrent_sample(model, enc(prompt), enc(""), smp, sig, {"samples": lat},
                                                      ctx.degraded, ctx.seed, 1.0, 0.5, control_net=ctx.control,
                                                      vae=ctx.vae, group=group)[0]["samples"]

        rows += [("distilled", "DistilledSampler 4-step, per frame", lambda: sample(model, *fast_parts())),
                 ("distilled", "D2-VR fast restore (recurrent, 4-step)", lambda: recurrent(1)),
                 ("distilled", "D2-VR fast restore (recurrent, 4-step, group 4)", lambda: recurrent(4))]
    if "te3d" in groups:
        from temporal_restore.nodes import te3d_vae

        def te3d(samples):
            path, why = te3d_vae.resolve_weights(ctx.vae, "auto")
            if not path:
                raise SystemExit(f"--groups te3d: {why}")
            return te3d_vae.te3d_decode(ctx.vae, samples, "te3d", chunk=8, overlap=2, weights=path)

        swm_te = sw_cfa.install_sw_cfa(model, "sw_cfa", ctx.radius)
        rows += [("te3d", "2D decode (per-frame)", lambda: sample(model)),
                 ("te3d", "TE-3D decode (per-frame)", lambda: sample(model), te3d),
                 ("te3d", "2D decode (TDM full)", lambda: inverted(swm_te, prompt)),
                 ("te3d", "TE-3D decode (TDM full)", lambda: inverted(swm_te, prompt), te3d)]
    return rows
