"""A node killed with SIGKILL while it holds a Redis lease takes the job back as soon as it
starts again on the same data_dir, not after the lease's visibility timeout (an hour here);
another node does not (the scenario: tests/support/reclaim.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from support.brokers import RedisServer, require_binary
from support.reclaim import kill_the_holder_then_restart

pytestmark = pytest.mark.redis


def test_kill_9_then_restart_on_the_same_data_dir_serves_the_held_job_at_once(
    tmp_path: Path,
) -> None:
    binary = require_binary(shutil.which("redis-server"), "redis-server")
    server_dir = tmp_path / "redis"
    server_dir.mkdir()
    server = RedisServer(binary, server_dir, {})
    server.start()
    try:
        addr = f"redis://127.0.0.1:{server.port}/0"
        settings = {"driver": "redis", "config": {"addr": addr, "stream": "restart"}}
        restart = kill_the_holder_then_restart(settings, tmp_path)
    finally:
        server.kill()
    restart.assert_taken_back()
