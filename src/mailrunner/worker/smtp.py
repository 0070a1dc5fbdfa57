"""Serve the SMTP worker pool: hook verdicts (`smtp.hooks`) and, on the legacy path
(`smtp.use_jobs: false`), one event in, one decision out.

The SMTP session waits for every answer, so handlers run while a client is connected: keep
them short, and hand slow work to a queue (or switch the server to the jobs path).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable

from mailrunner.wire.hooks import Reply, encode_reply, is_hook_context
from mailrunner.wire.protocol import SMTP_MODE
from mailrunner.wire.smtp import CLOSE, CONTINUE, DECISIONS, encode_decision
from mailrunner.worker.errors import ProtocolError
from mailrunner.worker.event import Email
from mailrunner.worker.hooks import Hooks, answer_hook
from mailrunner.worker.relay import Payload, Worker, require_mode, warn

__all__ = ["CLOSE", "CONTINUE", "EmailHandler", "handle_emails", "serve"]

EmailHandler = Callable[[Email], str | Reply | None]
"""Returns CONTINUE, CLOSE, None (= CONTINUE), or a `Reply` that refuses the message."""


def serve(
    hooks: Hooks | None = None,
    emails: EmailHandler | None = None,
    *,
    worker: Worker | None = None,
) -> None:
    """Answer the SMTP pool until the server asks this worker to stop: hook frames with
    `hooks`, emails with `emails` (give the ones your configuration sends).

    Takes stdout for the relay (see `mailrunner.worker.relay`): after this call starts,
    `print()` goes to stderr. An exception in a handler is logged to stderr with its traceback
    and answered with an ERROR frame, so that client gets 451 4.3.0 and may retry, while this
    worker keeps serving.
    """
    if hooks is None and emails is None:
        raise TypeError("serve() needs hooks=, emails= or both")
    require_mode(SMTP_MODE, "serve()")
    relay = worker if worker is not None else Worker.from_stdio()
    while (payload := relay.wait_payload()) is not None:
        _serve_one(relay, hooks, emails, payload)


def handle_emails(handler: EmailHandler, *, worker: Worker | None = None) -> None:
    """Call `handler` for every email the server delivers: `serve(emails=handler)`."""
    require_mode(SMTP_MODE, "handle_emails()")  # the error names the call the script made
    serve(emails=handler, worker=worker)


def _serve_one(
    relay: Worker, hooks: Hooks | None, emails: EmailHandler | None, payload: Payload
) -> None:
    hook = is_hook_context(payload.context)
    try:
        answer = _hook_answer(hooks, payload) if hook else _email_answer(emails, payload)
    except Exception as exc:  # any handler bug becomes a 451, not a dead worker
        what = "hook" if hook else "email handler"
        warn(f"{what} failed; the SMTP client gets 451 4.3.0 and may retry")
        traceback.print_exc()
        relay.error(f"{type(exc).__name__}: {exc}")
        return
    relay.respond(answer)


def _hook_answer(hooks: Hooks | None, payload: Payload) -> bytes:
    if hooks is None:
        raise ProtocolError("the server sent a hook (smtp.hooks), but serve() got no hooks=")
    return answer_hook(hooks, payload.context, payload.body)


def _email_answer(emails: EmailHandler | None, payload: Payload) -> bytes:
    if emails is None:
        raise ProtocolError(
            "the server sent an email (smtp.use_jobs: false), but serve() got no emails="
        )
    decision = emails(Email.from_json(payload.context))
    if decision is None:
        return encode_decision(CONTINUE)
    if isinstance(decision, Reply):
        return encode_reply(decision)
    if decision not in DECISIONS:
        raise ValueError(
            f"email handler returned {decision!r}; expected CONTINUE, CLOSE, a Reply or None"
        )
    return encode_decision(decision)
