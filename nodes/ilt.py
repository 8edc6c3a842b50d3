"""TR_ILTChunker: sample a clip of any length in overlapping windows (DiffVSR §3.4, Eq. 4).

Two modes:

* ``fused``: one sampler run over the whole latent; every model call is split into windows (each
  window's conditioning, ControlNet hint and ``frame_index`` sliced to its frames) and the per-window
  denoised predictions are blended with the Eq. 4 weights at every step, so all windows advance
  together and overlaps agree at every step. Activation memory is bounded by one window; the latent
  of the whole clip is held (it is small: ``[T, 4, H/8, W/8]``).
* ``sequential``: windows sampled one after the other, each a full sampler run on its frames. With
  ``carry_state`` the previous window's denoised predictions on the shared frames (recorded per
  sigma) are blended into the current window's predictions with the Eq. 4 weights, so the overlap
  frames follow the previous window's trajectory at the seam and hand over to the new window
  gradually; the results are then fused with the Eq. 4 weights. Patches may also keep per-window
  state (e.g. attention K/V of boundary frames) in ``transformer_options["temporal_restore"]
  ["ilt_state"]`` (a mapping shared by every model call of one run; ``"window"`` is the index in
  sequential mode; it is deliberately not a ``dict``, which ComfyUI would copy per call).
* ``boundary_kv > 0`` (both modes): self-attention keys/values of the previous window's last
  exclusive frames are appended to every frame of the next window (:class:`BoundaryKV`), so a window
  sees its neighbour's content at the seam, not only through the blended overlap.

Both modes use the rescheduled noise (same noise frames reused and reordered across overlaps) unless
``noise`` is ``independent`` (ComfyUI's ``prepare_noise`` over the whole clip). Any stock SAMPLER and
SIGMAS (or sampler_name / scheduler / steps / denoise) and any model patches work; each window's
absolute frame indices are published in ``transformer_options["temporal_restore"]["frame_index"]``.
Conditioning tensors, ControlNet hints (``cond_hint_original``) and the noise mask whose batch equals
the clip length are sliced per window; batch-1 ones are shared. Conditioning hooks are applied on the
whole-clip conditioning only (not re-resolved per window).
"""
from __future__ import annotations

import logging
from collections.abc import MutableMapping

import torch

from comfy_api.latest import io

from ..pipelines import ilt
from ._patching import NAMESPACE
from ._checks import check_finite, check_steps

log = logging.getLogger("temporal_restore")

KEY = "ilt_state"


def _slice_tensor(v, sl: slice, total: int):
    if torch.is_tensor(v) and v.dim() > 0 and total > 1 and v.shape[0] == total:
        return v[sl]
    return v


def _slice_control(control, sl: slice, total: int, memo: dict):
    if control is None:
        return None
    if id(control) in memo:
        return memo[id(control)]
    c = control.copy()
    c.cond_hint_original = _slice_tensor(control.cond_hint_original, sl, total)
    c.extra_concat_orig = [_slice_tensor(e, sl, total) for e in getattr(control, "extra_concat_orig", [])]
    if getattr(control, "previous_controlnet", None) is not None:
        c.previous_controlnet = _slice_control(control.previous_controlnet, sl, total, memo)
    memo[id(control)] = c
    return c


def slice_conditioning(cond, sl: slice, total: int, memo: dict):
    """CONDITIONING restricted to frames ``sl`` of a ``total``-frame clip (per-frame tensors sliced,
    ControlNets copied with their hint sliced; ``memo`` shares copies between positive/negative)."""
    out = []
    for t, d in cond:
        d2 = {}
        for k, v in d.items():
            if k == "control":
                d2[k] = _slice_control(v, sl, total, memo)
            else:
                d2[k] = _slice_tensor(v, sl, total)
        out.append([_slice_tensor(t, sl, total), d2])
    return out


def _controls(conds):
    seen = []
    for v in conds.values():
        for c in v:
            ctl = c.get("control")
            while ctl is not None:
                if all(ctl is not s for s in seen):
                    seen.append(ctl)
                ctl = getattr(ctl, "previous_controlnet", None)
    return seen


