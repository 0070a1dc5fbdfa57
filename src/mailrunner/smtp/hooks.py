"""The SMTP side of `smtp.hooks`: the session as a hook's context, and its verdict as a reply.

`SessionHooks` is what the handler asks at each stage, after the fault rules (they act in
`protocol.py` before the handler is called) and before the handler changes the envelope or
delivers: a refusal leaves the session as it was, so a refused recipient is not in
`envelope.to`. Stages not listed in `smtp.hooks` cost nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mailrunner.pool.hooks import HookRunner
from mailrunner.smtp import replies
from mailrunner.smtp.addresses import sender
from mailrunner.smtp.session import MailSession
from mailrunner.wire.hooks import AUTH_STAGE, HookAuth, HookContext, HookName


def _unicode(text: str) -> str:
    """aiosmtpd hands over 8-bit arguments surrogate-escaped; hooks get valid Unicode."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def session_context(stage: HookName, session: MailSession, envelope: Any) -> HookContext:
    """What the session has settled so far; the stage's own argument is added by the caller."""
    auth = session.auth
    hook_auth = None if auth is None else HookAuth(auth.username, verified=bool(auth.verified))
    mail_from = getattr(envelope, "mail_from", None)
    return HookContext(
        hook=stage,
        uuid=session.connection_id,
        remote_addr=session.remote_addr,
        helo=None if session.host_name is None else _unicode(session.host_name),
        auth=hook_auth,
        mail_from=None if mail_from is None else _unicode(sender(mail_from)),
        mail_options=tuple(_unicode(o) for o in getattr(envelope, "mail_options", ())),
        recipients=tuple(_unicode(r) for r in getattr(envelope, "rcpt_tos", ())),
    )


class SessionHooks:
    """Asks `runner` at its stages; each method returns None (go on) or the reply line."""

    def __init__(self, runner: HookRunner) -> None:
        self._runner = runner

    async def at_connect(self, session: MailSession) -> str | None:
        return await self._ask(session_context("connect", session, None))

    async def at_helo(self, session: MailSession, hostname: str) -> str | None:
        context = session_context("helo", session, None)
        return await self._ask(dataclasses.replace(context, helo=_unicode(hostname)))

    async def at_mail(
        self, session: MailSession, envelope: Any, address: str, options: list[str]
    ) -> str | None:
        context = dataclasses.replace(
            session_context("mail", session, envelope),
            mail_from=_unicode(sender(address)),
            mail_options=tuple(_unicode(o) for o in options),
        )
        return await self._ask(context)

    async def at_rcpt(self, session: MailSession, envelope: Any, address: str) -> str | None:
        context = session_context("rcpt", session, envelope)
        return await self._ask(dataclasses.replace(context, rcpt=_unicode(address)))

    async def at_data(self, session: MailSession, envelope: Any, event_json: bytes) -> str | None:
        """`event_json` is the event as it will be delivered: the hook's body."""
        return await self._ask(session_context("data", session, envelope), event_json)

    async def at_auth(self, session: MailSession, username: str, password: str) -> str | None:
        """`smtp.auth.mode: hook`: the worker checks the credentials; only this stage's context
        carries the password."""
        context = dataclasses.replace(
            session_context(AUTH_STAGE, session, None),
            auth=HookAuth(username=username, verified=False),
            password=password,
        )
        # asked whatever `runs` says, and failing closed whatever `hooks_on_error` says: an
        # auth stage left unasked or accepted on a failure would let everyone in
        reply = await self._runner.verdict(context, on_error=replies.TEMPORARY_FAILURE)
        return None if reply is None else reply.line

    def runs(self, stage: HookName) -> bool:
        """Whether `stage` is asked: the handler builds the event JSON for `data` only then."""
        return self._runner.runs(stage)

    async def _ask(self, context: HookContext, body: bytes = b"") -> str | None:
        if not self._runner.runs(context.hook):
            return None
        reply = await self._runner.verdict(context, body)
        return None if reply is None else reply.line
