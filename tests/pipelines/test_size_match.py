"""pipelines/size_match.to_8bit_centres: what an 8-bit writer stores after it is the nearest level."""
import numpy as np
import torch

from temporal_restore.pipelines.size_match import to_8bit_centres


def _truncating_save(x: torch.Tensor) -> np.ndarray:
    """What ComfyUI's SaveImage does to an IMAGE: 255 x, clipped, cast (truncation)."""
    return np.clip(255.0 * x.float().numpy(), 0, 255).astype(np.uint8)


def test_levels_a_hair_low_are_saved_as_themselves():
    levels = torch.arange(256, dtype=torch.float32)
    low = (levels / 255 - 1e-6).clamp(min=0).reshape(1, 16, 16, 1).expand(1, 16, 16, 3)
    assert (_truncating_save(low) != levels.reshape(1, 16, 16, 1).numpy()).any()  # the defect it removes
    saved = _truncating_save(to_8bit_centres(low))
    assert np.array_equal(saved[..., 0], levels.reshape(1, 16, 16).numpy().astype(np.uint8))


def test_nearest_level_and_dtype_kept():
    x = torch.tensor([0.0, 0.1, 0.5, 0.999, 1.0, 1.2, -0.1], dtype=torch.bfloat16).reshape(1, 1, 7, 1)
    y = to_8bit_centres(x)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    want = np.clip(np.round(255 * x.float().numpy()), 0, 255).astype(np.uint8)
    assert np.array_equal(_truncating_save(y.float()), want)