class _Progress:
    def __init__(self, total: int):
        import comfy.utils

        self.total = max(1, int(total))
        self.done = 0
        self.bar = comfy.utils.ProgressBar(self.total)

    def tick(self):
        self.done += 1
        self.bar.update_absolute(min(self.done, self.total), self.total)


class BoundaryKV:
    """attn1_patch carrying the self-attention keys/values of boundary frames into the next window.

    Window ``i`` publishes the attention input (pre-projection hidden states, i.e. what becomes K/V)
    of its frames just before window ``i + 1`` starts, and window ``i + 1`` appends them to the
    keys/values of all its frames at the same sigma, per block and per cond/uncond chunk (never
    mixed). Fused mode runs the windows one after the other at each sigma, so only the current sigma
    is kept; sequential mode keeps the previous window's boundary frames for every sigma of the
    schedule (memory: steps x blocks x frames of hidden states). Per-window instructions come from
    ``transformer_options["temporal_restore"]["ilt_kv"]`` (``{"read_store", "write_store", "publish",
    "read", "fused"}``); without them the patch does nothing.
    Replacement attention patches placed after this one see keys/values with more tokens than queries.
    """

    _temporal_restore = "ilt_kv"

    def __call__(self, n, context, value, extra_options):
        from ._patching import chunk_layout, frame_index, tr_options

        spec = tr_options(extra_options).get("ilt_kv")
        if not spec or (not spec["publish"] and not spec["read"]):
            return n, context, value
        n_chunks, frames = chunk_layout(extra_options, n.shape[0])
        fidx = frame_index(extra_options, frames)
        kinds = list(extra_options.get("cond_or_uncond") or [0])
        sig = extra_options.get("sigmas")
        sig = round(float(sig.flatten()[0]), 5) if torch.is_tensor(sig) else None
        wstore, rstore = spec["write_store"], spec["read_store"]
        if spec["fused"] and wstore.sigma != sig:
            wstore.data.clear()
            wstore.sigma = sig
        block = (tuple(extra_options.get("block") or ()), extra_options.get("block_index", 0))
        ctx = n if context is None else context
        val = ctx if value is None else value
        pos = {f: j for j, f in enumerate(fidx)}
        for f in spec["publish"]:
            if f in pos:
                for c in range(n_chunks):
                    i = c * frames + pos[f]
                    wstore.data[(sig, block, kinds[c], f)] = (ctx[i].detach().clone(), val[i].detach().clone())
        if not spec["read"]:
            return n, context, value
        new_ctx, new_val = [], []
        for c in range(n_chunks):
            got = [rstore.data.get((sig, block, kinds[c], f)) for f in spec["read"]]
            got = [g for g in got if g is not None and g[0].shape[-1] == ctx.shape[-1]]
            sl = slice(c * frames, (c + 1) * frames)
            if not got:
                new_ctx.append(ctx[sl])
                new_val.append(val[sl])
                continue
            ek = torch.cat([g[0] for g in got], 0).to(ctx)[None].expand(frames, -1, -1)
            ev = torch.cat([g[1] for g in got], 0).to(val)[None].expand(frames, -1, -1)
            new_ctx.append(torch.cat([ctx[sl], ek], 1))
            new_val.append(torch.cat([val[sl], ev], 1))
        if len({t.shape[1] for t in new_ctx}) != 1:  # a chunk missed its boundary: keep all as they were
            return n, context, value
        return n, torch.cat(new_ctx, 0), torch.cat(new_val, 0)


class RunState(MutableMapping):
    """Per-run state shared by all windows (a mapping, deliberately not a ``dict``: ComfyUI copies
    every nested dict of ``transformer_options`` before each model call, which would cut the link)."""

    def __init__(self):
        self._d: dict = {}

    def __getitem__(self, k):
        return self._d[k]

    def __setitem__(self, k, v):
        self._d[k] = v

    def __delitem__(self, k):
        del self._d[k]

    def __iter__(self):
        return iter(self._d)

    def __len__(self):
        return len(self._d)


class _Store:
    """Boundary K/V of the current sigma (an object, not a dict, for the same reason)."""

    def __init__(self):
        self.sigma = None
        self.data: dict = {}


