"""The legacy path end to end: SMTP clients, the server, and real worker processes."""

from __future__ import annotations

import gc
import os
import smtplib
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from mailrunner.pool.pool import WorkerInfo, WorkerProcess
from support.sample_mail import TEMP_FAILURE
from support.server import RunningServer
from support.waiting import wait_until

WORKER = Path(__file__).with_name("behaviour_worker.py")


@pytest.fixture
def pool_server(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> Callable[..., RunningServer]:
    def start(**pool: Any) -> RunningServer:
        env = {"BEHAVIOUR_LOG": str(tmp_path / "executed.log"), **pool.pop("env", {})}
        command = pool.pop("command", [sys.executable, str(WORKER)])
        settings = {
            "num_workers": 2,
            "allocate_timeout": 5,
            "exec_timeout": 5,
            "destroy_timeout": 3,
        }
        return start_server(
            record=False,
            server={"command": command, "env": env},
            smtp={"use_jobs": False, "pool": {**settings, **pool}},
        )

    return start


def executed(tmp_path: Path) -> list[tuple[str, int]]:
    path = tmp_path / "executed.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return [(kind, int(pid)) for kind, pid in (line.split() for line in lines)]


def message(subject: str) -> bytes:
    return f"Subject: {subject}\r\nFrom: a@example.com\r\n\r\nbody\r\n".encode()


def send(server: RunningServer, subject: str) -> tuple[int, bytes]:
    with smtplib.SMTP(server.host, server.port, timeout=30) as client:
        client.ehlo("c")
        client.mail("a@example.com")
        client.rcpt("b@example.com")
        return client.data(message(subject))


def workers(server: RunningServer) -> list[WorkerInfo]:
    """The pool's workers, read on the server's loop (the pool is not thread-safe)."""
    pool = server.app.smtp_pool
    assert pool is not None

    async def listed() -> list[WorkerInfo]:
        return pool.workers()

    result: list[WorkerInfo] = server.call(listed())
    return result


def ready(server: RunningServer) -> int:
    return sum(info.state == "ready" for info in workers(server))


def pids(server: RunningServer) -> set[int]:
    return {info.pid for info in workers(server)}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_200_messages_over_20_connections_each_reach_a_worker_exactly_once(
    pool_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = pool_server(num_workers=4)

    def connection(index: int) -> list[str]:
        ids = []
        with smtplib.SMTP(server.host, server.port, timeout=30) as client:
            for number in range(10):
                client.ehlo("c")
                client.mail("a@example.com")
                client.rcpt("b@example.com")
                code, reply = client.data(message(f"m{index}-{number}"))
                assert code == 250, reply
                ids.append(reply.decode().rsplit(" ", 1)[-1])
        return ids

    with ThreadPoolExecutor(20) as clients:
        accepted = [event_id for ids in clients.map(connection, range(20)) for event_id in ids]
    runs = [kind for kind, _ in executed(tmp_path) if kind != "started"]
    assert len(accepted) == 200
    assert sorted(runs) == sorted(accepted), "every accepted message must run exactly once"


def test_close_answer_gives_250_then_221_and_closes(
    pool_server: Callable[..., RunningServer],
) -> None:
    server = pool_server()
    client = smtplib.SMTP(server.host, server.port, timeout=30)
    client.ehlo("c")
    client.mail("a@example.com")
    client.rcpt("b@example.com")
    assert client.data(message("close"))[0] == 250
    assert client.getreply() == (221, b"2.0.0 Bye")
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.noop()


def test_worker_that_exits_mid_message_gives_451_and_is_replaced(
    pool_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = pool_server(num_workers=1)
    (before,) = pids(server)
    assert send(server, "exit") == TEMP_FAILURE
    assert send(server, "ok")[0] == 250
    (after,) = pids(server)
    assert after != before
    assert executed(tmp_path)[-1][1] == after, "the next message must run on the fresh worker"


def test_hanging_worker_is_killed_after_exec_timeout(
    pool_server: Callable[..., RunningServer],
) -> None:
    server = pool_server(num_workers=1, exec_timeout=1)
    (hung,) = pids(server)
    started = time.monotonic()
    assert send(server, "hang") == TEMP_FAILURE
    assert 0.9 < time.monotonic() - started < 5
    wait_until(lambda: not alive(hung), "the hung worker to be killed")
    assert send(server, "ok")[0] == 250


def test_busy_pool_makes_a_client_wait_allocate_timeout_then_451(
    pool_server: Callable[..., RunningServer],
) -> None:
    server = pool_server(num_workers=1, allocate_timeout=1, exec_timeout=4)
    with ThreadPoolExecutor(1) as background:
        hanging = background.submit(send, server, "hang")
        wait_until(
            lambda: any(w.state == "working" for w in server.app.smtp_pool.workers()), "busy"
        )  # type: ignore[union-attr]
        started = time.monotonic()
        assert send(server, "ok") == TEMP_FAILURE
        waited = time.monotonic() - started
        assert hanging.result(10) == TEMP_FAILURE
    assert 0.9 < waited < 3.5, f"waited {waited:.2f}s for a worker, allocate_timeout is 1s"


def test_max_jobs_recycles_workers_with_new_pids(
    pool_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = pool_server(num_workers=1, max_jobs=2)
    for _ in range(6):
        assert send(server, "ok")[0] == 250
    runs = [pid for kind, pid in executed(tmp_path) if kind != "started"]
    assert len(set(runs)) == 3, f"6 messages with max_jobs=2 must use 3 workers, saw pids {runs}"
    assert runs[0] == runs[1] != runs[2] == runs[3] != runs[4] == runs[5]


def test_handler_error_gives_451_and_the_worker_keeps_serving(
    pool_server: Callable[..., RunningServer],
) -> None:
    server = pool_server(num_workers=1)
    before = pids(server)
    assert send(server, "fail") == TEMP_FAILURE
    assert send(server, "ok")[0] == 250
    assert pids(server) == before


def test_an_answer_that_is_neither_continue_nor_close_gives_451(
    pool_server: Callable[..., RunningServer],
) -> None:
    server = pool_server(num_workers=1)
    assert send(server, "answer:MAYBE") == TEMP_FAILURE
    assert send(server, "body") == TEMP_FAILURE, "CONTINUE must come with an empty body"
    assert send(server, "ok")[0] == 250


@pytest.mark.parametrize("corruption", ["badcrc", "truncated", "huge", "nooptions", "control"])
def test_corrupt_frame_kills_and_replaces_only_that_worker(
    pool_server: Callable[..., RunningServer], corruption: str
) -> None:
    server = pool_server(num_workers=2)
    before = pids(server)
    assert send(server, corruption) == TEMP_FAILURE
    wait_until(lambda: len(pids(server)) == 2 and pids(server) != before, "a replacement worker")
    after = pids(server)
    assert len(before & after) == 1, "exactly one worker is replaced, the other keeps running"
    (gone,) = before - after
    wait_until(lambda: not alive(gone), "the corrupt worker to be killed")
    assert send(server, "ok")[0] == 250


def test_a_worker_dying_while_idle_is_replaced(pool_server: Callable[..., RunningServer]) -> None:
    server = pool_server(num_workers=2)
    victim = min(pids(server))
    os.kill(victim, 9)
    wait_until(lambda: victim not in pids(server) and len(pids(server)) == 2, "a replacement")
    assert send(server, "ok")[0] == 250


def test_killed_workers_are_let_go_of_while_the_server_runs(
    pool_server: Callable[..., RunningServer],
) -> None:
    """A long-running server that replaces crashed workers must not keep the dead ones."""
    server = pool_server(num_workers=2)
    started = pids(server)
    for _ in range(5):
        victim = min(pids(server))
        os.kill(victim, 9)
        wait_until(lambda v=victim: v not in pids(server) and ready(server) == 2, "a replacement")
        started |= pids(server)

    def held() -> int:
        """This server's worker objects still in memory (other tests' are not counted)."""
        gc.collect()
        return sum(isinstance(o, WorkerProcess) and o.pid in started for o in gc.get_objects())

    wait_until(lambda: held() == 2, "only the two live workers to be held")
    assert send(server, "ok")[0] == 250


def test_stop_leaves_no_worker_process_even_behind_a_shell_or_ignoring_stop(
    pool_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    shell = ["sh", "-c", f"'{sys.executable}' '{WORKER}'; echo done >&2"]
    server = pool_server(num_workers=2, command=shell, env={"IGNORE_STOP": "1"}, destroy_timeout=1)
    wait_until(lambda: len([k for k, _ in executed(tmp_path) if k == "started"]) == 2, "workers")
    children = {pid for kind, pid in executed(tmp_path) if kind == "started"}
    shells = pids(server)
    assert children.isdisjoint(shells), "the workers run behind a shell"
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 5
    for pid in children | shells:
        # SIGKILL to the group is sent by now; the kernel finishes each exit on its own time
        wait_until(lambda pid=pid: not alive(pid), f"process {pid} to die with the server")


def test_add_remove_reset_and_list_workers(pool_server: Callable[..., RunningServer]) -> None:
    server = pool_server(num_workers=1)
    pool = server.app.smtp_pool
    assert pool is not None
    added = server.call(pool.add_worker())
    assert added.pid in pids(server)
    assert len(pids(server)) == 2
    (info,) = [w for w in workers(server) if w.pid == added.pid]
    assert (info.state, info.executions) == ("ready", 0)
    assert info.rss_bytes > 1_000_000
    removed = server.call(pool.remove_worker())
    assert len(pids(server)) == 1
    assert removed.pid not in pids(server)
    before = pids(server)
    server.call(pool.reset())
    wait_until(lambda: len(pids(server)) == 1 and pids(server) != before, "reset workers")
    assert send(server, "ok")[0] == 250
