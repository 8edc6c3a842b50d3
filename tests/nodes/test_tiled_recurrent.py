"""TR_RecurrentRestore composed with TR_TiledSampling: each frame's sampler run is tiled (one grid, the frame's
ControlNet hint cut per tile) while the recurrence (previous restored frame warped onto the next) stays whole-frame."""
from __future__ import annotations

import torch
from tiled_env import FRAMES, H, W, _rel, _tiled, probed_tiled, tiled_env  # noqa: F401 (a fixture)


def _clip():
    from temporal_restore.pipelines import synthetic

    clip = synthetic.make_clip("astronaut", FRAMES, H * 8, W * 8, motion="pan", seed=0, pan=(8.0, 0.0))
    return clip.frames, clip.flow_field()  # IMAGE [T, H, W, 3], FLOW


def _restore(env, model, strength, control=True):
    import comfy.samplers

    from temporal_restore.nodes import recurrent_restore

    images, flow = _clip()
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", 4).cpu()[2:]
    out = recurrent_restore.RecurrentRestore.execute(
        model, env["pos"], env["neg"], comfy.samplers.sampler_object("euler"), sigmas, {"samples": env["latent"]},
        images, 0, 2.0, strength, 0.1, 1.0, 1, 1.0, flow=flow, control_net=env["cn"] if control else None).result[0]
    return out["samples"]


def test_one_tile_equals_untiled_recurrent_restore(tiled_env):  # noqa: F811
    one = _tiled(tiled_env["model"], tile=max(H, W) + 8, overlap=8)
    base = _restore(tiled_env, tiled_env["model"], 0.5)
    assert _rel(_restore(tiled_env, one, 0.5), base) <= 1e-6


def test_several_tiles_run_per_frame_and_keep_the_recurrence(tiled_env):  # noqa: F811
    """2 x 3 tiles: every frame's sampling runs on all 6 tiles with that frame's index; strength 0.5 vs 0
    leaves frame 0 (no previous frame) the same and changes the later frames (the warped previous restored
    frame enters the tiled run); tiling changes the result (the tiles really run)."""
    m, seen = probed_tiled(tiled_env["model"])
    rec = _restore(tiled_env, m, 0.5)
    assert torch.isfinite(rec).all()
    assert {f for f, _ in seen} == {(t,) for t in range(FRAMES)} and len(seen) == FRAMES * 6
    plain = _restore(tiled_env, m, 0.0)
    assert _rel(rec[:1], plain[:1]) <= 1e-7
    assert all(_rel(rec[t], plain[t]) > 1e-3 for t in range(1, FRAMES))
    assert _rel(rec, _restore(tiled_env, tiled_env["model"], 0.5)) > 1e-3
