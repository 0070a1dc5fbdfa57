"""`server.loop`: the server runs on the loop it is told to, and nothing else in the process
changes its loop.

From outside, a `mailrunner serve` process shows its loop twice: in its start-up log line, and
in its memory map, where uvloop's extension is loaded only when uvloop was chosen. In process,
a test's own loops (pytest-asyncio's, `asyncio.new_event_loop()`) stay asyncio's beside a
server on uvloop, because no event-loop policy is ever installed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import smtplib
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import aiosmtplib
import pytest

from mailrunner.loops import UVLOOP_REQUIREMENT, loop_kind
from support.processes import ServeProcess, run_cli
from support.server import LOOPS, RunningServer, on_loop
from support.waiting import wait_until

MESSAGE = b"Subject: loops\r\nFrom: a@example.com\r\n\r\nbody\r\n"
WORKER = Path(__file__).parent / "pool" / "behaviour_worker.py"


def send(host: str, port: int) -> dict[str, bytes]:
    with smtplib.SMTP(host, port, timeout=10) as client:
        return client.sendmail("a@example.com", ["b@example.com"], MESSAGE)


def logged_loops(server: ServeProcess) -> list[str]:
    records = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    return [record["loop"] for record in records if record["event"] == "event loop"]


def uvloop_loaded(pid: int) -> bool:
    """Whether uvloop's extension module is mapped into the process `pid`."""
    return "/uvloop/loop." in Path(f"/proc/{pid}/maps").read_text()


@pytest.fixture
def hidden_uvloop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Child processes started after this find an uvloop that cannot be imported, as on a
    machine without it."""
    shadow = tmp_path / "shadow" / "uvloop"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('uvloop is hidden by the test')\n")
    monkeypatch.setenv("PYTHONPATH", str(shadow.parent))


@pytest.mark.parametrize("kind", LOOPS)
def test_serve_runs_on_the_configured_loop(serve: Callable[..., ServeProcess], kind: str) -> None:
    server = serve(server=on_loop(kind), logs={"format": "json"})
    assert uvloop_loaded(server.process.pid) is (kind == "uvloop")
    assert send("127.0.0.1", server.port) == {}
    server.wait_events(1)
    assert logged_loops(server) == [kind]


@pytest.mark.usefixtures("hidden_uvloop")
def test_auto_runs_on_asyncio_where_uvloop_cannot_be_imported(
    serve: Callable[..., ServeProcess],
) -> None:
    server = serve(server={"loop": "auto"}, logs={"format": "json"})
    assert send("127.0.0.1", server.port) == {}
    server.wait_events(1)
    assert logged_loops(server) == ["asyncio"]


MISSING_UVLOOP = f"server.loop: uvloop is not installed (pip install '{UVLOOP_REQUIREMENT}')"


@pytest.mark.usefixtures("hidden_uvloop")
@pytest.mark.parametrize(
    ("command", "loop", "problem"),
    [
        ("serve", "uvloop", MISSING_UVLOOP),
        ("config check", "uvloop", MISSING_UVLOOP),
        ("serve", "trio", "server.loop: Input should be 'auto', 'asyncio' or 'uvloop'"),
    ],
)
def test_a_loop_that_cannot_run_stops_start_up_naming_the_key(
    tmp_path: Path, command: str, loop: str, problem: str
) -> None:
    config = tmp_path / "loop.yaml"
    config.write_text(f"server: {{loop: {loop}}}\n")
    result = run_cli(*command.split(), "-c", str(config), env=dict(os.environ))
    assert result.returncode == 1, result.stdout + result.stderr
    assert problem in result.stderr


async def running_kind() -> str:
    return loop_kind(asyncio.get_running_loop())


@pytest.mark.parametrize("kind", LOOPS)
def test_an_in_process_server_runs_on_its_loop_and_leaves_the_policy_alone(
    start_server: Callable[..., RunningServer], kind: str
) -> None:
    policy = asyncio.get_event_loop_policy()
    server = start_server(server=on_loop(kind))
    assert server.call(running_kind()) == kind
    assert asyncio.get_event_loop_policy() is policy
    fresh = asyncio.new_event_loop()
    try:
        assert loop_kind(fresh) == "asyncio", "a loop made by the policy is still asyncio's"
    finally:
        fresh.close()
    assert send(server.host, server.port) == {}
    server.delivery.wait_for(1)


@pytest.mark.asyncio
async def test_pytest_asyncio_keeps_its_loop_beside_a_server_on_uvloop(
    start_server: Callable[..., RunningServer],
) -> None:
    server = await asyncio.to_thread(start_server, server=on_loop("uvloop"))
    assert loop_kind(asyncio.get_running_loop()) == "asyncio"
    await aiosmtplib.send(
        MESSAGE,
        sender="a@example.com",
        recipients=["b@example.com"],
        hostname=server.host,
        port=server.port,
    )
    (event,) = await asyncio.to_thread(server.delivery.wait_for, 1)
    assert event["message"]["body"] == "body\n"


def worker_pids(server: RunningServer) -> set[int]:
    pool = server.app.smtp_pool
    assert pool is not None

    async def listed() -> set[int]:
        return {info.pid for info in pool.workers() if info.state == "ready"}

    pids: set[int] = server.call(listed())
    return pids


@pytest.mark.parametrize("kind", LOOPS)
def test_the_worker_pool_spawns_and_replaces_workers_on_each_loop(
    start_server: Callable[..., RunningServer], kind: str
) -> None:
    """The loop's subprocess support: pipes to the worker, and noticing that it exited."""
    server = start_server(
        record=False,
        server={**on_loop(kind), "command": [sys.executable, str(WORKER)]},
        smtp={"use_jobs": False, "pool": {"num_workers": 1, "allocate_timeout": 5}},
    )
    assert send(server.host, server.port) == {}
    (victim,) = worker_pids(server)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: worker_pids(server) - {victim} != set(), "a replacement worker")
    assert send(server.host, server.port) == {}


@pytest.mark.parametrize("kind", LOOPS)
def test_a_stop_cuts_a_session_held_past_the_grace_on_either_loop(
    start_server: Callable[..., RunningServer], kind: str
) -> None:
    """A client stuck mid-DATA must not keep a stopping server alive: after
    smtp.shutdown_timeout its connection is aborted, whatever transport class the loop made
    (uvloop's are no asyncio.Transport)."""
    server = start_server(server=on_loop(kind), smtp={"shutdown_timeout": 0.5})
    with socket.create_connection((server.host, server.port), timeout=15) as client:
        reader = client.makefile("rb")
        assert reader.readline().startswith(b"220")
        client.sendall(b"HELO held\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n")
        for _ in range(3):
            assert reader.readline().startswith(b"250")
        client.sendall(b"DATA\r\n")
        assert reader.readline().startswith(b"354")
        client.sendall(b"Subject: held\r\n\r\nno final dot yet\r\n")
        stopping = threading.Thread(target=server.stop)
        stopping.start()
        assert reader.read() == b"", "the held session got an answer instead of its end"
        stopping.join(15)
        assert not stopping.is_alive(), "the server's stop waits on the aborted session"
