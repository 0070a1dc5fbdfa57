"""Baseline SMTP servers for bench/smtp_jobs.py.

(a) aiosmtpd: plain aiosmtpd, every message answered 250.
(b) aiosmtpd+parser: the same after mailrunner's parser has read the message.
(c) smtp+parser: mailrunner's own SMTP listener (protocol class, connection registry, logs
    at warning) with the same parse-then-250 handler: no event, no job, no pipeline. Against
    (c), the ratio shows what building the event and storing the job costs on its own.
(d) smtp-only: the same listener (its chunked DATA reader) answering 250 without parsing: the
    ceiling bench/large_messages.py holds mailrunner against, since nothing after SMTP runs.

Usage: baseline_servers.py {aiosmtpd|aiosmtpd+parser|smtp+parser|smtp-only} PORT. Serves until
killed.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from aiosmtpd.smtp import SMTP

from mailrunner.config import LogsConfig, SmtpConfig
from mailrunner.logs import configure
from mailrunner.metrics import Metrics
from mailrunner.mime.parse import parse
from mailrunner.smtp.server import SmtpServer


class OnlyOk:
    """(a) and (d): the cheapest possible handler: every message gets 250."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


class ParseThenOk:
    """(b) and (c): the same, after parsing the message with mailrunner's parser."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parse(envelope.original_content)
        return "250 OK"


async def serve_aiosmtpd(handler: Any, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="bench", enable_SMTPUTF8=True), "127.0.0.1", port
    )
    async with server:
        await server.serve_forever()


async def serve_mailrunner_smtp(handler: Any, port: int) -> None:
    configure(LogsConfig(level="warning"))
    server = SmtpServer(SmtpConfig(addr=f"127.0.0.1:{port}"), handler, Metrics())
    await server.start()
    await asyncio.Event().wait()


async def serve(kind: str, port: int) -> None:
    if kind == "aiosmtpd":
        await serve_aiosmtpd(OnlyOk(), port)
    elif kind == "aiosmtpd+parser":
        await serve_aiosmtpd(ParseThenOk(), port)
    elif kind == "smtp+parser":
        await serve_mailrunner_smtp(ParseThenOk(), port)
    elif kind == "smtp-only":
        await serve_mailrunner_smtp(OnlyOk(), port)
    else:
        raise SystemExit(f"unknown baseline {kind!r}")


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], int(sys.argv[2])))
