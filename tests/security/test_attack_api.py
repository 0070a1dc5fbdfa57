"""Attacks on the management API of a running `mailrunner serve` without a token (the
zero-config default on loopback), as a web page in the developer's browser or a careless
script would make them: each request is sent byte for byte with http.client."""

from __future__ import annotations

import http.client
import json
import socket
import sys
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from support.processes import ServeProcess

WORKER = Path(__file__).resolve().parents[1] / "jobs" / "job_worker.py"
JSON = {"Content-Type": "application/json"}
TEN_YEARS = 10 * 365 * 24 * 3600
UNSIZED_LIMIT = 64 * 1024 * 1024
SETTINGS: dict[str, Any] = {
    "server": {"command": [sys.executable, str(WORKER)]},
    "smtp": {"max_message_size": 0},
    "jobs": {
        "pipelines": {
            "smtp-emails": {"driver": "sqlite"},
            "held": {"driver": "memory"},
            "work": {"driver": "memory"},
        },
        "consume": ["work"],
        "pool": {"num_workers": 1, "max_workers": 2, "allocate_timeout": 5, "destroy_timeout": 3},
        "shutdown_timeout": 3,
    },
}


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One server for every attack here: `held` (memory) is never consumed, so whatever an
    attack managed to push stays there to be seen."""
    process = ServeProcess(tmp_path_factory.mktemp("attack-api"), SETTINGS)
    yield process
    process.terminate()


def send(
    serving: ServeProcess,
    method: str,
    path: str,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
) -> tuple[int, Any]:
    """One request with exactly these headers; (status, JSON body)."""
    connection = http.client.HTTPConnection("127.0.0.1", serving.api_port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=dict(headers or {}))
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def kind(answer: Any) -> Any:
    """The error type of an answer, or the whole answer when it is not an error (so a failed
    assertion shows what the server did instead of refusing)."""
    return answer.get("type", answer) if isinstance(answer, dict) else answer


def ok(serving: ServeProcess, method: str, path: str, body: Any = None) -> Any:
    """A well-formed request from a script (no Origin, JSON): it must be answered 200."""
    status, answer = send(serving, method, path, JSON, json.dumps(body or {}).encode())
    assert status == 200, f"{method} {path}: {status} {answer}"
    return answer


def push_body(job_id: str, *, payload: str = "{}", delay: float = 0) -> bytes:
    job = {"id": job_id, "job": "attack", "payload": payload}
    return json.dumps({"job": {**job, "options": {"pipeline": "held", "delay": delay}}}).encode()


def held(serving: ServeProcess) -> dict[str, Any]:
    stat: dict[str, Any] = ok(serving, "GET", "/jobs/pipelines/held/stat")
    return stat


def held_ids(serving: ServeProcess) -> set[str]:
    jobs = ok(serving, "GET", "/jobs/pipelines/held/peek?limit=1000")["jobs"]
    return {job["id"] for job in jobs}


def test_a_rebound_dns_name_can_neither_read_mail_nor_push(serving: ServeProcess) -> None:
    rebound = {"Host": f"evil.example:{serving.api_port}"}
    job_id = str(uuid.uuid4())

    read, answer = send(serving, "GET", "/jobs/pipelines/smtp-emails/peek", rebound)
    pushed, _ = send(serving, "POST", "/jobs/push", {**rebound, **JSON}, push_body(job_id))

    assert (read, kind(answer)) == (403, "Forbidden"), f"read: {read} {answer}"
    assert pushed == 403
    assert job_id not in held_ids(serving)


def test_a_page_of_another_site_cannot_post_even_json(serving: ServeProcess) -> None:
    for origin in ("http://evil.example", "http://localhost:3000", "null"):
        job_id = str(uuid.uuid4())
        status, answer = send(
            serving, "POST", "/jobs/push", {"Origin": origin, **JSON}, push_body(job_id)
        )
        assert (status, kind(answer)) == (403, "Forbidden"), f"Origin {origin}: {status}"
        assert job_id not in held_ids(serving)


def test_a_form_or_no_cors_fetch_changes_nothing(serving: ServeProcess) -> None:
    """What a cross-site page can send without a preflight: a form (text/plain, urlencoded)
    or a fetch with no body and so no Content-Type. Sent without Origin, as older browsers
    did, so the Content-Type rule alone stops them."""
    job_id = str(uuid.uuid4())
    workers = len(ok(serving, "GET", "/workers/jobs")["workers"])
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    attempts = [
        ("/jobs/push", {"Content-Type": "text/plain"}, push_body(job_id)),
        ("/jobs/pipelines", form, b'{"name": "planted", "driver": "memory"}'),
        ("/jobs/pipelines/held/pause", {}, b""),
        ("/workers/jobs/add", {}, b""),
    ]

    for path, headers, body in attempts:
        status, answer = send(serving, "POST", path, headers, body)
        assert (status, kind(answer)) == (415, "UnsupportedMediaType"), f"{path}: {status}"

    assert job_id not in held_ids(serving), "the job was not pushed"
    assert "planted" not in ok(serving, "GET", "/jobs/pipelines")["pipelines"]
    assert held(serving)["paused"] is False
    assert len(ok(serving, "GET", "/workers/jobs")["workers"]) == workers


def test_workers_add_stops_at_max_workers(serving: ServeProcess) -> None:
    ok(serving, "POST", "/workers/jobs/add")
    try:
        status, answer = send(serving, "POST", "/workers/jobs/add", JSON)
        assert (status, kind(answer)) == (409, "PoolLimit"), f"{status} {answer}"
        assert len(ok(serving, "GET", "/workers/jobs")["workers"]) == 2, "max_workers: 2"
    finally:
        ok(serving, "POST", "/workers/jobs/remove")


def test_a_list_limit_of_100000_is_refused(serving: ServeProcess) -> None:
    for route in ("peek", "failed"):
        status, answer = send(serving, "GET", f"/jobs/pipelines/held/{route}?limit=100000")
        assert (status, kind(answer)) == (422, "InvalidJob"), f"{route}: {status}"


def test_a_huge_body_is_cut_at_64_mib_when_messages_are_unlimited(serving: ServeProcess) -> None:
    job_id = str(uuid.uuid4())
    body = push_body(job_id, payload="x" * (UNSIZED_LIMIT + 1024 * 1024))

    status, answer = send(serving, "POST", "/jobs/push", JSON, body)

    assert status == 413, f"{status} {answer}"
    assert set(answer) == {"error", "type"}
    assert job_id not in held_ids(serving)


def test_a_job_delayed_ten_years_is_refused(serving: ServeProcess) -> None:
    delayed = held(serving)["delayed"]

    status, answer = send(
        serving, "POST", "/jobs/push", JSON, push_body(str(uuid.uuid4()), delay=TEN_YEARS)
    )

    assert (status, kind(answer)) == (422, "InvalidJob"), f"{status} {answer}"
    assert held(serving)["delayed"] == delayed


def test_a_declare_cannot_put_a_database_outside_data_dir(
    serving: ServeProcess, tmp_path: Path
) -> None:
    absolute = tmp_path / "x.db"
    relative = f"../../x-{uuid.uuid4().hex}.db"
    for number, path in enumerate((str(absolute), relative)):
        settings = {"name": f"escape{number}", "driver": "sqlite", "config": {"path": path}}
        status, answer = send(
            serving, "POST", "/jobs/pipelines", JSON, json.dumps(settings).encode()
        )
        assert (status, kind(answer)) == (403, "Forbidden"), f"{path}: {status} {answer}"
    assert not absolute.exists()
    assert not (serving.workdir / relative).exists()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A port nothing answers on: a connection to it shows the server tried to reach it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.settimeout(0)
        yield sock


def test_a_declare_cannot_reach_a_broker_the_configuration_does_not_name(
    serving: ServeProcess, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    brokers = {
        "redis": {"addr": f"redis://127.0.0.1:{port}/0", "timeout": 1},
        "amqp": {"addr": f"amqp://127.0.0.1:{port}/", "timeout": 1},
        "nats": {"addr": f"nats://127.0.0.1:{port}"},
    }
    for driver, config in brokers.items():
        settings = {"name": f"probe-{driver}", "driver": driver, "config": config}
        status, answer = send(
            serving, "POST", "/jobs/pipelines", JSON, json.dumps(settings).encode()
        )
        assert (status, kind(answer)) == (403, "Forbidden"), f"{driver}: {status} {answer}"
    with pytest.raises(BlockingIOError):
        listener.accept()
