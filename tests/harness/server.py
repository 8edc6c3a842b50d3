"""A real headless ComfyUI server on 127.0.0.1 (a free port), driven over HTTP like any API client."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from . import paths


def _load_launcher():
    """tr_cli/launch.py (the launcher the runner uses too), loaded by path: the repo is never put on sys.path."""
    spec = importlib.util.spec_from_file_location("temporal_restore_launch", os.path.join(paths.REPO, "tr_cli",
                                                                                         "launch.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


launch = _load_launcher()
free_port = launch.free_port


class ServerError(RuntimeError):
    def __init__(self, message, entry=None):
        super().__init__(message)
        self.entry = entry


class ComfyServer:
    def __init__(self, base: str, port: int | None = None, python: str = sys.executable, log_dir: str | None = None):
        self.base = base
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(log_dir or base, f"server-{self.port}.log")
        self.python = python
        self.proc: subprocess.Popen | None = None
        self.client_id = str(uuid.uuid4())

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> "ComfyServer":
        self._log = open(self.log_path, "w")
        try:
            self.proc = launch.start(launch.server_command(self.python, self.port, self.base), paths.COMFY_DIR,
                                     self._log, self._ready, timeout, "ComfyUI server", self.log_path)
        except launch.LaunchError as e:
            raise ServerError(f"{e}\n{self.log_tail()}") from None
        return self

    def _ready(self) -> bool:
        try:
            self.get("/system_stats", timeout=2)
            return True
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        launch.stop(self.proc)
        if getattr(self, "_log", None):
            self._log.close()

    def log_tail(self, n: int = 60) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def keep_log(self, name: str) -> str:
        os.makedirs(paths.ARTIFACTS, exist_ok=True)
        dst = os.path.join(paths.ARTIFACTS, f"{name}-server.log")
        shutil.copyfile(self.log_path, dst)
        return dst

    # -- HTTP --------------------------------------------------------------------------------
    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def post(self, path: str, data: dict | None, timeout: float = 30):
        req = urllib.request.Request(self.url + path, data=json.dumps(data or {}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            raise ServerError(f"POST {path} -> {e.code}: {e.read().decode(errors='replace')}") from None
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def object_info(self) -> dict:
        return self.get("/object_info", timeout=60)

    def submit(self, prompt: dict) -> str:
        return self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.get(f"/history/{prompt_id}")
            if prompt_id in hist:
                entry = hist[prompt_id]
                status = entry.get("status", {})
                if status.get("completed") or status.get("status_str") in ("success", "error"):
                    return entry
            if not self.alive():
                raise ServerError(f"server died while running {prompt_id}\n{self.log_tail()}")
            time.sleep(0.2)
        raise ServerError(f"prompt {prompt_id} not finished after {timeout}s")

    def run(self, prompt: dict, timeout: float = 600) -> dict:
        """Queue a prompt and wait. Returns the history entry; raises ServerError with the node error."""
        entry = self.wait(self.submit(prompt), timeout)
        status = entry.get("status", {})
        if status.get("status_str") != "success":
            errors = [m for m in status.get("messages", []) if m[0] == "execution_error"]
            msg = errors[0][1].get("exception_message", "") if errors else str(status)
            raise ServerError(f"prompt failed: {msg}", entry)
        return entry

    def output_files(self, entry: dict) -> list[str]:
        """Absolute paths of files the prompt's output nodes report (images, videos, text files)."""
        found = []
        for node_out in entry.get("outputs", {}).values():
            for items in node_out.values():
                if not isinstance(items, list):
                    continue
                for item in items:
                    if isinstance(item, dict) and "filename" in item:
                        kind = item.get("type", "output")
                        found.append(os.path.join(self.base, kind, item.get("subfolder", ""), item["filename"]))
        return found

    def interrupt(self) -> None:
        self.post("/interrupt", {})
