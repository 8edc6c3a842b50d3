"""Test-only custom node folder: registers the tiny SD1.5 model type in a test server.

Lives under tests/ so the shipped pack never changes ComfyUI's model detection.
"""
import importlib.util
import os

_here = os.path.dirname(os.path.realpath(__file__))
_spec = importlib.util.spec_from_file_location("tr_tests_tiny_models", os.path.join(_here, "..", "..", "tiny_models.py"))
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
_mod.register()

NODE_CLASS_MAPPINGS = {}
