"""Assemble an EmailEvent from the bytes of DATA and what the SMTP session learned.

Kept apart from the SMTP handler so the same assembly serves the server, tests and
benchmarks; large messages are parsed on a thread so one big message cannot stall the
event loop that serves every other session.
"""

from __future__ import annotations

import asyncio
import base64
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime

from mailrunner.events import Authentication, EmailEvent, Envelope, MessageFacts
from mailrunner.mime.attachments import AttachmentStorage
from mailrunner.mime.parse import ParsedMessage, ParseOptions, parse


@dataclass(frozen=True, slots=True)
class Arrival:
    """What the SMTP session knows about one message before its bytes are parsed."""

    event_id: str
    connection_id: str
    remote_addr: str
    remote_host: str
    received_at: datetime
    helo: str
    esmtp: bool
    mail_from: str
    rcpt_to: tuple[str, ...]
    authentication: Authentication | None
    errors: tuple[str, ...] = ()


def trace_header(arrival: Arrival, hostname: str) -> bytes:
    """The RFC 5321 section 4.4 `Received:` line this server prepends to every message."""
    protocol = "ESMTP" if arrival.esmtp else "SMTP"
    if arrival.authentication is not None:
        protocol += "A"
    for_clause = f"\r\n\tfor <{arrival.rcpt_to[0]}>" if len(arrival.rcpt_to) == 1 else ""
    line = (
        f"Received: from {arrival.helo or 'unknown'} ([{arrival.remote_host}])\r\n"
        f"\tby {hostname} (mailrunner) with {protocol} id {arrival.event_id}{for_clause};\r\n"
        f"\t{format_datetime(arrival.received_at)}\r\n"
    )
    return line.encode("utf-8", "replace")


class EventBuilder:
    """Parses DATA, stores attachments and returns the finished event."""

    def __init__(
        self,
        *,
        hostname: str,
        options: ParseOptions,
        storage: AttachmentStorage,
        include_raw: bool,
        offload_bytes: int,
        executor: Executor | None = None,
    ) -> None:
        self._hostname = hostname
        self._options = options
        self._storage = storage
        self._include_raw = include_raw
        self._offload_bytes = offload_bytes
        self._executor = executor

    async def build(self, arrival: Arrival, raw: bytes) -> EmailEvent:
        traced = trace_header(arrival, self._hostname) + raw
        if len(raw) > self._offload_bytes:
            loop = asyncio.get_running_loop()
            parsed = await loop.run_in_executor(self._executor, parse, traced, self._options)
        else:
            parsed = parse(traced, self._options)
        del traced
        attachments = await self._storage.store(arrival.event_id, parsed.attachments)
        return EmailEvent(
            id=arrival.event_id,
            uuid=arrival.connection_id,
            remote_addr=arrival.remote_addr,
            received_at=arrival.received_at,
            envelope=Envelope(
                mail_from=arrival.mail_from,
                rcpt_to=arrival.rcpt_to,
                helo=arrival.helo,
                size=len(raw),
            ),
            authentication=arrival.authentication,
            message=self._facts(parsed, raw),
            attachments=attachments,
            parse_errors=arrival.errors + tuple(parsed.parse_errors),
        )

    def _facts(self, parsed: ParsedMessage, raw: bytes) -> MessageFacts:
        return MessageFacts(
            message_id=parsed.message_id,
            subject=parsed.subject,
            from_=tuple(parsed.from_),
            to=tuple(parsed.to),
            cc=tuple(parsed.cc),
            reply_to=tuple(parsed.reply_to),
            headers=parsed.headers,
            body=parsed.body,
            html_body=parsed.html_body,
            raw_base64=base64.b64encode(raw).decode("ascii") if self._include_raw else None,
        )
