"""A small ComfyUI HTTP/websocket client and a local-server launcher for the headless runner."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from . import launch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMFY_DIR = os.environ.get("TR_COMFY_DIR", os.path.join(REPO, ".host", "ComfyUI"))


class RunnerError(Exception):
    """An error the runner reports as one line and a distinct exit code."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


EXIT_USAGE, EXIT_SERVER, EXIT_FAILED, EXIT_INTERRUPTED = 2, 3, 4, 130


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP arrived: the run stops as for Ctrl-C and exits with 128 + signal number."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signum)
        self.signum = int(signum)


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def install_signal_handlers() -> None:
    """SIGTERM (kill, timeout, CI cancellation) and SIGHUP (closed terminal) behave like SIGINT: they raise
    in the main thread, so every `finally` runs (interrupt the prompt, clean the server, stop a local one)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupted)


def check_url(url: str) -> str:
    """A --server value as http(s)://host[:port]; RunnerError (exit 2) otherwise."""
    parts = urllib.parse.urlsplit(url or "")
    try:
        parts.port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise RunnerError(f"--server {url!r}: expected a URL like http://127.0.0.1:8188", EXIT_USAGE)
    return url


class Client:
    def __init__(self, url: str):
        self.url = check_url(url).rstrip("/")
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

    def upload(self, path: str, name: str | None = None, subfolder: str = "temporal_restore") -> str:
        """Upload a file to the server's input folder under ``name`` (callers make it unique per run, so two
        runs with inputs of the same base name never overwrite each other); returns the name LoadVideo's
        combo knows it by."""
        boundary = uuid.uuid4().hex
        name = name or os.path.basename(path)
        with open(path, "rb") as f:
            payload = f.read()
        parts = [
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n".encode(), payload, b"\r\n",
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"subfolder\"\r\n\r\n{subfolder}\r\n".encode(),
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\nfalse\r\n".encode(),
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

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Interrupt ``prompt_id`` only when it is the one running (any running prompt when None)."""
        self.post_json("/interrupt", {"prompt_id": prompt_id} if prompt_id else {})

    def cancel(self, prompt_id: str) -> None:
        """Drop the prompt from the queue, and interrupt it when it is the one running."""
        self.post_json("/queue", {"delete": [prompt_id]})
        deadline = time.time() + 60
        while time.time() < deadline:  # wait until it stopped, so nothing writes after the cleanup
            running = self.get_json("/queue").get("queue_running", [])
            if not any(len(item) > 1 and item[1] == prompt_id for item in running):
                return
            self.interrupt(prompt_id)
            time.sleep(0.2)

    def cleanup(self, tag: str) -> int:
        """Delete every file this run put on the server (uploads, intermediates, outputs: all carry ``tag``
        in their name under the pack's temporal_restore/ folders); returns how many were removed."""
        return int(self.post_json("/temporal_restore/cleanup", {"tag": tag}).get("removed", 0))

    def _view(self, item: dict) -> str:
        q = urllib.parse.urlencode({"filename": item["filename"], "subfolder": item.get("subfolder", ""),
                                    "type": item.get("type", "output")})
        return f"{self.url}/view?{q}"

    def download(self, item: dict, dst: str) -> None:
        """Fetch an output file; written to a temp name then renamed, so dst is never half-written."""
        tmp = dst + ".part"
        try:
            with self._open(self._view(item), 300) as r, open(tmp, "wb") as f:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
            os.replace(tmp, dst)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def read_image(self, item: dict):
        """An output image as RGB uint8 [H, W, 3]."""
        import io

        import numpy as np
        from PIL import Image

        with self._open(self._view(item), 300) as r:
            data = r.read()
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))

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


MEMORY_FLAGS = ("lowvram", "novram", "highvram", "gpu_only")  # ComfyUI's own memory switches, passed through


def add_server_options(p) -> None:
    """Options of the local ComfyUI a run starts (device and memory), shared by `run` and `stream`."""
    p.add_argument("--cpu", action="store_true", help="run the local ComfyUI on the CPU even when torch sees a GPU")
    for flag in MEMORY_FLAGS:
        p.add_argument(f"--{flag.replace('_', '-')}", action="store_true", help=f"passed to the local ComfyUI (--{flag.replace('_', '-')})")
    p.add_argument("--reserve-vram", type=float, metavar="GB", help="passed to the local ComfyUI: VRAM (GB) left for other programs")


def server_flags(args) -> list[str]:
    """The ComfyUI memory flags a user gave, as command-line words."""
    out = [f"--{f.replace('_', '-')}" for f in MEMORY_FLAGS if getattr(args, f, False)]
    if getattr(args, "reserve_vram", None) is not None:
        out += ["--reserve-vram", f"{args.reserve_vram:g}"]
    return out


