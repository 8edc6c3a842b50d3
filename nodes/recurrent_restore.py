"""TR_RecurrentRestore: restore a clip frame by frame, each frame conditioned on the previous restored
frame warped onto it by optical flow (D2-VR-style motion-compensated conditioning; the algorithm and
its formulas are in ``pipelines/recurrent_align.py``).

Per frame ``t`` (absolute index ``i_t``; frames go one at a time, or ``group`` at a time aligned to the
last frame of the previous group): ``x_init = m s warp(z_{t-1}) + (1 - m s) y_t`` and, with a
ControlNet, ``hint = m s warp(decode(z_{t-1})) + (1 - m s) frame_t`` (the degraded frame when no VAE is
given); then one sampler run (any SAMPLER / SIGMAS, e.g. TR_DistilledSampler + TR_DistilledSigmas
with denoise < 1) on that single frame with noise ``prepare_noise(seed + i_t)`` (or the frame's slice
of a NOISE input) and ``transformer_options["temporal_restore"]["frame_index"] = [i_t]``.
With ``strength = 0`` every frame is sampled exactly like a plain per-frame run.

Conditioning entries and ControlNet hints with one entry per frame (e.g. TR_TaskPromptControlNet) are
sliced to the frames being sampled (``nodes/_conditioning.slice_conditioning``).

Frame indices ``i_t``: the latent's ``batch_index`` when it has one, else the model's ``frame_index``
option (set by a chunker), else ``0..T-1``; either list must have one entry per frame
(``_patching.resolve_frame_index``: a mismatch is an error, as in every patch).
"""
from __future__ import annotations

import logging

import torch

from comfy_api.latest import io

from ..pipelines import recurrent_align
from ._checks import check_finite, check_latent, check_same_frames
from ._conditioning import slice_conditioning, slice_frames
from ._patching import clone_with_options, model_frame_index, resolve_frame_index
from ._types import FLOW

log = logging.getLogger("temporal_restore")


def _frame_indices(latent: dict, model, T: int) -> list[int]:
    bi = latent.get("batch_index")
    if bi is not None:
        return resolve_frame_index(bi, T, "latent")
    return model_frame_index(model.model_options, T)


def _with_hint(conditioning, control_net, hint, strength, vae, memo):
    """Like ControlNetApplyAdvanced for one frame's hint ``[1,H,W,3]`` (``memo`` shares positive/negative)."""
    out = []
    for t, d in conditioning:
        d = d.copy()
        prev = d.get("control")
        if prev in memo:
            c = memo[prev]
        else:
            c = control_net.copy().set_cond_hint(hint.movedim(-1, 1), strength, (0.0, 1.0), vae=vae)
            c.set_previous_controlnet(prev)
            memo[prev] = c
        d["control"] = c
        d["control_apply_to_uncond"] = False
        out.append([t, d])
    return out


