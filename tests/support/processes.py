"""mailrunner as a child process, as a user runs it: the CLI and `mailrunner serve`."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.events import validate_event
from support.net import free_port
from support.server import with_test_pipeline
from support.waiting import wait_until


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """`mailrunner ARGS` in a child process, as a user runs it; output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "mailrunner", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


class ServeProcess:
    """A `mailrunner serve` child with its own config, data dir and captured logs."""

    def __init__(self, workdir: Path, settings: dict[str, Any]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.api_port = free_port()
        config = {
            "rpc": {"listen": f"127.0.0.1:{self.api_port}"},
            "jobs": {"pipelines": {"smtp-emails": {"driver": "sqlite"}}},
            **settings,
            "smtp": {**settings.get("smtp", {}), "addr": f"127.0.0.1:{self.port}"},
        }
        config["smtp"]["jobs"] = with_test_pipeline(config["smtp"].get("jobs", {}))
        config.setdefault("inbox", {"enabled": False})
        (workdir / "mailrunner.yaml").write_text(yaml.safe_dump(config))
        self.pidfile = workdir / "server.pid"
        self.log_path = workdir / "server.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mailrunner", "serve", "--pidfile", str(self.pidfile)],
            cwd=workdir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._ready, "the server to write its pidfile")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"server exited early:\n{self.log_path.read_text()}")
        # the pid, not just a pidfile: a restart in the same workdir finds the old one there
        return self.pidfile.exists() and self.pidfile.read_text().strip() == str(self.process.pid)

    def events(self) -> list[dict[str, Any]]:
        """The events stored as `smtp.email` jobs in the sqlite pipeline, in push order."""
        path = self.workdir / "var" / "jobs.db"
        if not path.exists():
            return []
        with contextlib.closing(sqlite3.connect(path)) as database:
            rows = database.execute(
                "SELECT payload FROM jobs WHERE name = 'smtp.email' ORDER BY seq"
            )
            events = [json.loads(payload) for (payload,) in rows]
        for event in events:
            validate_event(event)
        return events

    def wait_events(self, count: int) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.events()) >= count, f"{count} email jobs in var/jobs.db")
        return self.events()

    def terminate(self) -> int:
        """SIGTERM and wait; a server that does not stop in time is killed and the test fails."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            pytest.fail(f"the server did not stop within 30 s of SIGTERM:\n{self.logs()[-3000:]}")
        finally:
            self._log.close()

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")