def _kv_specs(plan, frames_kv: int, store, fused: bool = True):
    """Per window: absolute frames to publish for the next window and to read from the previous one."""
    specs = []
    for i, w in enumerate(plan.windows):
        read, publish = [], []
        if i > 0:
            m = min(frames_kv, w.start - plan.windows[i - 1].start)
            read = list(range(w.start - m, w.start))
        if i + 1 < len(plan):
            nxt = plan.windows[i + 1].start
            m = min(frames_kv, nxt - w.start)
            publish = list(range(nxt - m, nxt))
        specs.append({"read_store": store, "write_store": store, "publish": publish, "read": read, "fused": fused})
    return specs


def _make_guider_class():
    import comfy.model_management
    import comfy.model_patcher
    import comfy.patcher_extension
    import comfy.samplers
    import comfy.sampler_helpers

    class WindowedGuider(comfy.samplers.CFGGuider):
        """CFGGuider whose prediction is the Eq. 4 blend of per-window predictions.

        ``parts``: list of ``(local_slice, frame_index, weight[len], raw_conds)``; ``carry``: optional
        dict for sequential mode (see module docstring)."""

        def set_windows(self, parts, progress=None, carry=None, state=None):
            self.parts = parts
            self.progress = progress
            self.carry = carry
            self.state = RunState() if state is None else state
            self.kv_specs = None
            # ComfyUI sizes the model load (and lowvram offloading) for the whole latent batch; a model
            # call here never holds more than one window, so estimate the memory for one window.
            win = max(sl.stop - sl.start for sl, _, _, _ in parts)

            def window_memory(executor, model, noise_shape, *args, **kwargs):
                # forwards whatever ComfyUI adds (0.33 passes force_full_load= / force_offload=)
                shape = [min(int(noise_shape[0]), win)] + list(noise_shape[1:])
                return executor(model, shape, *args, **kwargs)

            self.model_options = comfy.model_patcher.create_model_options_clone(self.model_options)
            comfy.patcher_extension.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING,
                                                         "temporal_restore_ilt", window_memory, self.model_options,
                                                         is_model_options=True)

        def inner_sample(self, noise, latent_image, device, sampler, sigmas, denoise_mask, callback,
                         disable_pbar, seed, latent_shapes=None):
            li = latent_image
            if li is not None and torch.count_nonzero(li) > 0:
                li = self.inner_model.process_latent_in(li)
            self.window_conds = []
            for sl, _, _, raw in self.parts:
                conds = {k: [c.copy() for c in comfy.sampler_helpers.convert_cond(v)] for k, v in raw.items()}
                dm = None if denoise_mask is None else denoise_mask[sl]
                self.window_conds.append(comfy.samplers.process_conds(
                    self.inner_model, noise[sl], conds, device, None if li is None else li[sl], dm, seed))
            try:
                return super().inner_sample(noise, latent_image, device, sampler, sigmas, denoise_mask, callback,
                                            disable_pbar, seed, latent_shapes=latent_shapes)
            finally:
                for wc in self.window_conds:
                    for ctl in _controls(wc):
                        ctl.cleanup()
                self.window_conds = []

        def predict_noise(self, x, timestep, model_options={}, seed=None):
            out = torch.zeros_like(x)
            per_item = torch.is_tensor(timestep) and timestep.dim() > 0 and timestep.shape[0] == x.shape[0]
            for k, ((sl, fidx, weight, _), wc) in enumerate(zip(self.parts, self.window_conds)):
                comfy.model_management.throw_exception_if_processing_interrupted()
                mo = dict(model_options)
                to = dict(mo.get("transformer_options", {}))
                ns = dict(to.get(NAMESPACE, {}))
                ns["frame_index"] = list(fidx)
                ns[KEY] = self.state
                if self.kv_specs is not None:
                    ns["ilt_kv"] = self.kv_specs[k]
                else:
                    ns.pop("ilt_kv", None)
                to[NAMESPACE] = ns
                mo["transformer_options"] = to
                ts = timestep[sl] if per_item else timestep
                d = comfy.samplers.sampling_function(self.inner_model, x[sl], ts, wc.get("negative"),
                                                     wc.get("positive"), self.cfg, model_options=mo, seed=seed)
                if self.carry is not None:
                    d = self._carry(d, ts)
                w = weight.to(device=d.device, dtype=d.dtype).reshape((-1,) + (1,) * (d.dim() - 1))
                out[sl] += w * d
                if self.progress is not None:
                    self.progress.tick()
            return out

        def _carry(self, d, ts):
            key = round(float(ts.flatten()[0]), 5)
            prev = self.carry["prev"].get(key)
            pos, alpha = self.carry["pos"], self.carry["alpha"]
            if prev is not None and pos:
                a = alpha.to(device=d.device, dtype=d.dtype).reshape((-1,) + (1,) * (d.dim() - 1))
                d = d.clone()
                d[pos] = a * prev.to(d) + (1 - a) * d[pos]
            if self.carry["next_pos"]:
                self.carry["next"][key] = d[self.carry["next_pos"]].detach().clone()
            return d

    return WindowedGuider


