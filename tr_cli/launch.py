"""Starting and stopping a headless ComfyUI on 127.0.0.1: the one launcher behind the runner's
``LocalServer`` (tr_cli/client.py) and the tests' ``ComfyServer`` (tests/harness/server.py).

Standard library only and no relative imports, so the test harness can load this file by path.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from typing import Callable


class LaunchError(RuntimeError):
    """The server exited during start-up or did not answer in time (the message names the log)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(python: str, port: int, base: str, extra=(), cpu: bool = True) -> list[str]:
    """``main.py`` arguments of a headless, loopback-only ComfyUI whose base directory is ``base``
    (on the CPU unless ``cpu`` is False; ``extra`` are further ComfyUI options)."""
    return [python, "main.py", *(["--cpu"] if cpu else []), "--listen", "127.0.0.1", "--port", str(port),
            "--base-directory", base, "--database-url", "sqlite:///:memory:", "--disable-auto-launch",
            "--disable-api-nodes", *extra]


def start(cmd: list[str], comfy_dir: str, log, ready: Callable[[], bool], timeout: float, name: str = "ComfyUI",
          log_path: str = "", new_session: bool = False, die_with_parent: bool = False) -> subprocess.Popen:
    """Run ``cmd`` in ``comfy_dir`` with output to the open file ``log``; poll ``ready()`` (an HTTP ping)
    until it is true. Raises :class:`LaunchError` if the process exits first or ``timeout`` passes (the
    process is then stopped). ``die_with_parent`` (Linux): the server gets SIGTERM when the thread that
    started it dies, even by SIGKILL (a Ray worker killed with its job leaves no server behind)."""
    proc = subprocess.Popen(cmd, cwd=comfy_dir, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=new_session,
                            preexec_fn=_parent_death_signal if die_with_parent else None)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise LaunchError(f"{name} exited with {proc.returncode} (log: {log_path})")
        if ready():
            return proc
        time.sleep(0.3)  # readiness poll of a starting process, not a synchronisation
    stop(proc, group=new_session)
    raise LaunchError(f"{name} not ready after {timeout}s (log: {log_path})")


def _parent_death_signal() -> None:
    """In the child before exec: prctl(PR_SET_PDEATHSIG, SIGTERM)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


def stop(proc: subprocess.Popen | None, timeout: float = 15, group: bool = False) -> None:
    """Terminate ``proc`` (kill it if it does not exit within ``timeout``) and reap it. ``group``: signal its
    whole process group (a server started with ``new_session``), so nothing it spawned is orphaned."""
    if proc is None or proc.poll() is not None:
        return

    def send(sig):
        try:
            os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
        except ProcessLookupError:
            pass

    send(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait()
