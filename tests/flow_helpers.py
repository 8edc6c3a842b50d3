"""Synthetic flows for tests (test-only)."""
import torch

from temporal_restore.pipelines.flow import FlowField, fb_check


def translation_flow(T, h, w, dx, dy=0.0) -> FlowField:
    """A FlowField of T frames on an h x w grid moving every pixel by (dx, dy) per frame."""
    fwd = torch.zeros(T - 1, 2, h, w)
    fwd[:, 0], fwd[:, 1] = dx, dy
    bwd = -fwd
    of, ob = fb_check(fwd, bwd), fb_check(bwd, fwd)
    return FlowField(forward=fwd, backward=bwd, occlusion_fwd=of, occlusion_bwd=ob,
                     confidence_fwd=1 - of, confidence_bwd=1 - ob, height=h, width=w)