def recurrent_sample(model, positive, negative, sampler, sigmas, latent: dict, images: torch.Tensor, seed: int,
                     cfg: float, strength: float, flow=None, tau: float = recurrent_align.DEFAULT_TAU,
                     blur: float = recurrent_align.DEFAULT_BLUR, control_net=None, vae=None,
                     control_strength: float = 1.0, noise=None, group: int = 1, decode_images: bool = False):
    """Returns ``(LATENT, confidence [T,h,w], images [T,H,W,3] or None)``: the alignment confidence on the
    latent grid, and with ``decode_images`` the restored frames decoded by ``vae`` (each frame once; the
    ControlNet hint reuses the previous group's decode)."""
    import comfy.model_management
    import comfy.sample
    import comfy.utils

    samples = check_latent(latent, "latent")
    T = int(samples.shape[0])
    check_same_frames(samples, images, ("latent", "images"))
    recurrent_align.check_strength(strength)
    samples = comfy.sample.fix_empty_latent_channels(model, samples)
    idx = _frame_indices(latent, model, T)
    full_noise = None
    if noise is not None:
        request = {"samples": samples}
        if latent.get("batch_index") is not None:
            request["batch_index"] = latent["batch_index"]
        full_noise = noise.generate_noise(request)
        if full_noise.shape != samples.shape:
            raise ValueError(f"noise: expected noise shaped like the latent {tuple(samples.shape)}, "
                             f"got {tuple(full_noise.shape)}")
    noise_mask = latent.get("noise_mask")
    pbar = comfy.utils.ProgressBar(T)
    disable_pbar = True

    def restore(ts, x_init, hint):
        comfy.model_management.throw_exception_if_processing_interrupted()
        sl = slice(ts[0], ts[-1] + 1)
        m = clone_with_options(model, "frame_index", [idx[t] for t in ts])
        # per-frame conditioning (e.g. frame-aligned ControlNet hints with one entry per frame) sliced to the group
        memo_sl: dict = {}
        pos, neg = slice_conditioning(positive, sl, T, memo_sl), slice_conditioning(negative, sl, T, memo_sl)
        if control_net is not None and control_strength != 0:
            h = images[sl] if hint is None else hint
            memo: dict = {}
            pos = _with_hint(pos, control_net, h, control_strength, vae, memo)
            neg = _with_hint(neg, control_net, h, control_strength, vae, memo)
        frame_seed = int(seed) + idx[ts[0]]
        if full_noise is not None:
            n = full_noise[sl]
        else:  # frame t always gets the noise of seed + its absolute index, whatever the grouping
            n = torch.cat([comfy.sample.prepare_noise(x_init[j:j + 1], int(seed) + idx[t]) for j, t in enumerate(ts)])
        mask = slice_frames(noise_mask, sl, T)
        return comfy.sample.sample_custom(m, n, cfg, sampler, sigmas, pos, neg, x_init, noise_mask=mask,
                                          disable_pbar=disable_pbar, seed=frame_seed)

    if decode_images and vae is None:
        raise ValueError("vae: decode_images needs the VAE that decodes the restored frames; connect one")
    hints = control_net is not None and control_strength != 0 and vae is not None and strength > 0
    decoded: list = []  # one [G,H,W,3] per group, concatenated once at the end

    def on_frame(t):
        pbar.update(1)

    out, conf = recurrent_align.recurrent_restore(
        samples, images, restore, strength, flow=flow, frame_index=idx, tau=tau, blur=blur,
        decode=vae.decode if (hints or decode_images) else None, on_frame=on_frame, group=group,
        confidence_grid="latent", hints=hints, on_decoded=(lambda ts, im: decoded.append(im)) if decode_images else None)
    result = latent.copy()
    result.pop("downscale_ratio_spacial", None)
    result.pop("noise_mask", None)
    result["samples"] = out
    return result, conf[:, 0], (torch.cat(decoded) if decode_images else None)


def _blocker(message: str):
    """ComfyUI's ExecutionBlocker: a node fed from this output stops with ``message`` (shown on that node)."""
    cls = getattr(io, "ExecutionBlocker", None)  # comfy_api.latest.io re-exported it up to 0.3.x
    if cls is None:  # 0.33+: only comfy_execution has it
        from comfy_execution.graph_utils import ExecutionBlocker as cls
    return cls(message)


