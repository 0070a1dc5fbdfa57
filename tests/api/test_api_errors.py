"""Error statuses of the management API: 401, 404, 409 (see test_api_jobs), 422 and 503
(403 and 415: test_api_trust)."""

from __future__ import annotations

import socket
import sqlite3
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from api_support import Api, wire_job

from mailrunner.config import DRIVER_NAMES
from support.server import RunningServer

TOKEN = "s3cret-token"


def test_every_pipeline_route_answers_404_for_an_unknown_pipeline(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(record=False)
    api = Api(server.api_url)
    calls: list[tuple[str, str, Any]] = [
        ("POST", "/jobs/push", {"job": wire_job("nope")}),
        ("POST", "/jobs/push_batch", {"jobs": [wire_job("nope")]}),
        ("POST", "/jobs/pipelines/nope/destroy", None),
        ("POST", "/jobs/pipelines/nope/pause", None),
        ("POST", "/jobs/pipelines/nope/resume", None),
        ("GET", "/jobs/pipelines/nope/stat", None),
        ("GET", "/jobs/pipelines/nope/peek", None),
        ("GET", "/jobs/pipelines/nope/failed", None),
        ("POST", "/jobs/pipelines/nope/failed/retry", None),
        ("POST", "/jobs/pipelines/nope/failed/purge", None),
    ]
    for method, path, body in calls:
        reply = api.call(method, path, body)
        assert (reply.status, reply.body["type"]) == (404, "PipelineNotFound"), (method, path)
        assert "nope" in reply.body["error"]


def test_malformed_requests_answer_422_and_store_nothing(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(record=False)
    api = Api(server.api_url)
    job = wire_job("smtp-emails")
    push, declare = "/jobs/push", "/jobs/pipelines"
    pipeline = "/jobs/pipelines/smtp-emails"
    memory = {"name": "x", "driver": "memory"}
    negative = {**job, "options": {**job["options"], "priority": -1}}
    unknown_option = {**job, "options": {"pipeline": "smtp-emails", "ttl": 3}}
    bad: list[tuple[str, str, Any, bytes | None]] = [
        ("malformed JSON", push, None, b'{"job": {"id": '),
        ("not an object", push, None, b"[1, 2]"),
        ("empty body", push, None, b""),
        ("unknown top-level field", push, {"job": job, "extra": 1}, None),
        ("unknown job field", push, {"job": {**job, "colour": "red"}}, None),
        ("unknown option", push, {"job": unknown_option}, None),
        ("payload and payload_base64", push, {"job": {**job, "payload_base64": ""}}, None),
        ("bad base64", push, {"job": wire_job("smtp-emails", payload_base64="%")}, None),
        ("negative priority", push, {"job": negative}, None),
        ("empty batch", "/jobs/push_batch", {"jobs": []}, None),
        ("unknown driver", declare, {**memory, "driver": "kafka"}, None),
        ("unknown declare field", declare, {**memory, "y": 1}, None),
        ("unknown driver config", declare, {**memory, "config": {"z": 1}}, None),
        ("bad duration", declare, {**memory, "visibility_timeout": "soon"}, None),
        ("destroy with a string", f"{pipeline}/destroy", {"purge": "yes please"}, None),
        ("ids not a list", f"{pipeline}/failed/retry", {"ids": "a"}, None),
    ]
    for what, path, body, data in bad:
        reply = api.call("POST", path, body, data=data)
        assert reply.status == 422, f"{what}: {reply.status} {reply.body}"
        assert set(reply.body) == {"error", "type"}, what
    assert api.stat("smtp-emails")["queued"] == 0
    assert api.ok("GET", "/jobs/pipelines") == {"pipelines": ["smtp-emails"]}


def test_an_unknown_driver_is_refused_with_the_drivers_there_are(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(record=False)
    reply = Api(server.api_url).post("/jobs/pipelines", {"name": "x", "driver": "kafka"})
    assert reply.status == 422, reply.body
    missing = [name for name in DRIVER_NAMES if repr(name) not in reply.body["error"]]
    assert not missing, f"the error does not offer {missing}: {reply.body['error']}"


def test_a_limit_outside_1_to_1000_answers_422(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(record=False)
    api = Api(server.api_url)
    for route in ("peek", "failed"):
        for limit in ("0", "-1", "abc", "1.5", "1001", "100000", ""):
            reply = api.get(f"/jobs/pipelines/smtp-emails/{route}?limit={limit}")
            assert reply.status == 422, f"{route}?limit={limit!r}: {reply.status} {reply.body}"
            assert "1 to 1000" in reply.body["error"], reply.body
        assert api.get(f"/jobs/pipelines/smtp-emails/{route}?limit=1000").status == 200


def test_the_token_is_required_on_every_route_but_health_and_openapi(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(record=False, rpc={"token": TOKEN})
    anonymous = Api(server.api_url)
    wrong = Api(server.api_url, token="not-the-token")
    authorised = Api(server.api_url, token=TOKEN)

    for api in (anonymous, wrong):
        for method, path in [
            ("GET", "/jobs/pipelines"),
            ("GET", "/jobs/pipelines/smtp-emails/stat"),
            ("GET", "/metrics"),
            ("GET", "/connections"),
            ("GET", "/workers/jobs"),
        ]:
            reply = api.call(method, path)
            assert (reply.status, reply.body["type"]) == (401, "Unauthorized"), (method, path)
        pushed = api.post("/jobs/push", {"job": wire_job("smtp-emails")})
        assert pushed.status == 401
    basic = anonymous.get("/jobs/pipelines", headers={"Authorization": f"Basic {TOKEN}"})
    assert basic.status == 401, "only a bearer token counts"

    assert authorised.ok("GET", "/jobs/pipelines") == {"pipelines": ["smtp-emails"]}
    assert authorised.stat("smtp-emails")["queued"] == 0, "refused pushes were not stored"
    assert anonymous.get("/health").status == 200
    assert anonymous.get("/openapi.json").status == 200


def raw_get(api_url: str, path: str, header: bytes) -> int:
    """A GET with a header line sent byte for byte; returns the status code."""
    address = urlsplit(api_url)
    assert address.hostname is not None
    assert address.port is not None
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(
            b"GET "
            + path.encode()
            + b" HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
            + header
            + b"\r\n\r\n"
        )
        status_line = sock.makefile("rb").readline()
    return int(status_line.split()[1])


def test_a_wrong_token_that_is_not_utf8_is_still_401(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(record=False, rpc={"token": TOKEN})

    right = b"Authorization: Bearer " + TOKEN.encode()
    assert raw_get(server.api_url, "/jobs/pipelines", right) == 200
    wrong = b"Authorization: Bearer \xe9t\xe9"
    assert raw_get(server.api_url, "/jobs/pipelines", wrong) == 401


def test_push_that_cannot_be_stored_in_time_answers_503_and_is_never_stored(
    start_server: Callable[..., RunningServer],
) -> None:
    """The API pushes with the service's default 5 s timeout: this test takes about 5 s."""
    server = start_server(record=False, jobs={"pipelines": {"q": {"driver": "sqlite"}}})
    api = Api(server.api_url)
    late = wire_job("q")
    locker = sqlite3.connect(server.config.data_dir / "jobs.db", isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        reply = api.post("/jobs/push", {"job": late}, timeout=30)
        elapsed = time.monotonic() - started
    finally:
        locker.execute("ROLLBACK")
        locker.close()

    assert (reply.status, reply.body["type"]) == (503, "PushTimeout")
    assert 4.0 <= elapsed < 15.0, f"answered after {elapsed:.1f}s"
    after = api.push("q")
    assert [job["id"] for job in api.ok("GET", "/jobs/pipelines/q/peek")["jobs"]] == [after], (
        "the timed-out job must not be stored late"
    )
    metrics = api.metrics()
    assert metrics.value("mailrunner_jobs_push_total", pipeline="q", result="error") == 1
    assert metrics.value("mailrunner_jobs_push_total", pipeline="q", result="ok") == 1
