"""The API's trust boundary on a running server: who may call it (Host, Origin, token),
what a change must be sent as (application/json), what a pipeline declared through it may
reach, and the caps on workers, list sizes and job delays."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from api_support import Api, send_raw, start_jobs_node, wire_job
from click.testing import CliRunner

from mailrunner.cli.main import main
from support.requirements import require_broker
from support.server import RunningServer

TOKEN = "trust-token"
JSON = {"Content-Type": "application/json"}
THIRTY_DAYS = 30 * 24 * 3600


def api_port(server: RunningServer) -> int:
    return int(server.api_url.rsplit(":", 1)[1])


def push_body(pipeline: str) -> bytes:
    return json.dumps({"job": wire_job(pipeline)}).encode()


def test_only_requests_addressed_to_this_api_or_an_allowed_host_are_served(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(record=False, rpc={"allowed_hosts": ["mail.test", "Proxy.test:8080"]})
    port = api_port(server)
    served = [
        f"127.0.0.1:{port}",
        "127.0.0.1",
        f"localhost:{port}",
        "LOCALHOST",
        f"[::1]:{port}",
        "[::1]",
        "mail.test",
        f"mail.test:{port}",
        "mail.test:8443",
        "proxy.test:8080",
    ]
    refused = [
        "evil.example",
        f"evil.example:{port}",
        f"localhost:{port + 1}",
        f"127.0.0.1.evil.example:{port}",
        f"localhost.:{port}",
        f"[::1]evil.example:{port}",
        "[::1]evil.example",
        "proxy.test",
        "proxy.test:9090",
        "",
    ]

    for host in served:
        reply = send_raw(server.api_url, "GET", "/jobs/pipelines", {"Host": host})
        assert reply.status == 200, f"Host {host!r}: {reply.status} {reply.body}"
    for host in refused:
        read = send_raw(server.api_url, "GET", "/jobs/pipelines/smtp-emails/peek", {"Host": host})
        assert (read.status, read.body["type"]) == (403, "Forbidden"), f"Host {host!r}"
        assert set(read.body) == {"error", "type"}
        assert "rpc.allowed_hosts" in read.body["error"]
        pushed = send_raw(
            server.api_url, "POST", "/jobs/push", {"Host": host, **JSON}, push_body("smtp-emails")
        )
        assert pushed.status == 403, f"Host {host!r}: {pushed.status} {pushed.body}"
    assert Api(server.api_url).stat("smtp-emails")["queued"] == 0, "a refused push is not stored"


def test_an_origin_other_than_the_apis_own_is_refused_and_none_is_fine(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(record=False)
    port = api_port(server)
    own = [f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://[::1]:{port}"]
    foreign = [
        "http://evil.example",
        f"http://evil.example:{port}",
        "http://localhost:3000",
        "http://localhost",
        f"ftp://127.0.0.1:{port}",
        "null",
        "",
    ]

    for origin in own:
        reply = send_raw(
            server.api_url,
            "POST",
            "/jobs/push",
            {"Origin": origin, **JSON},
            push_body("smtp-emails"),
        )
        assert reply.status == 200, f"Origin {origin!r}: {reply.status} {reply.body}"
    for origin in foreign:
        reply = send_raw(
            server.api_url,
            "POST",
            "/jobs/push",
            {"Origin": origin, **JSON},
            push_body("smtp-emails"),
        )
        assert (reply.status, reply.body["type"]) == (403, "Forbidden"), f"Origin {origin!r}"
        assert "another site" in reply.body["error"]
    scripted = send_raw(server.api_url, "POST", "/jobs/push", JSON, push_body("smtp-emails"))
    assert scripted.status == 200, "a request without Origin (a script, the CLI) is served"
    assert Api(server.api_url).stat("smtp-emails")["queued"] == len(own) + 1


def test_with_a_token_the_token_is_the_check_and_json_is_still_required(
    start_server: Callable[..., RunningServer],
) -> None:
    """A page cannot attach a bearer token to a cross-site request without a CORS preflight,
    which the API never grants; so with a token, Host and Origin are not checked."""
    server = start_server(record=False, rpc={"token": TOKEN})
    foreign = {"Host": "evil.example", "Origin": "http://evil.example"}
    bearer = {"Authorization": f"Bearer {TOKEN}"}

    anonymous = send_raw(server.api_url, "POST", "/jobs/push", foreign, b"{}")
    assert (anonymous.status, anonymous.body["type"]) == (401, "Unauthorized"), "token first"
    form = {**foreign, **bearer, "Content-Type": "text/plain"}
    refused = send_raw(server.api_url, "POST", "/jobs/push", form, push_body("smtp-emails"))
    assert (refused.status, refused.body["type"]) == (415, "UnsupportedMediaType")
    tokened = {**foreign, **bearer, **JSON}
    pushed = send_raw(server.api_url, "POST", "/jobs/push", tokened, push_body("smtp-emails"))
    assert pushed.status == 200, pushed.body
    assert Api(server.api_url, TOKEN).stat("smtp-emails")["queued"] == 1


@pytest.fixture
def node_api(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> tuple[RunningServer, Api]:
    """A jobs node with one worker, its consumed pipeline `work` and an unconsumed `held`."""
    node = start_jobs_node(
        start_server, tmp_path, workers=1, pipelines={"held": {"driver": "memory"}}
    )
    return node.server, node.api


def test_every_post_route_refuses_anything_but_json_and_does_nothing(
    node_api: tuple[RunningServer, Api],
) -> None:
    server, api = node_api
    pipelines = api.ok("GET", "/jobs/pipelines")
    pids = {worker["pid"] for worker in api.workers()}
    bodies = {
        "/jobs/push": push_body("held"),
        "/jobs/push_batch": json.dumps({"jobs": [wire_job("held")]}).encode(),
        "/jobs/pipelines": b'{"name": "sneaky", "driver": "memory"}',
    }
    posts = [route.path for route in server.app.api.routes if route.method == "POST"]
    assert len(posts) >= 12, "every POST route of the table is tried"
    types = [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=b",
        "text/json",
        "application/json-patch+json",
    ]

    for template in posts:
        path = template.format(name="held", pool="jobs", uuid=uuid.uuid4(), id=uuid.uuid4())
        for content_type in types:
            headers = {} if content_type is None else {"Content-Type": content_type}
            reply = send_raw(server.api_url, "POST", path, headers, bodies.get(template, b"{}"))
            assert (reply.status, reply.body["type"]) == (415, "UnsupportedMediaType"), (
                f"POST {path} as {content_type}: {reply.status} {reply.body}"
            )
            assert "application/json" in reply.body["error"]

    assert api.ok("GET", "/jobs/pipelines") == pipelines, "nothing declared or destroyed"
    stat = api.stat("held")
    assert (stat["queued"], stat["paused"]) == (0, False), "nothing pushed, nothing paused"
    assert {worker["pid"] for worker in api.workers()} == pids, "no worker added or replaced"


def test_json_with_parameters_and_an_empty_body_are_taken(
    node_api: tuple[RunningServer, Api],
) -> None:
    server, api = node_api
    pause = "/jobs/pipelines/held/pause"
    with_charset = {"Content-Type": "Application/JSON; charset=utf-8"}

    assert send_raw(server.api_url, "POST", pause, with_charset).status == 200
    assert api.stat("held")["paused"] is True, "an empty body is {}"
    resumed = send_raw(server.api_url, "POST", "/jobs/pipelines/held/resume", JSON, b"{}")
    assert resumed.status == 200
    assert api.stat("held")["paused"] is False
    unknown = send_raw(server.api_url, "POST", pause, JSON, b'{"now": true}')
    assert unknown.status == 422, "a route without parameters takes none"


def test_the_cli_sends_every_change_as_json(node_api: tuple[RunningServer, Api]) -> None:
    """The server refuses any other type, so each command succeeding proves the header."""
    server, api = node_api
    runner = CliRunner()
    commands = [
        ["jobs", "pause", "held"],
        ["jobs", "resume", "held"],
        ["jobs", "push", "held", "--payload", "{}"],
        ["jobs", "declare", "rt", "--driver", "memory"],
        ["jobs", "destroy", "rt"],
        ["jobs", "failed", "retry", "held"],
        ["jobs", "failed", "purge", "held"],
        ["workers", "add"],
        ["workers", "remove"],
        ["workers", "reset"],
    ]

    for command in commands:
        result = runner.invoke(main, [*command, "--server", server.api_url, "--json"])
        assert result.exit_code == 0, f"{' '.join(command)}: {result.output}"
    closed = runner.invoke(
        main, ["connections", "close", str(uuid.uuid4()), "--server", server.api_url]
    )
    assert closed.exit_code == 1
    assert "no open SMTP connection" in closed.output, "404 from the route, not 415"
    assert api.stat("held")["queued"] == 1


def test_workers_add_stops_at_four_times_num_workers_by_default(
    node_api: tuple[RunningServer, Api],
) -> None:
    _, api = node_api
    for _ in range(3):
        api.ok("POST", "/workers/jobs/add")

    refused = api.post("/workers/jobs/add")

    assert (refused.status, refused.body["type"]) == (409, "PoolLimit")
    assert "jobs.pool.max_workers" in refused.body["error"]
    assert len(api.workers()) == 4
    api.ok("POST", "/workers/jobs/remove")
    assert api.ok("POST", "/workers/jobs/add")["pool"] == "jobs", "room again below the cap"


def test_a_job_delay_beyond_30_days_is_refused(start_server: Callable[..., RunningServer]) -> None:
    server = start_server(record=False)
    api = Api(server.api_url)
    longest = wire_job("smtp-emails", options={"delay": THIRTY_DAYS})
    longer = wire_job("smtp-emails", options={"delay": THIRTY_DAYS + 1})

    assert api.post("/jobs/push", {"job": longest}).status == 200
    refused = api.post("/jobs/push", {"job": longer})

    assert (refused.status, refused.body["type"]) == (422, "InvalidJob")
    assert "delay" in refused.body["error"]
    assert api.stat("smtp-emails")["delayed"] == 1


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP port nothing answers on: a connection to it shows the server tried to reach it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.settimeout(0)
        yield sock


def connections_made(sock: socket.socket) -> int:
    made = 0
    while True:
        try:
            connection, _ = sock.accept()
        except BlockingIOError:
            return made
        connection.close()
        made += 1


def test_declare_through_the_api_stays_within_data_dir_and_configured_brokers(
    start_server: Callable[..., RunningServer], tmp_path: Path, listener: socket.socket
) -> None:
    server = start_server(record=False)
    api = Api(server.api_url)
    data_dir = server.config.data_dir.resolve()
    outside = tmp_path / "outside"
    outside.mkdir()
    (data_dir / "escape").symlink_to(outside)
    port = listener.getsockname()[1]
    allowed: list[dict[str, Any]] = [
        {"driver": "memory"},
        {"driver": "sqlite"},
        {"driver": "sqlite", "config": {"path": str(data_dir / "runtime" / "rt.db")}},
    ]
    refused: list[dict[str, Any]] = [
        {"driver": "sqlite", "config": {"path": str(outside / "x.db")}},
        {"driver": "sqlite", "config": {"path": str(data_dir / ".." / "x.db")}},
        {"driver": "sqlite", "config": {"path": str(data_dir / "escape" / "x.db")}},
        {"driver": "sqlite", "config": {"path": str(data_dir)}},
        {"driver": "redis", "config": {"addr": f"redis://127.0.0.1:{port}/0", "timeout": 1}},
        {"driver": "amqp", "config": {"addr": f"amqp://u:pw@127.0.0.1:{port}/", "timeout": 1}},
        {"driver": "nats", "config": {"addr": f"nats://127.0.0.1:{port}"}},
    ]

    for number, settings in enumerate(refused):
        reply = api.post("/jobs/pipelines", {"name": f"refused{number}", **settings})
        assert (reply.status, reply.body["type"]) == (403, "Forbidden"), settings
        assert "rpc.allow_any_declare" in reply.body["error"], reply.body
        assert "pw@" not in reply.body["error"], "a broker password never reaches a client"
    for number, settings in enumerate(allowed):
        api.ok("POST", "/jobs/pipelines", {"name": f"allowed{number}", **settings})

    declared = api.ok("GET", "/jobs/pipelines")["pipelines"]
    assert not [name for name in declared if name.startswith("refused")]
    assert list(outside.iterdir()) == [], "no file created through the symlink or the path"
    assert not (data_dir.parent / "x.db").exists()
    assert connections_made(listener) == 0, "no broker connection was attempted"


def test_allow_any_declare_lets_a_declare_reach_any_broker(
    start_server: Callable[..., RunningServer], listener: socket.socket
) -> None:
    server = start_server(record=False, rpc={"allow_any_declare": True})
    port = listener.getsockname()[1]
    settings = {
        "driver": "redis",
        "config": {"addr": f"redis://127.0.0.1:{port}/0", "timeout": 0.5},
    }

    reply = Api(server.api_url).post("/jobs/pipelines", {"name": "anywhere", **settings})

    assert reply.status == 503, "the fake broker never answers: the driver gives up"
    assert connections_made(listener) >= 1, "the declare went through to the broker"


@pytest.mark.redis
def test_a_broker_address_of_the_configuration_may_be_declared_again(
    start_server: Callable[..., RunningServer],
) -> None:
    require_broker("Redis", "127.0.0.1", 6379)
    addr = "redis://127.0.0.1:6379/0"
    prefix = f"mailrunner-trust-{uuid.uuid4().hex}"
    configured = {"driver": "redis", "config": {"addr": addr, "key_prefix": prefix}}
    server = start_server(record=False, jobs={"pipelines": {"configured": configured}})
    api = Api(server.api_url)
    runtime = {"driver": "redis", "config": {"addr": addr, "key_prefix": prefix, "stream": "rt"}}

    assert api.ok("POST", "/jobs/pipelines", {"name": "rt", **runtime})["created"] is True
    other_database = {**runtime, "config": {**runtime["config"], "addr": addr[:-1] + "1"}}
    refused = api.post("/jobs/pipelines", {"name": "rt1", **other_database})
    assert (refused.status, refused.body["type"]) == (403, "Forbidden")
    assert addr in refused.body["error"], "the message names the allowed address"
    for name in ("rt", "configured"):
        api.ok("POST", f"/jobs/pipelines/{name}/destroy", {"purge": True})
