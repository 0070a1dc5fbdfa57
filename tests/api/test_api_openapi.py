"""/openapi.json describes exactly what the server serves, and the server survives fuzzing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web
from api_support import Api, start_jobs_node

from mailrunner.api.routes import UI_ROUTES
from support.server import RunningServer

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
SCHEMATHESIS_SECONDS = 120


def served_routes(server: RunningServer) -> list[tuple[str, str]]:
    """(METHOD, path) of every route the server's aiohttp application registers."""

    async def build() -> web.Application:
        application: web.Application = server.app.api.application()
        return application

    application: web.Application = server.call(build())
    return [
        (route.method, route.resource.canonical)
        for route in application.router.routes()
        if route.method != "HEAD" and route.resource is not None
    ]


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"only local references are expected: {ref}"
    node: Any = document
    for part in ref[2:].split("/"):
        key = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict), f"{ref} does not resolve"
        assert key in node, f"{ref} does not resolve"
        node = node[key]
    return node


def test_openapi_documents_every_served_route_with_its_schemas(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(record=False)
    reply = Api(server.api_url).get("/openapi.json")
    assert (reply.status, reply.content_type) == (200, "application/json")
    document: dict[str, Any] = reply.body
    assert document["openapi"].startswith("3.1")
    table = {(route.method, route.path): route for route in server.app.api.routes}
    served = served_routes(server)
    assert set(table) <= set(served), "every route of the table is served"

    problems = []
    pages = {(route.method, route.path) for route in UI_ROUTES}  # the web UI, not the API
    for method, path in served:
        if (method, path) in pages:
            continue
        operation = document["paths"].get(path, {}).get(method.lower())
        if operation is None:
            problems.append(f"{method} {path}: served but not in /openapi.json")
            continue
        ok = operation["responses"].get("200", {}).get("content", {})
        if not any("schema" in media for media in ok.values()):
            problems.append(f"{method} {path}: no response schema")
        route = table.get((method, path))
        if route is None:
            continue
        if route.request is not None:
            body = operation.get("requestBody", {}).get("content", {})
            expected = {"$ref": f"#/components/schemas/{route.request.__name__}"}
            if body.get("application/json", {}).get("schema") != expected:
                problems.append(f"{method} {path}: request schema is not {expected}")
        if route.response is not None:
            expected = {"$ref": f"#/components/schemas/{route.response.__name__}"}
            if ok.get("application/json", {}).get("schema") != expected:
                problems.append(f"{method} {path}: response schema is not {expected}")
    assert problems == []


def test_openapi_operations_are_all_served_with_their_parameters_and_security(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(record=False)
    document = Api(server.api_url).ok("GET", "/openapi.json")
    served = set(served_routes(server))
    table = {(route.method, route.path): route for route in server.app.api.routes}

    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert (method.upper(), path) in served, f"{method} {path} is documented, not served"
            route = table[(method.upper(), path)]
            parameters = {(p["in"], p["name"]) for p in operation.get("parameters", [])}
            expected = {("path", part[1:-1]) for part in path.split("/") if part[:1] == "{"}
            expected |= {("query", name) for name in route.query}
            assert parameters == expected, f"{method} {path}"
            assert ("security" in operation) is not route.public, f"{method} {path}"
            statuses = ["401", "403", "404", "409", "422", "503"]
            if method in {"post", "delete"}:
                statuses += ["413", "415"]
                body = operation["requestBody"]["content"]
                assert list(body) == ["application/json"], f"{method} {path} takes JSON only"
            else:
                assert "415" not in operation["responses"], f"{method} {path} has no body"
            for status in statuses:
                error = operation["responses"][status]["content"]["application/json"]["schema"]
                assert error == {"$ref": "#/components/schemas/ErrorResponse"}, (path, status)
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "limit":
                    assert parameter["schema"]["maximum"] == 1000, f"{path}: limit <= 1000"


def test_every_ref_in_openapi_resolves(start_server: Callable[..., RunningServer]) -> None:
    server = start_server(record=False)
    document = Api(server.api_url).ok("GET", "/openapi.json")

    found = sorted(set(refs(document)))

    assert found, "the document uses component references"
    for ref in found:
        assert isinstance(resolve(document, ref), dict), ref
    schemes = document["components"]["securitySchemes"]
    assert schemes == {"bearer": {"type": "http", "scheme": "bearer"}}


SCHEMATHESIS_CONFIG = """\
# Declares are sent as generated: the API's declare policy answers 403 to a broker address
# or sqlite path beyond this node's configuration, so the fuzzer reaches no broker and writes
# no file outside data_dir.

# Routes on one pipeline act on a real (memory) pipeline instead of generated names, which
# almost always answer 404 and never reach a driver. Destroy keeps generated names: on `fuzz`
# its first success would turn every later case into a 404 (destroy is tested in
# test_api_jobs.py).
[[operations]]
include-path-regex = "^/jobs/pipelines/[{]name[}]/(pause|resume|stat|peek|failed)"
parameters = { "path.name" = "fuzz" }

# Listing reads the running jobs pool. add/remove/reset keep generated pool names, so they
# answer 404 without spawning or stopping processes: with the real pool every generated case
# would start or stop a worker process, which makes the run slow and its timing erratic
# (their behaviour is tested in test_api_management.py). /connections/{uuid}/close likewise gets
# generated uuids (404) and is tested there.
[[operations]]
include-path = "/workers/{pool}"
include-method = "GET"
parameters = { "path.pool" = "jobs" }
"""


def test_schemathesis_finds_no_server_error(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    node = start_jobs_node(
        start_server,
        tmp_path,
        workers=1,
        pipelines={"fuzz": {"driver": "memory"}},
        inbox={"enabled": True},
        smtp={"faults_api": True},  # /faults is fuzzed, not a 404 at every case
    )
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG, encoding="utf-8")
    environment = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    command = [
        str(SCHEMATHESIS),
        "--config-file",
        str(config),
        "run",
        f"{node.server.api_url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        "20",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--request-timeout",
        "10",
        "--generation-database",
        "none",
        "--no-color",
        # an endless stream: every case would wait out the request timeout (test_api_inbox.py)
        "--exclude-path",
        "/events",
        # likewise a wait without a match, 30 s by default (tests/inbox/test_wait_api.py)
        "--exclude-path",
        "/messages/wait",
    ]

    try:
        run = subprocess.run(
            command,
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
            timeout=SCHEMATHESIS_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        output = error.stdout.decode() if isinstance(error.stdout, bytes) else error.stdout
        raise AssertionError(f"schemathesis ran over {SCHEMATHESIS_SECONDS}s:\n{output}") from None

    output = f"{run.stdout}\n{run.stderr}"
    assert run.returncode == 0, f"schemathesis exited {run.returncode}:\n{output}"
    operations = len(node.server.app.api.routes)
    tested = re.search(r"Operations:\s+(\d+) selected / (\d+) total", output)
    assert tested is not None, output
    excluded = 2  # /events and /messages/wait
    assert tested.groups() == (str(operations - excluded), str(operations)), "the rest fuzzed"
    assert node.api.get("/jobs/pipelines").status == 200, "the server still answers"
