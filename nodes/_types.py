"""Custom ComfyUI socket types shared by the pack's nodes.

``FLOW`` (``TR_FLOW``) carries a :class:`temporal_restore.pipelines.flow.FlowField`: forward /
backward flows between neighbouring frames (and optionally between keyframes), forward-backward
occlusion masks and confidences, measured on the ``height x width`` grid it records. Consumers
resample it with ``FlowField.resized(h, w)`` and pick window frames with ``select`` / ``between``.

Other features add their own shared types below.
"""
from comfy_api.latest import io

FLOW = io.Custom("TR_FLOW")
