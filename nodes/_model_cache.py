"""A small pack-level cache of loaded model files, keyed by path + mtime + size.

ComfyUI's node cache keys a node's outputs by all of its inputs, so a loader node that also encodes a
prompt (TR_TaskPromptControlNet) would re-read its model file whenever only the prompt or a setting
changes: 689 MiB per run for an SD1.5 ControlNet. This cache keeps the last few loaded objects:

* key: the absolute path plus ``st_mtime_ns`` and ``st_size`` of the file, so a file replaced or
  rewritten in place is loaded again (the stale entry is dropped at once);
* bounded: at most ``MAX_ENTRIES`` objects (least recently used dropped first), so switching between
  many files never holds more than that many models in RAM;
* callers get the cached object itself and must not mutate it (the ControlNet path only ever
  ``copy()``s it, as ComfyUI's ControlNetApply nodes do).
"""
from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from typing import Any, Callable

log = logging.getLogger("temporal_restore")

MAX_ENTRIES = 2

_entries: "OrderedDict[str, tuple[tuple[int, int], Any]]" = OrderedDict()
_lock = threading.Lock()


def _stamp(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size


def load_cached(path: str, loader: Callable[[str], Any]) -> Any:
    """``loader(path)``, or the object loaded earlier from the same unchanged file.

    A ``None`` result (not a valid file) is returned but never cached.
    """
    path = os.path.abspath(path)
    stamp = _stamp(path)
    with _lock:
        hit = _entries.get(path)
        if hit is not None and hit[0] == stamp:
            _entries.move_to_end(path)
            log.debug("model cache hit: %s", path)
            return hit[1]
        _entries.pop(path, None)  # changed file (or first load): drop the stale object before loading
    obj = loader(path)
    if obj is None:
        return None
    with _lock:
        _entries[path] = (stamp, obj)
        _entries.move_to_end(path)
        while len(_entries) > MAX_ENTRIES:
            _entries.popitem(last=False)
    return obj


def clear() -> None:
    """Forget every cached object (their memory is freed once nothing else holds them)."""
    with _lock:
        _entries.clear()
