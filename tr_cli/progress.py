"""Live progress of one prompt from ComfyUI's websocket messages: the current node with its own
value/total, that node's ETA and the run's ETA, and a one-time warning when the run is far longer than
minutes on this device.

The ETA comes from the first steps actually measured on the device: seconds per step of the current
node times its remaining steps, plus the steps of the sampling nodes still to come at the same rate."""
from __future__ import annotations

from . import workflows

WARN_AFTER = 15 * 60  # seconds: beyond this the user is warned (the run is not refused)


def fmt_seconds(s: float) -> str:
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    """Fed ``(message, now)``; ``line()`` is what to show, ``warning`` is set once when the estimate is long."""

    def __init__(self, prompt: dict, prompt_id: str, warn_after: float = WARN_AFTER):
        self.prompt, self.prompt_id, self.warn_after = prompt, prompt_id, warn_after
        self.node = None
        self.value = 0
        self.total = None
        self.node_start = None
        self.done = set()
        self.warning = None
        self.eta = None

    def _title(self, nid) -> str:
        node = self.prompt.get(str(nid))
        return workflows.title(node) if node else str(nid)

    def _enter(self, nid, now: float) -> None:
        if self.node is not None:
            self.done.add(self.node)
        self.node, self.value, self.total, self.node_start, self.eta = str(nid), 0, None, now, None

    def update(self, msg: dict, now: float) -> bool:
        """Apply one websocket message; True when the display changed."""
        data = msg.get("data", {}) if isinstance(msg, dict) else {}
        if data.get("prompt_id") not in (None, self.prompt_id):
            return False
        kind = msg.get("type")
        if kind == "executing" and data.get("node") is not None:
            self._enter(data["node"], now)
            return True
        if kind == "progress":
            if str(data.get("node")) != self.node:
                self._enter(data.get("node"), now)
            self.value, self.total = int(data.get("value", 0)), int(data.get("max", 1))
            self._estimate(now)
            return True
        return False

    def _later_steps(self) -> int:
        """Steps of the sampling nodes that have not run yet (their 'steps' input)."""
        return sum(int(n["inputs"]["steps"]) for nid, n in self.prompt.items()
                   if nid not in self.done and nid != self.node and isinstance(n["inputs"].get("steps"), int))

    def _estimate(self, now: float) -> None:
        if not self.value or self.total is None:
            return
        per_step = (now - self.node_start) / self.value
        node_left = per_step * (self.total - self.value)
        self.eta = (node_left, node_left + per_step * self._later_steps())
        if self.warning is None and self.eta[1] > self.warn_after:
            self.warning = (f"warning: at {per_step:.1f}s per step ('{self._title(self.node)}' measured on this "
                            f"device) this run needs about {fmt_seconds(self.eta[1])} more, far beyond minutes; "
                            f"Ctrl-C stops it cleanly. Fewer frames (`stream`), fewer steps (--set ...steps=N), a "
                            f"smaller working scale or a GPU make it shorter.")

    def line(self) -> str:
        if self.node is None:
            return "queued"
        text = f"{self._title(self.node)}"
        if self.total:
            text += f" {self.value}/{self.total}"
        if self.eta:
            text += f" | node eta {fmt_seconds(self.eta[0])} | run eta {fmt_seconds(self.eta[1])}"
        return text
