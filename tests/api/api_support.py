"""Helpers for the management API tests: a small HTTP client, servers with a jobs pool, metrics.

The client is urllib on purpose: the server runs on its own thread and loop (see
tests/support/server.py), so a blocking client drives it over real TCP exactly as curl would.
"""

from __future__ import annotations

import http.client
import json
import smtplib
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from support.server import RunningServer
from support.waiting import wait_until

JOB_WORKER = Path(__file__).resolve().parents[1] / "jobs" / "job_worker.py"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Reply:
    """One HTTP answer: status, parsed body (JSON, or text for anything else), content type."""

    status: int
    body: Any
    content_type: str


class Api:
    """Calls one server's management API; never raises on an HTTP error status."""

    def __init__(self, base_url: str, token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 20.0,
    ) -> Reply:
        """`body` is sent as JSON; `data` is sent as is (for malformed requests); a POST is
        always `application/json` unless `headers` say otherwise."""
        if data is None and body is not None:
            data = json.dumps(body).encode("utf-8")
        if data is None and method == "POST":
            data = b""
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        if method != "GET":
            request.add_header("Content-Type", "application/json")
        if self.token is not None:
            request.add_header("Authorization", f"Bearer {self.token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with _NO_PROXY.open(request, timeout=timeout) as response:
                status, raw = response.status, response.read()
                content_type = response.headers.get_content_type()
        except urllib.error.HTTPError as error:
            with error:
                status, raw = error.code, error.read()
                content_type = error.headers.get_content_type()
        parsed: Any = json.loads(raw) if content_type == "application/json" else raw.decode()
        return Reply(status, parsed, content_type)

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.call("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Reply:
        return self.call("POST", path, body, **kwargs)

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        """The body of a call that must answer 200."""
        reply = self.call(method, path, body)
        assert reply.status == 200, f"{method} {path} -> {reply.status} {reply.body}"
        return reply.body

    def stat(self, pipeline: str) -> dict[str, Any]:
        result: dict[str, Any] = self.ok("GET", f"/jobs/pipelines/{pipeline}/stat")
        return result

    def push(self, pipeline: str, payload: Any = None, **job: Any) -> str:
        """Push one job (a JSON payload by default) and return its id."""
        wire = wire_job(pipeline, payload, **job)
        assert self.ok("POST", "/jobs/push", {"job": wire}) == {"id": wire["id"]}
        job_id: str = wire["id"]
        return job_id

    def workers(self, pool: str = "jobs") -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = self.ok("GET", f"/workers/{pool}")["workers"]
        return listed

    def metrics(self) -> Metrics:
        reply = self.get("/metrics")
        assert reply.status == 200, reply.body
        return Metrics(reply.body)


def send_raw(
    api_url: str,
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes = b"",
) -> Reply:
    """A request with exactly these headers, as a browser or an attacker sends it: http.client
    adds only Content-Length (and Host when not given), where urllib would fill in a POST's
    Content-Type."""
    address = urlsplit(api_url)
    assert address.hostname is not None
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=20)
    try:
        connection.request(method, path, body=body, headers=dict(headers))
        response = connection.getresponse()
        raw = response.read()
        content_type = response.headers.get_content_type()
    finally:
        connection.close()
    parsed: Any = json.loads(raw) if content_type == "application/json" else raw.decode()
    return Reply(response.status, parsed, content_type)


def wire_job(pipeline: str, payload: Any = None, **job: Any) -> dict[str, Any]:
    """A job as the API takes it; `payload` None means a JSON `{}` text payload."""
    wire: dict[str, Any] = {
        "id": job.pop("id", None) or str(uuid.uuid4()),
        "job": job.pop("job", "test.job"),
        "options": {"pipeline": pipeline, **job.pop("options", {})},
        **job,
    }
    if "payload_base64" not in wire:
        wire["payload"] = json.dumps(payload or {}) if not isinstance(payload, str) else payload
    return wire


class Metrics:
    """One scrape of /metrics, parsed by prometheus_client; absent samples read as 0."""

    def __init__(self, text: str) -> None:
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                self.samples[key] = sample.value

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def labelled(self, name: str) -> list[dict[str, str]]:
        """The label sets present for a sample name."""
        return [dict(labels) for sample, labels in self.samples if sample == name]


class JobsNode:
    """A running server whose consumed pipeline `work` runs tests/jobs/job_worker.py."""

    def __init__(self, server: RunningServer, log: Path) -> None:
        self.server = server
        self.api = Api(server.api_url)
        self.log = log

    def executed(self) -> list[tuple[str, int]]:
        """(job id, attempt) per execution, in order."""
        if not self.log.exists():
            return []
        rows = []
        for line in self.log.read_text(encoding="utf-8").splitlines():
            job_id, attempt, _ = line.split(" ", 2)
            rows.append((job_id, int(attempt)))
        return rows

    def wait_executed(self, count: int, timeout: float = 10.0) -> list[tuple[str, int]]:
        wait_until(lambda: len(self.executed()) >= count, f"{count} executed jobs", timeout)
        return self.executed()


def start_jobs_node(
    start_server: Callable[..., RunningServer],
    tmp_path: Path,
    *,
    workers: int = 2,
    pipelines: Mapping[str, Any] | None = None,
    pool: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> JobsNode:
    """A server on the real Jobs path with `work` (memory) consumed by real worker processes;
    `pool` adds settings of jobs.pool."""
    log = tmp_path / f"executed-{uuid.uuid4().hex}.log"
    server = start_server(
        record=False,
        server={"command": [sys.executable, str(JOB_WORKER)], "env": {"JOB_LOG": str(log)}},
        jobs={
            "pipelines": {"work": {"driver": "memory", "retries": 2}, **(pipelines or {})},
            "consume": ["work"],
            "pool": {
                "num_workers": workers,
                "exec_timeout": 10,
                "destroy_timeout": 3,
                "allocate_timeout": 5,
                **(pool or {}),
            },
            "shutdown_timeout": 3,
        },
        **overrides,
    )
    return JobsNode(server, log)


def smtp_client(server: RunningServer, helo: str = "client.example") -> smtplib.SMTP:
    """An smtplib client after EHLO; the caller closes it."""
    client = smtplib.SMTP(server.host, server.port, timeout=10)
    try:
        code, _ = client.ehlo(helo)
        assert code == 250
    except BaseException:
        client.close()
        raise
    return client
