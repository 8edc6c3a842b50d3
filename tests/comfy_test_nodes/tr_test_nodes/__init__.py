"""Test-only nodes for the bad-input tests (never shipped with the pack).

TRTest_CorruptLatent / TRTest_CorruptImage overwrite some values of a LATENT / IMAGE with NaN, +Inf
or -Inf, so tests can check that the pack's nodes refuse non-finite input with a clear error instead
of silently producing NaN output.
"""
import torch

_VALUES = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def _corrupt(t: torch.Tensor, value: str, frame: int) -> torch.Tensor:
    out = t.clone()
    f = min(max(int(frame), 0), out.shape[0] - 1)
    flat = out[f].reshape(-1)
    flat[:: max(1, flat.numel() // 7)] = _VALUES[value]
    out[f] = flat.reshape(out[f].shape)
    return out


class CorruptLatent:
    CATEGORY = "temporal_restore_tests"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "value": (list(_VALUES),),
                             "frame": ("INT", {"default": 0, "min": 0, "max": 4096})}}

    def run(self, samples, value, frame):
        out = dict(samples)
        out["samples"] = _corrupt(samples["samples"], value, frame)
        return (out,)


class CorruptImage:
    CATEGORY = "temporal_restore_tests"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "value": (list(_VALUES),),
                             "frame": ("INT", {"default": 0, "min": 0, "max": 4096})}}

    def run(self, images, value, frame):
        return (_corrupt(images, value, frame),)


NODE_CLASS_MAPPINGS = {"TRTest_CorruptLatent": CorruptLatent, "TRTest_CorruptImage": CorruptImage}
