"""The pack's sample clips in ComfyUI's input folder, so every bundled workflow opens with its video input
filled (the frontend flags a LoadVideo naming a file the input folder lacks as "Media input missing")."""
from __future__ import annotations

import logging
import os
import shutil

log = logging.getLogger("temporal_restore")

SAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "samples")
# input-folder name -> bundled file; pack-prefixed so a user's own file is never shadowed
SAMPLE_INPUTS = {
    "temporal_restore_sample.mp4": "sample_clip.mp4",
    "temporal_restore_sample_noisy.mp4": "sample_clip_noisy.mp4",
}


def provide_sample_inputs(input_dir: str) -> list[str]:
    """Copy the sample clips into ``input_dir`` when absent; returns the names copied. A file of that name
    that differs from ours is left alone (logged), and an unwritable folder only costs a warning."""
    copied = []
    for name, src in SAMPLE_INPUTS.items():
        dst, src = os.path.join(input_dir, name), os.path.join(SAMPLES, src)
        try:
            if os.path.exists(dst):
                if os.path.getsize(dst) != os.path.getsize(src):
                    log.warning("temporal_restore: %s in the input folder is not the pack's sample; left as is", dst)
                continue
            os.makedirs(input_dir, exist_ok=True)
            shutil.copyfile(src, dst + ".part")
            os.replace(dst + ".part", dst)
            copied.append(name)
        except OSError as e:
            log.warning("temporal_restore: could not put sample clip %s in %s: %s", name, input_dir, e)
    return copied