def chunked_sample(model, positive, negative, latent: dict, seed: int, cfg: float, sampler, sigmas,
                   window: int = 8, overlap: int = 4, mode: str = "fused", noise_mode: str = "rescheduled",
                   carry_state: bool = True, blend_mode: str = "ilt", progress: bool = True,
                   boundary_kv: int = 0) -> dict:
    """Sample ``latent`` (``{"samples": [T,C,h,w], ...}``) in overlapping windows. Returns a LATENT."""
    import comfy.model_management
    import comfy.sample
    import comfy.utils

    if mode not in ("fused", "sequential"):
        raise ValueError(f"mode: expected 'fused' or 'sequential', got {mode!r}")
    if noise_mode not in ("rescheduled", "independent"):
        raise ValueError(f"noise: expected 'rescheduled' or 'independent', got {noise_mode!r}")
    samples = latent["samples"]
    if samples.is_nested or samples.dim() != 4:
        raise ValueError(f"latent: expected image latents [frames, C, h, w], got shape {tuple(samples.shape)}")
    total = int(samples.shape[0])
    if total < 1:
        raise ValueError("latent: expected at least 1 frame, got 0")
    latent_image = comfy.sample.fix_empty_latent_channels(model, samples)
    plan = ilt.WindowPlan(total, window, overlap, blend_mode)
    if noise_mode == "rescheduled":
        noise = ilt.reschedule_noise(total, window, overlap, latent_image.shape[1:], seed=seed,
                                     dtype=latent_image.dtype, windows=plan.windows)
    else:
        noise = comfy.sample.prepare_noise(latent_image, seed)
    noise_mask = latent.get("noise_mask")
    steps = max(1, int(sigmas.shape[-1]) - 1)
    pbar = _Progress(len(plan) * steps) if progress else None
    disable_pbar = not comfy.utils.PROGRESS_BAR_ENABLED
    Guider = _make_guider_class()
    state = RunState()

    def parts_for(indices, local):
        parts = []
        for i in indices:
            w = plan.windows[i]
            sl_abs = slice(w.start, w.end)
            memo: dict = {}
            raw = {"positive": slice_conditioning(positive, sl_abs, total, memo),
                   "negative": slice_conditioning(negative, sl_abs, total, memo)}
            sl = slice(0, len(w)) if local else sl_abs
            weight = torch.ones(len(w), dtype=torch.float64) if local else plan.weights[i]
            parts.append((sl, w.frames, weight, raw))
        return parts

    if int(boundary_kv) < 0:
        raise ValueError(f"boundary_kv: expected 0 or more frames, got {boundary_kv}")
    if mode == "fused":
        kv_specs = None
        if boundary_kv and len(plan) > 1:
            model = model.clone()
            model.set_model_attn1_patch(BoundaryKV())
            kv_specs = _kv_specs(plan, int(boundary_kv), _Store())
        guider = Guider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        guider.set_windows(parts_for(range(len(plan)), local=False), pbar, None, state)
        guider.kv_specs = kv_specs
        state["window"] = None
        out = guider.sample(noise, latent_image, sampler, sigmas, denoise_mask=noise_mask, callback=None,
                            disable_pbar=disable_pbar, seed=seed)
        out = out.to(comfy.model_management.intermediate_device())
    else:
        out = None
        carry = {"prev": {}, "next": {}, "pos": [], "alpha": torch.zeros(0), "next_pos": []}
        kv_specs = None
        if boundary_kv and len(plan) > 1:
            model = model.clone()
            model.set_model_attn1_patch(BoundaryKV())
            kv_specs = _kv_specs(plan, int(boundary_kv), None, fused=False)
            kv_prev = _Store()
        for i, w in enumerate(plan.windows):
            comfy.model_management.throw_exception_if_processing_interrupted()
            sl = slice(w.start, w.end)
            parts = parts_for([i], local=True)
            guider = Guider(model)
            guider.set_conds(parts[0][3]["positive"], parts[0][3]["negative"])
            guider.set_cfg(cfg)
            if carry_state:
                pos, alpha = plan.carried(i)
                nxt = plan.carried(i + 1)[0] if i + 1 < len(plan) else []
                carry.update(pos=pos, alpha=alpha,
                             next_pos=[plan.windows[i + 1].start - w.start + p for p in nxt], next={})
            state["window"] = i
            guider.set_windows(parts, pbar, carry if carry_state else None, state)
            if kv_specs is not None:
                kv_next = _Store()
                guider.kv_specs = [dict(kv_specs[i], read_store=kv_prev, write_store=kv_next)]
            mask = _slice_tensor(noise_mask, sl, total) if noise_mask is not None else None
            res = guider.sample(noise[sl], latent_image[sl], sampler, sigmas, denoise_mask=mask, callback=None,
                                disable_pbar=disable_pbar, seed=seed)
            res = res.to(comfy.model_management.intermediate_device())
            if out is None:
                out = torch.zeros((total,) + tuple(res.shape[1:]), dtype=res.dtype, device=res.device)
            wt = plan.weights[i].to(res).reshape((-1,) + (1,) * (res.dim() - 1))
            out[sl] += wt * res
            if carry_state:
                carry["prev"], carry["next"] = carry["next"], {}
            if kv_specs is not None:
                kv_prev = kv_next  # only the boundary frames of the window just finished are kept
            del res, guider
    result = latent.copy()
    result.pop("downscale_ratio_spacial", None)
    result["samples"] = out
    return result


