"""Whatever DATA a sender produces, the SMTP handler answers 250 and delivers an event that
matches the schema: the parser never raises and never refuses (issue #11).

Run in-process through the same handler, event builder and storage the server uses, with a
recording delivery instead of sockets, so hypothesis can try many messages quickly.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiosmtpd.smtp import Envelope
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mime_grammar import messages

from mailrunner.metrics import Metrics
from mailrunner.mime.attachments import MemoryStorage
from mailrunner.mime.build import EventBuilder
from mailrunner.mime.parse import ParseOptions
from mailrunner.smtp.handler import HandlerSettings, SmtpHandler
from mailrunner.smtp.session import MailSession
from support.server import RecordingDelivery

METRICS = Metrics()
limits = st.builds(
    ParseOptions,
    max_depth=st.sampled_from([1, 2, 50]),
    max_parts=st.sampled_from([1, 3, 1000]),
    max_header_bytes=st.sampled_from([64, 1024 * 1024]),
)


async def handle_data(raw: bytes, options: ParseOptions) -> tuple[str, list[dict[str, Any]]]:
    """DATA through `SmtpHandler.handle_DATA`, as aiosmtpd hands it over after the dot."""
    delivery = RecordingDelivery()
    builder = EventBuilder(
        hostname="mx.test",
        options=options,
        storage=MemoryStorage(),
        include_raw=True,
        offload_bytes=1 << 30,
    )
    handler = SmtpHandler(HandlerSettings(max_recipients=100), builder, delivery, METRICS)
    session = MailSession(asyncio.get_running_loop())
    session.peer = ("127.0.0.1", 2525)
    session.host_name = "client.example"
    session.extended_smtp = True
    envelope = Envelope()
    envelope.mail_from = "a@example.com"
    envelope.rcpt_tos = ["b@example.com"]
    envelope.content = envelope.original_content = raw
    reply = await handler.handle_DATA(None, session, envelope)
    return reply, delivery.events


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages(), limits)
def test_any_data_is_answered_250_with_a_schema_valid_event(
    raw: bytes, options: ParseOptions
) -> None:
    reply, events = asyncio.run(handle_data(raw, options))
    assert reply.startswith("250 2.0.0 OK: queued as "), reply
    (event,) = events  # RecordingDelivery checked it against email_received.v1.json
    assert event["envelope"]["size"] == len(raw)
    for attachment in event["attachments"]:
        assert not attachment["content_type"].startswith("multipart/"), (
            "a multipart container is never an attachment"
        )