def check_server_flags(args) -> None:
    """Device and memory options only apply to a server the run starts itself."""
    given = server_flags(args) + (["--cpu"] if getattr(args, "cpu", False) else [])
    if getattr(args, "server", None) and given:
        raise RunnerError(f"{' '.join(given)}: these configure the local ComfyUI a run starts; with --server "
                          f"set them where that server is started", EXIT_USAGE)


def gpu_available(python: str) -> bool:
    """Whether torch (in the python that runs ComfyUI) sees a CUDA/ROCm/XPU/MPS device. Asked in a
    subprocess so the runner itself never imports torch."""
    code = ("import sys, torch\n"
            "ok = torch.cuda.is_available() or (hasattr(torch, 'xpu') and torch.xpu.is_available()) or "
            "(hasattr(torch.backends, 'mps') and torch.backends.mps.is_available())\nsys.exit(0 if ok else 1)")
    try:
        return subprocess.run([python, "-c", code], capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class LocalServer:
    """Starts the host ComfyUI (built by scripts/setup.sh) on 127.0.0.1 with the pack linked in, in a
    base folder of its own under ``root`` (so concurrent local runs share nothing), removed by stop().

    ``cpu``: None = the GPU when torch sees one, else the CPU; True = force the CPU.
    ``flags``: ComfyUI memory options passed through (e.g. ``--lowvram``, ``--reserve-vram 2``)."""

    def __init__(self, root: str, python: str = sys.executable, models_dirs: list[str] | None = None,
                 cpu: bool | None = None, flags: list[str] | None = None, keep: bool = False):
        self.root = root
        self.port = launch.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.python = python
        self.models_dirs = models_dirs or []
        self.cpu = cpu
        self.flags = list(flags or [])
        self.keep = keep
        self.base = None
        self.proc = None
        self.device = None
        self.die_with_parent = False  # set by a Ray worker: its server must not outlive it

    def _prepare(self) -> list[str]:
        import tempfile

        os.makedirs(self.root, exist_ok=True)
        self.base = tempfile.mkdtemp(prefix=f"run-{self.port}-", dir=self.root)
        for sub in ("custom_nodes", "input", "output", "temp", "user"):
            os.makedirs(os.path.join(self.base, sub), exist_ok=True)
        os.symlink(REPO, os.path.join(self.base, "custom_nodes", "temporal_restore"))
        extra = []
        if self.models_dirs:
            cfg = os.path.join(self.base, "extra_model_paths.yaml")
            with open(cfg, "w") as f:
                for i, d in enumerate(self.models_dirs):
                    f.write(f"tr_models_{i}:\n    base_path: {os.path.abspath(d)}\n    checkpoints: checkpoints\n"
                            f"    controlnet: controlnet\n    vae: vae\n")
            extra = ["--extra-model-paths-config", cfg]
        return extra

    def command(self, extra: list[str]) -> list[str]:
        """ComfyUI's command line: the CPU when forced or when torch sees no GPU, the memory flags as given."""
        if self.device is None:
            self.device = "cpu" if self.cpu or not gpu_available(self.python) else "gpu"
        return launch.server_command(self.python, self.port, self.base, [*self.flags, *extra], cpu=self.device == "cpu")

    def start(self, timeout: float = 180) -> str:
        if not os.path.exists(os.path.join(COMFY_DIR, "main.py")):
            raise RunnerError(f"no local ComfyUI at {COMFY_DIR}: run `bash scripts/setup.sh` or pass --server URL", EXIT_SERVER)
        extra = self._prepare()
        self.log_path = os.path.join(self.base, "server.log")
        client = Client(self.url)
        try:
            # its own session: a Ctrl-C in the terminal reaches the runner only, which then stops it in order
            with open(self.log_path, "w") as log:
                self.proc = launch.start(self.command(extra), COMFY_DIR, log, lambda: client.ping(1), timeout,
                                         "local ComfyUI", self.log_path, new_session=True,
                                         die_with_parent=self.die_with_parent)
        except launch.LaunchError as e:
            self.keep = True  # the log says why
            raise RunnerError(str(e), EXIT_SERVER) from None
        return self.url

    def stop(self) -> None:
        """Terminate the server's whole process group (nothing orphaned) and remove its base folder.
        Signals are held off meanwhile so a second Ctrl-C/SIGTERM cannot leave the server behind."""
        import threading

        main = threading.current_thread() is threading.main_thread()
        old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)} if main else {}
        try:
            launch.stop(self.proc, group=True)
            if self.base and not self.keep:
                shutil.rmtree(self.base, ignore_errors=True)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
