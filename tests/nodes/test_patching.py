"""nodes/_patching.py: the shared chunk / frame-index / clone helpers."""
import pytest


@pytest.fixture(scope="module")
def patching(comfy_host):  # the pack's nodes package imports comfy_api: needs the host on sys.path
    from temporal_restore.nodes import _patching

    return _patching


def test_chunk_layout(patching):
    assert patching.chunk_layout({"cond_or_uncond": [1, 0]}, 8) == (2, 4)
    assert patching.chunk_layout({"cond_or_uncond": [0]}, 5) == (1, 5)
    assert patching.chunk_layout({}, 6) == (1, 6)
    assert patching.chunk_layout(None, 3) == (1, 3)
    with pytest.raises(ValueError, match="batch"):
        patching.chunk_layout({"cond_or_uncond": [1, 0]}, 7)


def test_frame_index(patching):
    assert patching.frame_index({}, 3) == [0, 1, 2]
    assert patching.frame_index({"temporal_restore": {"frame_index": [7, 8, 9]}}, 3) == [7, 8, 9]
    assert patching.frame_index({"temporal_restore": {"other": 1}}, 2) == [0, 1]
    with pytest.raises(ValueError, match="frame_index"):
        patching.frame_index({"temporal_restore": {"frame_index": [1, 2]}}, 3)


def test_clone_with_options_leaves_original(patching, tiny):
    import comfy.sd

    model = comfy.sd.load_checkpoint_guess_config(tiny["checkpoint_path"], output_vae=False, output_clip=False)[0]
    model.model_options.setdefault("transformer_options", {})["temporal_restore"] = {"a": 1}
    a = patching.clone_with_options(model, "frame_index", [4, 5])
    b = patching.clone_with_options(a, "frame_index", [6, 7])
    assert model.model_options["transformer_options"]["temporal_restore"] == {"a": 1}
    assert a.model_options["transformer_options"]["temporal_restore"] == {"a": 1, "frame_index": [4, 5]}
    assert b.model_options["transformer_options"]["temporal_restore"] == {"a": 1, "frame_index": [6, 7]}
    assert patching.get_option(b, "frame_index") == [6, 7] and patching.get_option(model, "frame_index") is None
    assert a is not model and a.model is model.model
    with pytest.raises(ValueError, match="key"):
        patching.clone_with_options(model, "", 1)


def test_resolve_frame_index_is_strict(patching):
    assert patching.resolve_frame_index(None, 2) == [0, 1]
    assert patching.resolve_frame_index((4, 5), 2, "latent") == [4, 5]
    with pytest.raises(ValueError, match="^latent: expected 3 absolute frame indices"):
        patching.resolve_frame_index([4, 5], 3, "latent")
    assert patching.model_frame_index({"transformer_options": {"temporal_restore": {"frame_index": [9]}}}, 1) == [9]


def test_install_helpers_replace_in_place_and_keep_foreign_hooks(patching, tiny):
    import comfy.sd

    model = comfy.sd.load_checkpoint_guess_config(tiny["checkpoint_path"], output_vae=False, output_clip=False)[0]

    def foreign(args):
        return args["denoised"]

    def ours_a(args):
        return args["denoised"]

    def ours_b(args):
        return args["denoised"]

    m = patching.install_post_cfg(model.clone(), "k", ours_a)
    m.set_model_sampler_post_cfg_function(foreign)
    m2 = patching.install_post_cfg(m.clone(), "k", ours_b)
    assert m2.model_options["sampler_post_cfg_function"] == [ours_b, foreign]  # replaced where it was
    assert m.model_options["sampler_post_cfg_function"] == [ours_a, foreign]  # the clone's source untouched

    class Replace:
        def __init__(self, prev):
            self.prev = prev

        def __call__(self, q, k, v, extra_options, *args, **kwargs):
            return q

    other = Replace(None)
    m3 = model.clone()
    m3.set_model_attn1_replace(other, "output", 3)
    first = patching.install_attn1_replace(m3, "k", Replace, "output", 3)
    second = patching.install_attn1_replace(m3, "k", Replace, "output", 3)
    attn1 = m3.model_options["transformer_options"]["patches_replace"]["attn1"]
    assert attn1[("output", 3)] is second and second.prev is other and first.prev is other

    def tm(n, c, v, extra_options, *args, **kwargs):
        return n, c, v

    m4 = patching.install_attn1_patch(patching.install_attn1_patch(model.clone(), "t", tm), "t", tm)
    assert m4.model_options["transformer_options"]["patches"]["attn1_patch"] == [tm]
