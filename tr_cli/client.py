"""A small ComfyUI HTTP/websocket client and a local-server launcher for the headless runner."""
from __future__ import annotations

import json
import os
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid

from . import launch
from .launch import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMFY_DIR = os.environ.get("TR_COMFY_DIR", os.path.join(REPO, ".host", "ComfyUI"))


class RunnerError(Exception):
    """An error the runner reports as one line and a distinct exit code."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


EXIT_USAGE, EXIT_SERVER, EXIT_FAILED, EXIT_INTERRUPTED = 2, 3, 4, 130


class Client:
    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.client_id = str(uuid.uuid4())

    def _open(self, req, timeout):
        try:
            return urllib.request.urlopen(req, timeout=timeout)
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace")
            raise RunnerError(f"server answered {e.code} to {req.full_url if hasattr(req, 'full_url') else req}: {body[:2000]}", EXIT_FAILED) from None
        except (urllib.error.URLError, ConnectionError, socket.timeout, OSError) as e:
            raise RunnerError(f"ComfyUI server unreachable at {self.url}: {getattr(e, 'reason', e)}", EXIT_SERVER) from None

    def get_json(self, path: str, timeout: float = 30):
        with self._open(self.url + path, timeout) as r:
            return json.loads(r.read())

    def post_json(self, path: str, data: dict, timeout: float = 30):
        req = urllib.request.Request(self.url + path, data=json.dumps(data).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with self._open(req, timeout) as r:
            body = r.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else {}

    def ping(self, timeout: float = 3) -> bool:
        try:
            self.get_json("/system_stats", timeout)
            return True
        except RunnerError:
            return False

    def upload(self, path: str, subfolder: str = "temporal_restore") -> str:
        """Upload a file to the server's input folder; returns the name LoadVideo's combo knows it by."""
        boundary = uuid.uuid4().hex
        name = os.path.basename(path)
        with open(path, "rb") as f:
            payload = f.read()
        parts = [
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n".encode(), payload, b"\r\n",
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"subfolder\"\r\n\r\n{subfolder}\r\n".encode(),
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue\r\n".encode(),
            f"--{boundary}--\r\n".encode(),
        ]
        req = urllib.request.Request(self.url + "/upload/image", data=b"".join(parts), method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with self._open(req, 120) as r:
            info = json.loads(r.read())
        return f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"]

    def submit(self, prompt: dict) -> str:
        try:
            answer = self.post_json("/prompt", {"prompt": prompt, "client_id": self.client_id})
        except RunnerError as e:
            raise RunnerError(describe_rejection(str(e)), e.code) from None
        if "prompt_id" not in answer:
            raise RunnerError(f"prompt rejected: {answer}", EXIT_FAILED)
        return answer["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        return self.get_json(f"/history/{prompt_id}").get(prompt_id)

    def interrupt(self) -> None:
        self.post_json("/interrupt", {})

    def download(self, item: dict, dst: str) -> None:
        """Fetch an output file; written to a temp name then renamed, so dst is never half-written."""
        q = urllib.parse.urlencode({"filename": item["filename"], "subfolder": item.get("subfolder", ""),
                                    "type": item.get("type", "output")})
        tmp = dst + ".part"
        with self._open(f"{self.url}/view?{q}", 300) as r, open(tmp, "wb") as f:
            while chunk := r.read(1 << 20):
                f.write(chunk)
        os.replace(tmp, dst)

    def websocket(self):
        """A connected websocket for live progress, or None when websocket-client is not installed."""
        try:
            import websocket  # websocket-client
        except ImportError:
            return None
        ws_url = self.url.replace("http", "ws", 1) + f"/ws?clientId={self.client_id}"
        try:
            ws = websocket.create_connection(ws_url, timeout=5)
            ws.settimeout(0.5)
            return ws
        except Exception:
            return None


def describe_rejection(text: str) -> str:
    """ComfyUI's validation answer as one readable line: node, input and reason."""
    body = text[text.find("{"):] if "{" in text else ""
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return text
    parts = []
    for nid, err in (data.get("node_errors") or {}).items():
        for e in err.get("errors", []):
            name = e.get("extra_info", {}).get("input_name") or e.get("details", "")
            parts.append(f"node {nid} ({err.get('class_type', '?')}) input '{name}': {e.get('message', '')}")
    if not parts:
        err = data.get("error", {})
        parts.append(f"{err.get('message', 'rejected')} {err.get('details', '')}".strip())
    return "workflow rejected by the server: " + "; ".join(parts)


class LocalServer:
    """Starts the host ComfyUI (built by scripts/setup.sh) on 127.0.0.1 with the pack linked in."""

    def __init__(self, base: str, python: str = sys.executable, models_dirs: list[str] | None = None):
        self.base = base
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.python = python
        self.models_dirs = models_dirs or []
        self.proc = None

    def _prepare(self) -> list[str]:
        for sub in ("custom_nodes", "input", "output", "temp", "user"):
            os.makedirs(os.path.join(self.base, sub), exist_ok=True)
        link = os.path.join(self.base, "custom_nodes", "temporal_restore")
        if not os.path.islink(link):
            if os.path.lexists(link):
                os.remove(link)
            os.symlink(REPO, link)
        extra = []
        if self.models_dirs:
            cfg = os.path.join(self.base, "extra_model_paths.yaml")
            with open(cfg, "w") as f:
                for i, d in enumerate(self.models_dirs):
                    f.write(f"tr_models_{i}:\n    base_path: {d}\n    checkpoints: checkpoints\n    controlnet: controlnet\n    vae: vae\n")
            extra = ["--extra-model-paths-config", cfg]
        return extra

    def start(self, timeout: float = 180) -> str:
        if not os.path.exists(os.path.join(COMFY_DIR, "main.py")):
            raise RunnerError(f"no local ComfyUI at {COMFY_DIR}: run `bash scripts/setup.sh` or pass --server URL", EXIT_SERVER)
        extra = self._prepare()
        self.log_path = os.path.join(self.base, "server.log")
        client = Client(self.url)
        try:
            self.proc = launch.start(launch.server_command(self.python, self.port, self.base, extra), COMFY_DIR,
                                     open(self.log_path, "w"), lambda: client.ping(1), timeout, "local ComfyUI",
                                     self.log_path, new_session=True)
        except launch.LaunchError as e:
            raise RunnerError(str(e), EXIT_SERVER) from None
        return self.url

    def stop(self) -> None:
        launch.stop(self.proc)
