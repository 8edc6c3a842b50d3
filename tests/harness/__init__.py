"""Test harnesses: an in-process ComfyUI executor and a real headless ComfyUI server on loopback."""
