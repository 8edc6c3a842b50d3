"""A real headless ComfyUI server on 127.0.0.1 (a free port), driven over HTTP like any API client."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from . import paths


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        cmd = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", self.base, "--database-url", "sqlite:///:memory:",
               "--disable-auto-launch", "--disable-api-nodes"]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=paths.COMFY_DIR, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"ComfyUI server exited with {self.proc.returncode}; log: {self.log_path}\n{self.log_tail()}")
            try:
                self.get("/system_stats", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.3)
        self.stop()
        raise ServerError(f"ComfyUI server not ready after {timeout}s; log: {self.log_path}\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
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
