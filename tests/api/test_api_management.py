"""Workers, SMTP connections and health through the management API of a running server."""

from __future__ import annotations

import smtplib
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from api_support import Api, smtp_client, start_jobs_node

from support.server import RunningServer
from support.waiting import wait_until


def test_workers_of_the_jobs_pool_can_be_listed_added_removed_and_reset(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    node = start_jobs_node(start_server, tmp_path, workers=2)
    api = node.api

    listed = api.workers()
    assert len(listed) == 2
    assert {worker["state"] for worker in listed} == {"ready"}
    assert all(worker["pid"] > 0 and worker["executions"] == 0 for worker in listed)
    original = {worker["pid"] for worker in listed}
    assert len(original) == 2

    added = api.ok("POST", "/workers/jobs/add")
    assert added["pool"] == "jobs"
    assert added["worker"]["pid"] not in original
    assert {worker["pid"] for worker in api.workers()} == original | {added["worker"]["pid"]}

    removed = api.ok("POST", "/workers/jobs/remove")
    assert removed["pool"] == "jobs"
    remaining = {worker["pid"] for worker in api.workers()}
    assert len(remaining) == 2
    assert removed["worker"]["pid"] not in remaining

    assert api.ok("POST", "/workers/jobs/reset") == {"ok": True}
    wait_until(
        lambda: (
            len(api.workers()) == 2
            and {w["state"] for w in api.workers()} == {"ready"}
            and not {w["pid"] for w in api.workers()} & remaining
        ),
        "two fresh ready workers replacing the old ones",
    )

    job_id = api.push("work")
    assert node.wait_executed(1) == [(job_id, 1)], "the reset pool still runs jobs"
    assert api.get("/workers/smtp").status == 404, "use_jobs is true: no smtp pool runs"


def test_removing_the_last_worker_is_refused_as_a_conflict_and_the_pool_keeps_it(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """A refusal that no retry can change is a client error, not 503 'unavailable'."""
    node = start_jobs_node(start_server, tmp_path, workers=1)
    api = node.api
    (only,) = api.workers()

    reply = api.post("/workers/jobs/remove")

    assert [worker["pid"] for worker in api.workers()] == [only["pid"]]
    assert reply.status == 409, f"expected 409 Conflict, got {reply.status} {reply.body}"


def test_workers_of_a_pool_that_does_not_run_are_not_found(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(record=False)
    api = Api(server.api_url)

    for method, path in [
        ("GET", "/workers/smtp"),
        ("POST", "/workers/smtp/add"),
        ("POST", "/workers/smtp/remove"),
        ("POST", "/workers/smtp/reset"),
        ("GET", "/workers/jobs"),
    ]:
        reply = api.call(method, path)
        assert (reply.status, reply.body["type"]) == (404, "NotFound"), f"{method} {path}"


def test_connections_show_the_session_of_a_connected_client(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(record=False)
    api = Api(server.api_url)
    assert api.ok("GET", "/connections") == {"connections": []}
    client = smtp_client(server, "client.example")
    try:
        client.user, client.password = "alice", "wonderland"
        assert client.auth("PLAIN", client.auth_plain)[0] == 235
        client.sendmail("first@example.com", ["x@example.com"], b"Subject: one\r\n\r\nbody\r\n")
        assert client.mail("a@example.com")[0] == 250
        assert client.rcpt("b@example.com")[0] == 250
        assert client.rcpt("c@example.com")[0] == 250
        assert client.sock is not None
        local_port = client.sock.getsockname()[1]

        (connection,) = api.ok("GET", "/connections")["connections"]

        assert uuid.UUID(connection.pop("uuid"))
        assert connection == {
            "remote_addr": f"127.0.0.1:{local_port}",
            "helo": "client.example",
            "mail_from": "a@example.com",
            "recipients": ["b@example.com", "c@example.com"],
            "auth_user": "alice",
            "tls": False,
            "messages": 1,
        }
    finally:
        client.close()


def test_closing_a_connection_sends_421_and_drops_it(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(record=False)
    api = Api(server.api_url)
    client = smtp_client(server)
    try:
        assert client.mail("a@example.com")[0] == 250
        (connection,) = api.ok("GET", "/connections")["connections"]

        assert api.ok("POST", f"/connections/{connection['uuid']}/close") == {"ok": True}

        code, text = client.getreply()
        assert code == 421
        assert b"closed by the administrator" in text
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.getreply()
    finally:
        client.close()
    wait_until(lambda: api.ok("GET", "/connections")["connections"] == [], "no open connection")
    again = api.post(f"/connections/{connection['uuid']}/close")
    assert again.status == 404, "a closed connection is gone"


def test_closing_an_unknown_connection_is_not_found(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(record=False)
    reply = Api(server.api_url).post(f"/connections/{uuid.uuid4()}/close")
    assert (reply.status, reply.body["type"]) == (404, "NotFound")


def test_health_is_ready_while_consumed_pipelines_consume_and_not_after_destroy(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    node = start_jobs_node(start_server, tmp_path)
    api = node.api

    ready = api.get("/health")
    assert (ready.status, ready.body) == (
        200,
        {"status": "ready", "smtp": True, "pipelines": {"work": True}},
    )

    api.ok("POST", "/jobs/pipelines/work/destroy")

    gone = api.get("/health")
    assert (gone.status, gone.body) == (
        503,
        {"status": "not ready", "smtp": True, "pipelines": {"work": False}},
    )
