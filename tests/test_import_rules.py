"""Who may import whom: the worker SDK and the server meet only in `mailrunner.wire`.

Worker processes import `mailrunner.worker`, so it must not pull in the server (pydantic,
structlog, brokers...); the server must not depend on the SDK, so that either can change
without the other, with the wire protocol between them stated once. Read from the source's
AST, so an import that no test happens to execute is caught too.
"""

from __future__ import annotations

import ast
import functools
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import mailrunner

SRC = Path(mailrunner.__file__).parent
SDK = "mailrunner.worker"
WIRE = "mailrunner.wire"
CLIENTS = ("mailrunner.cli",)
"""Programs that talk to the server and may also use the SDK (to read events)."""


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
