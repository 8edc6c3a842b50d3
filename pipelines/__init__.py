"""Pure torch/numpy algorithms of the pack. Never imports ComfyUI.

Importable on its own (``python -c "import pipelines.sw_cfa"`` from the repo root) and as
``<pack>.pipelines`` when ComfyUI loads the pack.
"""
