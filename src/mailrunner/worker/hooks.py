"""Verdicts from application code: subclass `Hooks` and override the stages you listed in
`smtp.hooks`; each method returns None (the command goes on) or a `Reply` that refuses it.

    from mailrunner.worker import Hooks, Reply, serve

    class MyHooks(Hooks):
        def on_rcpt(self, context):
            if context.rcpt != "alice@example.com":
                return Reply(550, "5.1.1", "No such user")
            return None

    serve(hooks=MyHooks(), emails=on_email)

The SMTP client waits for the verdict (at most `smtp.hooks_timeout`, after which the worker is
killed): decide from memory or a fast lookup. A method that raises answers the client
`451 4.3.0` (or accepts, with `smtp.hooks_on_error: accept`) and the worker keeps serving.
"""

from __future__ import annotations

from mailrunner.wire.errors import BadContext
from mailrunner.wire.hooks import (
    WRONG_CREDENTIALS,
    HookAuth,
    HookContext,
    Reply,
    decode_context,
    encode_verdict,
)
from mailrunner.worker.errors import ProtocolError
from mailrunner.worker.event import Email

__all__ = ["WRONG_CREDENTIALS", "HookAuth", "HookContext", "Hooks", "Reply", "answer_hook"]


class Hooks:
    """Accepts at every stage; override the stages to decide on.

    A stage the server does not list in `smtp.hooks` is never called. `context` is the session
    so far (`HookContext`): `remote_addr` and `uuid` from `on_connect` on, `helo`, `auth`,
    `mail_from` and `mail_options` as the client sends them, `rcpt` at `on_rcpt`, and the
    `recipients` accepted so far.
    """

    def on_connect(self, context: HookContext) -> Reply | None:
        """Before the greeting: a refusal here is the client's greeting."""
        return None

    def on_helo(self, context: HookContext) -> Reply | None:
        return None

    def on_auth(self, context: HookContext) -> Reply | None:
        """`smtp.auth.mode: hook`: decide on `context.auth.username` and `context.password`
        (this stage's context alone carries it; never log it). None authenticates the
        session; refuse wrong credentials with `Reply(535, "5.7.8", "Authentication
        credentials invalid")`. A raising method refuses (451 4.3.0), even with
        `smtp.hooks_on_error: accept`. Refuses by default: a server in hook mode whose
        workers forgot this method lets nobody in rather than everybody."""
        return WRONG_CREDENTIALS

    def on_mail(self, context: HookContext) -> Reply | None:
        return None

    def on_rcpt(self, context: HookContext) -> Reply | None:
        """Per recipient: refused ones are left out of the message's `envelope.to`."""
        return None

    def on_data(self, context: HookContext, email: Email) -> Reply | None:
        """After the whole message arrived, before it is delivered or pushed: a refused message
        goes nowhere."""
        return None


def answer_hook(hooks: Hooks, context: bytes, body: bytes) -> bytes:
    """The verdict context for one hook frame; `ProtocolError` when the frame is unreadable."""
    try:
        hook = decode_context(context)
    except BadContext as exc:
        raise ProtocolError(str(exc)) from exc
    if hook.hook == "data":
        return encode_verdict(_checked(hooks.on_data(hook, Email.from_json(body))))
    if body:
        raise ProtocolError(f"a {hook.hook} hook carries no body, got {len(body)} bytes")
    method = {
        "connect": hooks.on_connect,
        "helo": hooks.on_helo,
        "auth": hooks.on_auth,
        "mail": hooks.on_mail,
        "rcpt": hooks.on_rcpt,
    }[hook.hook]
    return encode_verdict(_checked(method(hook)))


def _checked(verdict: object) -> Reply | None:
    if verdict is not None and not isinstance(verdict, Reply):
        raise TypeError(f"a hook returned {verdict!r}; expected a Reply or None")
    return verdict
