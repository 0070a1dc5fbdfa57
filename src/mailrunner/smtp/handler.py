"""aiosmtpd hooks: fill the envelope, enforce limits, ask `smtp.hooks`, turn DATA into an
event and deliver it.

This is the one place where delivery failures become SMTP replies: anything the delivery
path raises is answered `451 4.3.0` (the client retries later) and its detail goes only to
the log.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from aiosmtpd.smtp import Envelope, TLSSetupException

from mailrunner.errors import MailrunnerError, StorageError
from mailrunner.events import EmailEvent
from mailrunner.metrics import Metrics
from mailrunner.mime.attachments import TempfileStorage
from mailrunner.mime.build import Arrival, EventBuilder
from mailrunner.smtp import replies
from mailrunner.smtp.addresses import sender
from mailrunner.smtp.delivery import Delivery, Outcome
from mailrunner.smtp.event_ids import event_id
from mailrunner.smtp.hooks import SessionHooks
from mailrunner.smtp.session import MailEnvelope, MailSession
from mailrunner.smtp.spool import MessageContent

log = structlog.get_logger("mailrunner.smtp")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class HandlerSettings:
    max_recipients: int


def _valid_text(text: str, what: str, errors: list[str]) -> str:
    """aiosmtpd hands over 8-bit arguments surrogate-escaped; make them valid Unicode."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        errors.append(f"{what}: invalid UTF-8 replaced with U+FFFD")
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return text


def _content_of(envelope: Envelope) -> MessageContent:
    """Our session hands the message over in `MailEnvelope.message` (maybe spooled); a plain
    aiosmtpd envelope only has its bytes."""
    if isinstance(envelope, MailEnvelope) and envelope.message is not None:
        return envelope.message
    return MessageContent.in_memory(envelope.original_content or b"")