def resolve_sampler(model, sampler, sigmas, sampler_name, scheduler, steps, denoise):
    import comfy.samplers

    if sampler is None:
        sampler = comfy.samplers.sampler_object(sampler_name)
    if sigmas is None:
        ks = comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler=sampler_name,
                                     scheduler=scheduler, denoise=denoise)
        sigmas = ks.sigmas
    return sampler, sigmas


def _sampler_names():
    try:
        import comfy.samplers

        return list(comfy.samplers.KSampler.SAMPLERS), list(comfy.samplers.KSampler.SCHEDULERS)
    except Exception:  # schema built outside ComfyUI
        return ["euler"], ["normal"]


class ILTChunker(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        samplers, schedulers = _sampler_names()
        return io.Schema(
            node_id="TR_ILTChunker",
            display_name="ILT Chunker (Temporal Restore)",
            category="temporal_restore/sampling",
            description="Samples a clip of any length in overlapping windows, blended with ILT (DiffVSR Eq. 4) "
                        "and rescheduled noise.",
            inputs=[
                io.Model.Input("model", tooltip="The (patched) diffusion model."),
                io.Conditioning.Input("positive", tooltip="Positive conditioning; per-frame batches and "
                                      "ControlNet hints with one entry per frame are sliced per window."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning (sliced like positive)."),
                io.Latent.Input("latent", tooltip="Latent clip [frames, C, h, w] (e.g. VAEEncode of the frames)."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Seed of the noise (base noise frames for rescheduling)."),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale."),
                io.Combo.Input("sampler_name", options=samplers, default="euler" if "euler" in samplers else samplers[0],
                               tooltip="Sampler used when no SAMPLER input is connected."),
                io.Combo.Input("scheduler", options=schedulers, default="normal" if "normal" in schedulers else schedulers[0],
                               tooltip="Scheduler used when no SIGMAS input is connected."),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Steps when no SIGMAS input is connected."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Denoise strength when no SIGMAS input is connected."),
                io.Int.Input("window", default=8, min=1, max=4096, tooltip="Frames per window (DiffVSR uses 8)."),
                io.Int.Input("overlap", default=4, min=0, max=4095,
                             tooltip="Frames shared by consecutive windows; must be smaller than window."),
                io.Combo.Input("mode", options=["fused", "sequential"], default="fused",
                               tooltip="fused: all windows advance together, predictions blended every step. "
                                       "sequential: one window after another (bounded memory), overlap carried in."),
                io.Combo.Input("noise", options=["rescheduled", "independent"], default="rescheduled",
                               tooltip="rescheduled: the same noise frames reused and reordered across overlaps "
                                       "(FreeNoise / DiffVSR). independent: ComfyUI noise for the whole clip."),
                io.Boolean.Input("carry_state", default=True,
                                 tooltip="sequential mode: blend the previous window's per-step predictions into "
                                         "the overlap frames (seamless boundaries)."),
                io.Int.Input("boundary_kv", default=0, min=0, max=16, optional=True,
                             tooltip="Frames of the previous window whose self-attention keys/values are appended "
                                     "to every frame of the next window (0 = off; sequential mode keeps them for "
                                     "every step)."),
                io.Sampler.Input("sampler", optional=True, tooltip="Optional SAMPLER (overrides sampler_name)."),
                io.Sigmas.Input("sigmas", optional=True, tooltip="Optional SIGMAS (overrides scheduler/steps/denoise)."),
            ],
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent, seed, cfg, sampler_name, scheduler, steps, denoise,
                window, overlap, mode, noise, carry_state, boundary_kv=0, sampler=None,
                sigmas=None) -> io.NodeOutput:
        check_finite(latent, "latent")
        if sampler is None and sigmas is None:
            check_steps(steps, "steps")
        sampler, sigmas = resolve_sampler(model, sampler, sigmas, sampler_name, scheduler, steps, denoise)
        if sigmas.shape[-1] <= 1:
            return io.NodeOutput(latent)
        out = chunked_sample(model, positive, negative, latent, seed, cfg, sampler, sigmas, window=window,
                             overlap=overlap, mode=mode, noise_mode=noise, carry_state=carry_state,
                             boundary_kv=boundary_kv)
        return io.NodeOutput(out)


class RescheduledNoiseObject:
    """NOISE for SamplerCustomAdvanced: ``window`` base noise frames reused and reordered across
    overlapping windows (:func:`pipelines.ilt.reschedule_noise`), for samplers outside the chunker."""

    def __init__(self, seed: int, window: int, overlap: int):
        self.seed, self.window, self.overlap = int(seed), int(window), int(overlap)
        ilt.plan_windows(1, self.window, self.overlap)  # validate early

    def generate_noise(self, input_latent):
        x = input_latent["samples"]
        if x.is_nested or x.dim() < 2 or x.shape[0] < 1:
            raise ValueError(f"latent: expected [frames, ...] with at least one frame, got {tuple(x.shape)}")
        return ilt.reschedule_noise(x.shape[0], self.window, self.overlap, x.shape[1:], seed=self.seed, dtype=x.dtype)


class RescheduledNoise(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="TR_RescheduledNoise",
            display_name="Rescheduled Noise (Temporal Restore)",
            category="temporal_restore/sampling",
            description="Noise whose frames repeat, reordered, every window (DiffVSR noise rescheduling / FreeNoise), "
                        "for SamplerCustomAdvanced.",
            inputs=[
                io.Int.Input("noise_seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Seed of the base noise frames."),
                io.Int.Input("window", default=8, min=1, max=4096, tooltip="Frames per window (distinct noise frames)."),
                io.Int.Input("overlap", default=4, min=0, max=4095,
                             tooltip="Frames shared by consecutive windows; must be smaller than window."),
            ],
            outputs=[io.Noise.Output(display_name="noise")],
        )

    @classmethod
    def execute(cls, noise_seed, window, overlap) -> io.NodeOutput:
        return io.NodeOutput(RescheduledNoiseObject(noise_seed, window, overlap))


NODES = [ILTChunker, RescheduledNoise]
