"""The tests' one API-format prompt builder: ``g = Graph(); ck = g.add("CheckpointLoaderSimple", ckpt_name=...)``
returns the new node's id; ``out(ck, 1)`` is the link to its output 1. ``Graph`` is the prompt dict itself, so
``comfy_host.run(g)`` and ``server.run(g)`` take it as is."""
from __future__ import annotations


class Graph(dict):
    """API-format prompt with auto-numbered nodes: ``g.add("Class", input=...)`` returns the node id."""

    def add(self, class_type: str, **inputs) -> str:
        nid = str(len(self) + 1)
        self[nid] = {"class_type": class_type, "inputs": inputs}
        return nid


def out(nid: str, i: int = 0) -> list:
    """A link to output ``i`` of node ``nid``: ``[nid, i]``."""
    return [nid, i]
