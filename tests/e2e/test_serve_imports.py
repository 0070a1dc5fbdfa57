"""What a `mailrunner serve` with only sqlite pipelines imports: no broker client.

Every module a process imports costs it memory for as long as it runs, so an idle server on
sqlite must not load redis, aio-pika or nats-py (they are extras it may not even have). The
child says what it imported: with PYTHONPROFILEIMPORTTIME set, Python writes one line per
module an `import` statement loads to its stderr, which ServeProcess keeps in the server's
log (`importlib.import_module`, which picks the driver module, writes none: what the driver
module imports is listed).
"""

from __future__ import annotations

import re
import smtplib
from collections.abc import Callable

import pytest

from support.processes import ServeProcess

NOT_FOR_SQLITE = ("redis", "aio_pika", "aiormq", "pamqp", "nats")
"""The broker clients of the redis, amqp and nats drivers (and aio-pika's own client)."""

_IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)\s*$", re.MULTILINE)


def imported_modules(log: str) -> set[str]:
    return set(_IMPORT_LINE.findall(log))


def test_a_sqlite_server_imports_no_broker_client(
    serve: Callable[..., ServeProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
    server = serve()
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.sendmail("a@example.com", ["b@example.com"], b"Subject: hi\r\n\r\nbody\r\n")
    server.wait_events(1)
    server.terminate()
    imported = imported_modules(server.logs())
    # the log does list imports: what the sqlite driver imports is among them
    assert {"sqlite3", "mailrunner.jobs.drivers._common"} <= imported, server.logs()[-2000:]
    loaded = sorted(
        name
        for name in imported
        if any(name == banned or name.startswith(f"{banned}.") for banned in NOT_FOR_SQLITE)
    )
    assert loaded == [], f"an idle sqlite server imported {loaded}"