class RecurrentRestore(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TR_RecurrentRestore",
            display_name="Recurrent Restore (Temporal Restore)",
            category="temporal_restore/sampling",
            description="Restores frames in order; the previous restored frame, warped by optical flow and masked "
                        "by a forward-backward + photometric confidence, conditions the next (init latent and/or "
                        "ControlNet hint). Pair with TR_DistilledSampler / TR_DistilledSigmas for few-step models.",
            inputs=[
                io.Model.Input("model", tooltip="The (patched) diffusion model."),
                io.Conditioning.Input("positive", tooltip="Positive conditioning (shared by every frame)."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning (shared by every frame)."),
                io.Sampler.Input("sampler", tooltip="SAMPLER for each frame, e.g. TR_DistilledSampler."),
                io.Sigmas.Input("sigmas", tooltip="SIGMAS for each frame, e.g. TR_DistilledSigmas with denoise < 1 so "
                                "the aligned init latent matters."),
                io.Latent.Input("latent", tooltip="Degraded clip latent [frames, C, h, w] (VAEEncode of the frames)."),
                io.Image.Input("images", tooltip="The degraded frames [frames, H, W, 3]: flow, photometric check and "
                               "ControlNet hint."),
                io.Int.Input("noise_seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Frame t gets the noise of seed + its absolute frame index."),
                io.Float.Input("cfg", default=1.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale (distilled models: 1-2)."),
                io.Float.Input("strength", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="Weight s of the aligned previous frame: x_init = m*s*aligned + (1-m*s)*degraded. "
                                       "0 = plain per-frame restoration."),
                io.Float.Input("photometric_tau", default=recurrent_align.DEFAULT_TAU, min=0.001, max=1.0, step=0.001,
                               tooltip="Tolerance of the photometric check: confidence exp(-(e/tau)^2), e = blurred "
                                       "|warped previous - current| of the degraded frames (0..1 units)."),
                io.Float.Input("blur", default=recurrent_align.DEFAULT_BLUR, min=0.0, max=8.0, step=0.1,
                               tooltip="Gaussian sigma (pixels) applied before the photometric check, so noise that "
                                       "the degraded frames do not share is not taken for motion error."),
                io.Int.Input("group", default=1, min=1, max=64,
                             tooltip="Frames restored per sampler call. 1 = strictly recurrent (each frame aligned to "
                                     "the previous one); G > 1 aligns every frame of a group to the last frame of "
                                     "the previous group (longer-range flow) and batches the group (faster on small "
                                     "frames: on CPU at 256 px group 1 costs about 1.3x a batched sampler per frame, "
                                     "group 4 about 1.1x; at 512 px group 1 is already on par)."),
                io.Float.Input("control_strength", default=1.0, min=0.0, max=10.0, step=0.01,
                               tooltip="ControlNet strength (only with a control_net)."),
                FLOW.Input("flow", optional=True, tooltip="Optional FLOW of the degraded clip (or the whole clip when "
                           "the frames are a window); estimated per pair with OpenCV DIS when absent."),
                io.ControlNet.Input("control_net", optional=True,
                                    tooltip="Optional ControlNet whose per-frame hint is the aligned blend."),
                io.Vae.Input("vae", optional=True, tooltip="VAE to decode the previous restored frame for the ControlNet "
                             "hint; without it the hint is the degraded frame."),
                io.Noise.Input("noise", optional=True, tooltip="Optional NOISE (e.g. shared / correlated noise) for the "
                               "whole clip; replaces the per-frame seeded noise."),
                io.Boolean.Input("decode_images", default=False, optional=True,
                                 tooltip="Also output the restored frames decoded by the vae: each frame is decoded "
                                         "once, and the next frame's ControlNet hint reuses that decode instead of "
                                         "decoding the previous frame again. Use the images output in place of a "
                                         "VAEDecode after this node."),
            ],
            outputs=[io.Latent.Output(display_name="latent"),
                     io.Mask.Output(display_name="confidence", tooltip="Alignment confidence m*s per frame on the "
                                    "latent grid (0 = not aligned); upscale it to view it over the frames."),
                     io.Image.Output(display_name="images", tooltip="The restored frames decoded by the vae "
                                     "(only with decode_images on).")],
        )

    @classmethod
    def execute(cls, model, positive, negative, sampler, sigmas, latent, images, noise_seed, cfg, strength,
                photometric_tau, blur, group, control_strength, flow=None, control_net=None, vae=None,
                noise=None, decode_images=False) -> io.NodeOutput:
        check_finite(latent, "latent")
        check_finite(images, "images")
        out, conf, decoded = recurrent_sample(model, positive, negative, sampler, sigmas, latent, images, noise_seed,
                                              cfg, strength, flow=flow, tau=photometric_tau, blur=blur,
                                              control_net=control_net, vae=vae, control_strength=control_strength,
                                              noise=noise, group=group, decode_images=decode_images)
        if decoded is None:  # a node fed from this output stops with this message instead of receiving nothing
            decoded = _blocker("TR_RecurrentRestore: its images output is off; set decode_images on "
                               "(with a vae connected), or decode its latent with a VAEDecode")
        return io.NodeOutput(out, conf, decoded)


NODES = [RecurrentRestore]
