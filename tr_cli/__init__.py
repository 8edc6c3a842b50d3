"""Headless runner for the Temporal Restore workflows (`python -m tr_cli --help`). Talks to ComfyUI over HTTP."""
