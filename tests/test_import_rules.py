"""Who may import whom: the worker SDK and the server meet only in `mailrunner.wire`.

Worker processes import `mailrunner.worker`, so it must not pull in the server (pydantic,
structlog, brokers...); the server must not depend on the SDK, so that either can change
without the other, with the wire protocol between them stated once. Read from the source's
AST, so an import that no test happens to execute is caught too.
"""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import mailrunner

SRC = Path(mailrunner.__file__).parent
SDK = "mailrunner.worker"
WIRE = "mailrunner.wire"
CLIENTS = ("mailrunner.cli", "mailrunner.testing")
"""Programs that talk to the server and may also use the SDK (to read events)."""
API_CLIENT = "mailrunner.api.client"
SERVER = (
    "mailrunner.api.http",
    "mailrunner.api.trust",
    "mailrunner.app",
    "mailrunner.smtp",
    "mailrunner.pool",
    "mailrunner.jobs.service",
    "mailrunner.jobs.drivers",
)
"""What the API client must never load: it runs in CLIs and in SMTP ingress nodes, and
reaches the server only through the route table (mailrunner.api.routes)."""
SERVER_LIBRARIES = ("aiosmtpd", "redis", "aio_pika", "aiormq", "nats", "aiohttp.web", "structlog")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(SRC.rglob("*.py"))}


def _imports(module: str, path: Path) -> Iterator[str]:
    """Every module an import statement of `module` loads, relative imports resolved."""
    known = _modules()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                # `from mailrunner import worker` loads the module mailrunner.worker.
                submodule = f"{base}.{alias.name}"
                yield submodule if submodule in known else base


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _is_stdlib(name: str) -> bool:
    return name.partition(".")[0] in sys.stdlib_module_names | {"__future__"}


def _violations(rule: str, allowed: tuple[str, ...], *, stdlib: bool) -> list[str]:
    """`module imports name` for each import of a module under `rule` outside `allowed`."""
    found = []
    for module, path in _modules().items():
        if not _within(module, rule):
            continue
        for name in _imports(module, path):
            ok = (stdlib and _is_stdlib(name)) or any(_within(name, a) for a in allowed)
            if not ok:
                found.append(f"{module} imports {name}")
    return found


@pytest.mark.parametrize(
    ("package", "allowed"),
    [(SDK, (SDK, WIRE)), (WIRE, (WIRE,))],
    ids=["worker SDK", "wire"],
)
def test_sdk_and_wire_import_only_the_standard_library_and_the_wire(
    package: str, allowed: tuple[str, ...]
) -> None:
    assert _violations(package, allowed, stdlib=True) == []


def test_the_server_never_imports_the_worker_sdk() -> None:
    offenders = [
        f"{module} imports {name}"
        for module, path in _modules().items()
        if not any(_within(module, side) for side in (SDK, WIRE, *CLIENTS))
        for name in _imports(module, path)
        if _within(name, SDK)
    ]

    assert offenders == []


def _reachable(module: str) -> set[str]:
    """Every mailrunner module `module` loads, directly or through others."""
    modules = _modules()
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen or name not in modules:
            continue
        seen.add(name)
        todo.extend(_imports(name, modules[name]))
    return seen


def test_the_api_client_never_loads_the_server() -> None:
    loaded = _reachable(API_CLIENT)

    assert "mailrunner.api.routes" in loaded, "the client reads the route table"
    assert sorted(name for name in loaded if any(_within(name, s) for s in SERVER)) == []


_LOADED_BY = """
import json, runpy, sys
sys.argv = ["mailrunner", *sys.argv[1:]]
try:
    runpy.run_module("mailrunner", run_name="__main__")
except SystemExit:
    pass
sys.stderr.write(json.dumps(sorted(sys.modules)))
"""
"""Runs the CLI as `python -m mailrunner` does, then writes the modules it loaded to stderr
(stdout holds the command's own output)."""


def loaded_by_cli(*args: str) -> set[str]:
    run = subprocess.run(
        [sys.executable, "-c", _LOADED_BY, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    loaded: list[str] = json.loads(run.stderr.splitlines()[-1])
    return set(loaded)


def test_mailrunner_version_loads_no_server_client_or_validation_library() -> None:
    loaded = loaded_by_cli("--version")

    assert "click" in loaded, "the probe sees the CLI's imports"
    heavy = (*SERVER_LIBRARIES, "aiohttp", "pydantic", "yaml", "rich", "mailrunner.api")
    assert sorted(name for name in loaded if any(_within(name, h) for h in heavy)) == []


def test_an_api_command_loads_the_client_but_no_server_or_pooling_library() -> None:
    """One call needs no pooled aiohttp session nor an event loop: the CLI sends it with
    http.client; given --server it reads no configuration file, so it needs neither the
    configuration models nor a YAML parser."""
    loaded = loaded_by_cli("jobs", "list", "--server", "http://127.0.0.1:9")

    assert "mailrunner.api.client" in loaded, "the probe sees the command's imports"
    unwanted = (
        *SERVER_LIBRARIES,
        *SERVER,
        "aiohttp",
        "rich",
        "asyncio",
        "yaml",
        "mailrunner.config",
    )
    assert sorted(name for name in loaded if any(_within(name, u) for u in unwanted)) == []


def test_the_rules_see_the_imports_they_judge() -> None:
    """Guards the walker itself: a walker that found nothing would pass every rule above."""
    modules = _modules()
    for package in ("smtp", "jobs", "api", "pool", "mime", "worker", "wire"):
        assert f"mailrunner.{package}" in modules
    assert "mailrunner.app" in modules
    assert "mailrunner.wire.frame" in set(
        _imports("mailrunner.worker.relay", modules["mailrunner.worker.relay"])
    )
    assert "mailrunner.worker" in set(
        _imports("mailrunner.cli.remote", modules["mailrunner.cli.remote"])
    )
