"""tr_cli/launch.py: the one server launcher of the runner (LocalServer) and the test harness (ComfyServer)."""
from __future__ import annotations

import os
import sys

import pytest

from harness import paths

pytestmark = pytest.mark.server


def test_launch_reports_an_early_exit_and_a_timeout(tmp_path):
    from tr_cli import launch

    with open(tmp_path / "log", "w") as log:
        with pytest.raises(launch.LaunchError, match="exited with 3"):
            launch.start([sys.executable, "-c", "import sys; sys.exit(3)"], str(tmp_path), log, lambda: False, 60)
        with pytest.raises(launch.LaunchError, match="not ready after 0.5s"):  # and the process is stopped
            launch.start([sys.executable, "-c", "import time; time.sleep(60)"], str(tmp_path), log, lambda: False, 0.5)


def test_harness_and_runner_start_the_same_command():
    from harness import server as harness_server
    from tr_cli import launch

    cmd = launch.server_command("py", 8188, "/base")
    assert cmd[:2] == ["py", "main.py"] and cmd[cmd.index("--listen") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--base-directory") + 1] == "/base" and cmd[cmd.index("--port") + 1] == "8188"
    assert harness_server.launch.server_command("py", 8188, "/base") == cmd


def test_local_server_starts_lists_pack_nodes_and_stops():
    """The runner's own server (what ``tr_cli run`` without --server starts), through the shared launcher."""
    from tr_cli.client import Client, LocalServer

    local = LocalServer(os.path.join(paths.WORK, "launch-local"))
    local.start()
    try:
        info = Client(local.url).get_json("/object_info/TR_ILTChunker")
        assert "TR_ILTChunker" in info
    finally:
        local.stop()
    assert local.proc.poll() is not None
    assert not Client(local.url).ping(1)
