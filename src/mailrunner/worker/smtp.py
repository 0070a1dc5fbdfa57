"""Serve the legacy SMTP worker pool (`smtp.use_jobs: false`): one event in, one decision out.

The SMTP session waits for the answer, so the handler runs while a client is connected: keep
it short, and hand slow work to a queue (or switch the server to the jobs path).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable

from mailrunner.wire.protocol import SMTP_MODE
from mailrunner.wire.smtp import CLOSE, CONTINUE, DECISIONS, encode_decision
from mailrunner.worker.event import Email
from mailrunner.worker.relay import Worker, require_mode, warn

__all__ = ["CLOSE", "CONTINUE", "EmailHandler", "handle_emails"]

EmailHandler = Callable[[Email], str | None]
"""Returns CONTINUE, CLOSE, or None (= CONTINUE)."""


def handle_emails(handler: EmailHandler, *, worker: Worker | None = None) -> None:
    """Call `handler` for every email the server delivers, until it asks the worker to stop.

    Takes stdout for the relay (see `mailrunner.worker.relay`): after this call starts,
    `print()` goes to stderr. An exception in `handler` is logged to stderr with its traceback
    and answered with an ERROR frame, so that client gets 451 4.3.0 and may retry, while this
    worker keeps serving the next message.
    """
    require_mode(SMTP_MODE, "handle_emails()")
    relay = worker if worker is not None else Worker.from_stdio()
    while (payload := relay.wait_payload()) is not None:
        _serve_one(relay, handler, payload.context)


def _serve_one(relay: Worker, handler: EmailHandler, context: bytes) -> None:
    try:
        decision = _decide(handler, Email.from_json(context))
    except Exception as exc:  # any handler bug becomes a 451, not a dead worker
        warn("email handler failed; the SMTP client gets 451 4.3.0 and may retry")
        traceback.print_exc()
        relay.error(f"{type(exc).__name__}: {exc}")
        return
    relay.respond(encode_decision(decision))


def _decide(handler: EmailHandler, event: Email) -> str:
    decision = handler(event)
    if decision is None:
        return CONTINUE
    if decision not in DECISIONS:
        raise ValueError(f"email handler returned {decision!r}; expected CONTINUE, CLOSE or None")
    return decision
