"""Baseline SMTP servers for bench/smtp_jobs.py: plain aiosmtpd, with and without our parser.

Usage: baseline_servers.py {aiosmtpd|aiosmtpd+parser} PORT. Serves until killed.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from aiosmtpd.smtp import SMTP

from mailrunner.mime.parse import parse


class OnlyOk:
    """(a): the cheapest possible handler: every message gets 250."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


class ParseThenOk:
    """(b): the same, after parsing the message with mailrunner's parser."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parse(envelope.original_content)
        return "250 OK"


HANDLERS = {"aiosmtpd": OnlyOk, "aiosmtpd+parser": ParseThenOk}


async def serve(kind: str, port: int) -> None:
    handler = HANDLERS[kind]()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="bench", enable_SMTPUTF8=True), "127.0.0.1", port
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], int(sys.argv[2])))
