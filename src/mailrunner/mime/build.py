"""Assemble an EmailEvent from the bytes of DATA and what the SMTP session learned.

Kept apart from the SMTP handler so the same assembly serves the server, tests and
benchmarks; large messages are parsed on a thread so one big message cannot stall the
event loop that serves every other session. A spooled message is parsed from its file and
read whole (on a thread) only when the event must carry its raw bytes in itself; when the
storage claim-checks it, the spool file becomes the event's `raw_path` instead.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime

from mailrunner.errors import ParseChildLost
from mailrunner.events import Authentication, EmailEvent, Envelope, Message
from mailrunner.mime.attachments import AttachmentStorage
from mailrunner.mime.parse import ParsedMessage, ParseOptions, parse, parse_file
from mailrunner.mime.parse_processes import ParseProcesses
from mailrunner.mime.prescan import plain_body_start
from mailrunner.smtp.spool import MessageContent


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
    tls: bool = False


TRACE_HEADER = "Received"


def trace_value(arrival: Arrival, hostname: str) -> str:
    """The RFC 5321 section 4.4 `Received:` trace this server prepends to every message,
    as the event shows it: unfolded (the folding whitespace kept, the line breaks gone)."""
    protocol = "ESMTP" if arrival.esmtp else "SMTP"
    if arrival.tls and arrival.esmtp:
        protocol += "S"  # RFC 3848 names ESMTPS and ESMTPSA only
    if arrival.authentication is not None:
        protocol += "A"
    for_clause = f"\tfor <{arrival.rcpt_to[0]}>" if len(arrival.rcpt_to) == 1 else ""
    return (
        f"from {arrival.helo or 'unknown'} ([{arrival.remote_host}])"
        f"\tby {hostname} (mailrunner) with {protocol} id {arrival.event_id}{for_clause};"
        f"\t{_trace_date(arrival.received_at.replace(microsecond=0))}"
    )


@functools.lru_cache(maxsize=2)
def _trace_date(second: datetime) -> str:
    """Messages arriving in the same second share one date text (formatting costs more than
    the rest of the trace line)."""
    return format_datetime(second)


def with_trace(headers: dict[str, list[str]], trace: str) -> dict[str, list[str]]:
    """Headers as if the trace line had been the first line of the message.

    Adding it to the parsed headers instead of to the bytes spares a copy of the whole
    message (10 MB messages are the case that matters) and gives the same event.
    """
    traced = {TRACE_HEADER: [trace]}
    for name, values in headers.items():
        if name.lower() == "received":
            traced[TRACE_HEADER].extend(values)
        else:
            traced[name] = values
    return traced


CHILD_PLAIN_BYTES = 16 * 1024
"""A message without MIME structure over this size is parsed on the loop, not on a child:
its parse is a header block and one decode (63 us at 100 KB), cheaper for the loop than the
child's round trip of copies, and without its latency (100 KB plain, 20 sessions: 14 %
fewer messages a second through a child, A/B over 10 rounds)."""


def _worth_a_child(raw: bytes, options: ParseOptions) -> bool:
    """Whether a parse child saves the event loop work on `raw` (a parse with MIME
    structure, or a small message) rather than costing it."""
    if len(raw) <= CHILD_PLAIN_BYTES:
        return True
    return plain_body_start(raw, max_header_bytes=options.max_header_bytes) is None


@dataclass(frozen=True, slots=True, kw_only=True)
class EventBuilder:
    """Parses DATA, stores attachments and returns the finished event."""

    hostname: str
    """Names this server in the `Received:` trace."""
    options: ParseOptions
    storage: AttachmentStorage
    include_raw: bool
    offload_bytes: int
    """Messages larger than this are parsed on `executor` (None: the loop's default)."""
    executor: Executor | None = None
    children: ParseProcesses | None = None
    """Where smaller ones are parsed while the server is busy (else on the loop)."""

    async def build(self, arrival: Arrival, content: MessageContent | bytes) -> EmailEvent:
        if isinstance(content, bytes):
            content = MessageContent.in_memory(content)
        parsed = await self._parse(content)
        parsed.headers = with_trace(parsed.headers, trace_value(arrival, self.hostname))
        # storing is the last step that can fail, and it removes its own folder when it does:
        # a message refused with 451 leaves no files behind
        stored = await self.storage.store_message(
            arrival.event_id, parsed.attachments, content, self.include_raw
        )
        message = self._message(parsed, stored.raw, stored.raw_path)
        return EmailEvent(
            id=arrival.event_id,
            uuid=arrival.connection_id,
            remote_addr=arrival.remote_addr,
            received_at=arrival.received_at,
            envelope=Envelope(
                from_=arrival.mail_from,
                to=arrival.rcpt_to,
                helo=arrival.helo,
                size=content.size,
            ),
            authentication=arrival.authentication,
            message=message,
            attachments=stored.attachments,
            parse_errors=arrival.errors + tuple(parsed.parse_errors),
        )

    async def _parse(self, content: MessageContent) -> ParsedMessage:
        loop = asyncio.get_running_loop()
        if content.path is not None:
            parsing = functools.partial(
                parse_file,
                content.path,
                self.options,
                attachments_in_file=self.storage.claim_checks(content.size),
            )
            return await loop.run_in_executor(self.executor, parsing)
        assert content.data is not None
        if content.size > self.offload_bytes:
            return await loop.run_in_executor(self.executor, parse, content.data, self.options)
        if self.children is not None and _worth_a_child(content.data, self.options):
            try:
                parsed = await self.children.parse(content.data)
            except ParseChildLost:
                # never on the loop: a message that stalled a child would stall every session
                return await loop.run_in_executor(self.executor, parse, content.data, self.options)
            if parsed is not None:
                return parsed
        return parse(content.data, self.options)

    def _message(self, parsed: ParsedMessage, raw: bytes | None, raw_path: str | None) -> Message:
        return Message(
            id=parsed.message_id,
            subject=parsed.subject,
            from_=tuple(parsed.from_),
            to=tuple(parsed.to),
            cc=tuple(parsed.cc),
            reply_to=tuple(parsed.reply_to),
            headers=parsed.headers,
            body=parsed.body,
            html_body=parsed.html_body,
            raw=raw,
            raw_path=raw_path,
        )
