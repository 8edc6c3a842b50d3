"""Test-only custom node folder: registers the tiny SD1.5 model type and the tiny SD2.1-v / SDXL / x4
upscaler families (tests/tiny_families.py) in a test server.

Lives under tests/ so the shipped pack never changes ComfyUI's model detection.
"""
import importlib.util
import os
import sys

_here = os.path.dirname(os.path.realpath(__file__))
_spec = importlib.util.spec_from_file_location("tr_tests_tiny_models", os.path.join(_here, "..", "..", "tiny_models.py"))
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
_mod.register()
sys.modules.setdefault("tr_tests_tiny_models", _mod)
_fspec = importlib.util.spec_from_file_location("tr_tests_tiny_families", os.path.join(_here, "..", "..", "tiny_families.py"))
_fam = importlib.util.module_from_spec(_fspec)
_fspec.loader.exec_module(_fam)
_fam.register()

NODE_CLASS_MAPPINGS = {}