class SmtpHandler:
    """The aiosmtpd handler of every connection; with `hooks`, worker code may refuse each
    stage (after the handler's own checks, before the envelope changes)."""

    def __init__(
        self,
        settings: HandlerSettings,
        builder: EventBuilder,
        delivery: Delivery,
        metrics: Metrics,
        *,
        hooks: SessionHooks | None = None,
    ) -> None:
        self._settings = settings
        self._builder = builder
        self._delivery = delivery
        self._metrics = metrics
        self._hooks = hooks

    async def handle_CONNECT(self, server: Any, session: MailSession) -> str | None:
        """None to greet the client, else the reply it gets instead (the connection then
        closes); the SMTP session calls this once the connection is admitted."""
        return None if self._hooks is None else await self._hooks.at_connect(session)

    async def handle_HELO(
        self, server: Any, session: MailSession, envelope: Any, hostname: str
    ) -> str:
        if _CONTROL.search(hostname):
            return replies.R501_BAD_HELO
        if self._hooks is not None and (refusal := await self._hooks.at_helo(session, hostname)):
            return refusal
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_EHLO(
        self, server: Any, session: MailSession, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        """Control characters would end up in the Received: header, so refuse them.

        With AUTH off aiosmtpd still lists an empty `250-AUTH`: the connection's settings
        (`server.settings`, the one AUTH setting) say whether to keep it."""
        if _CONTROL.search(hostname):
            session.host_name = None
            return [replies.R501_BAD_HELO]
        session.host_name = None  # aiosmtpd set it; the hook sees the earlier one, if any
        if self._hooks is not None and (refusal := await self._hooks.at_helo(session, hostname)):
            return [refusal]
        session.host_name = hostname
        kept = [
            line
            for line in responses
            if server.settings.auth.mode != "off" or not line.startswith("250-AUTH")
        ]
        kept.insert(1, "250-PIPELINING")
        return kept

    async def handle_MAIL(
        self, server: Any, session: MailSession, envelope: Any, address: str, options: list[str]
    ) -> str:
        if _CONTROL.search(address):
            return replies.R553_BAD_ADDRESS
        if self._hooks is not None and (
            refusal := await self._hooks.at_mail(session, envelope, address, options)
        ):
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return replies.R250_SENDER_OK

    async def handle_RCPT(
        self, server: Any, session: MailSession, envelope: Any, address: str, options: list[str]
    ) -> str:
        if _CONTROL.search(address):
            return replies.R553_BAD_ADDRESS
        if len(envelope.rcpt_tos) >= self._settings.max_recipients:
            return replies.R452_TOO_MANY_RECIPIENTS
        if self._hooks is not None and (
            refusal := await self._hooks.at_rcpt(session, envelope, address)
        ):
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return replies.R250_RECIPIENT_OK

    async def handle_DATA(self, server: Any, session: MailSession, envelope: Envelope) -> str:
        started = time.perf_counter()
        arrival = self._arrival(session, envelope)
        try:
            event = await self._builder.build(arrival, _content_of(envelope))
        except StorageError as error:
            log.warning("message not stored", uuid=arrival.connection_id, reason=str(error))
            return replies.R451_TEMP
        refusal = await self._data_refusal(session, envelope, event)
        if refusal is not None:
            return refusal
        try:
            outcome = await self._delivery.deliver(event)
        except (MailrunnerError, TimeoutError) as error:
            log.error(
                "delivery failed",
                uuid=arrival.connection_id,
                id=arrival.event_id,
                reason=f"{type(error).__name__}: {error}",
            )
            return replies.R451_TEMP
        if not isinstance(outcome, Outcome):  # the worker refused it
            await self._discard(event, outcome.line, "worker")
            return outcome.line
        session.messages += 1
        self._metrics.accepted(event.envelope.size, time.perf_counter() - started)
        if outcome is Outcome.ACCEPTED_CLOSE:
            session.close_after_reply = True
        log.info(
            "message accepted",
            uuid=arrival.connection_id,
            id=arrival.event_id,
            mail_from=arrival.mail_from,
            recipients=len(arrival.rcpt_to),
            size=event.envelope.size,
            delivered_to=self._delivery.destination,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return replies.queued(arrival.event_id)

    async def _data_refusal(
        self, session: MailSession, envelope: Any, event: EmailEvent
    ) -> str | None:
        """The `data` hook's refusal, after which the message goes nowhere."""
        if self._hooks is None or not self._hooks.runs("data"):
            return None
        refusal = await self._hooks.at_data(session, envelope, event.to_json())
        if refusal is not None:
            await self._discard(event, refusal, "data hook")
        return refusal

    async def _discard(self, event: EmailEvent, reply: str, refused_by: str) -> None:
        """A refused message is nowhere: nothing may point at its attachment files."""
        storage = self._builder.storage
        if isinstance(storage, TempfileStorage) and event.has_files:
            await asyncio.to_thread(storage.remove, event.id)
        log.info("message refused", uuid=event.uuid, id=event.id, by=refused_by, reply=reply)

    async def handle_exception(self, error: Exception) -> str:
        """A failed TLS handshake is the client's doing (aiosmtpd closes that connection);
        anything else here is a bug of ours, logged with its traceback."""
        if isinstance(error, TLSSetupException):
            log.info("TLS handshake failed", reason=repr(error.__cause__))
        else:
            log.error("internal error in SMTP session", exc_info=error)
        return replies.R451_TEMP

    def _arrival(self, session: MailSession, envelope: Any) -> Arrival:
        errors: list[str] = []
        mail_from = sender(envelope.mail_from)
        return Arrival(
            event_id=event_id(),
            connection_id=session.connection_id,
            remote_addr=session.remote_addr,
            remote_host=session.remote_host,
            received_at=datetime.now(UTC),
            helo=_valid_text(session.host_name or "", "HELO", errors),
            esmtp=bool(session.extended_smtp),
            mail_from=_valid_text(mail_from, "MAIL FROM", errors),
            rcpt_to=tuple(_valid_text(r, "RCPT TO", errors) for r in envelope.rcpt_tos),
            authentication=session.auth,
            errors=tuple(errors),
            tls=session.ssl is not None,
        )
