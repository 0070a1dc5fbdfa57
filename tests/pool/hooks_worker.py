"""A worker for hook tests, written with the SDK: the address says how to (mis)behave.

Hooks: connect → 554 5.7.1 with $REFUSE_CONNECT set; HELO `refused.example` → 550 5.7.1;
MAIL FROM `blocked@…` → 550 5.7.1; RCPT `bob@…` → 550 5.1.1, `slow@…` answers 550
only after $SLOW_SECONDS (default 3), `crash@…` dies, `raise@…` raises, `raw-<name>@…`
answers the raw context RAW[name] (no verdict the SDK would write); DATA of a message over
$MAX_SIZE bytes → 552 5.3.4. Emails: subject `spam` → 554 5.7.1, else CONTINUE. Each hook
call appends "<stage> <pid>" to $HOOKS_LOG.
"""

from __future__ import annotations

import os
import sys
import time

from mailrunner.worker import CONTINUE, Email, HookContext, Hooks, Reply, Worker, serve

LOG = os.environ.get("HOOKS_LOG", "")
RAW = {
    "2xx": b'{"code":250,"enhanced":"2.0.0","text":"OK"}',
    "continue": b"CONTINUE",
    "huge": b'{"code":550,"enhanced":"5.1.1","text":"' + b"x" * 100_000 + b'"}',
}


def record(stage: str) -> None:
    if LOG:
        with open(LOG, "a", encoding="utf-8") as handle:
            handle.write(f"{stage} {os.getpid()}\n")


class TestHooks(Hooks):
    def __init__(self, relay: Worker) -> None:
        self._relay = relay

    def on_connect(self, context: HookContext) -> Reply | None:
        record("connect")
        return Reply(554, "5.7.1", "Not welcome") if os.environ.get("REFUSE_CONNECT") else None

    def on_helo(self, context: HookContext) -> Reply | None:
        record("helo")
        return Reply(550, "5.7.1", "Bad HELO") if context.helo == "refused.example" else None

    def on_mail(self, context: HookContext) -> Reply | None:
        record("mail")
        if (context.mail_from or "").startswith("blocked@"):
            return Reply(550, "5.7.1", "Sender blocked")
        return None

    def on_rcpt(self, context: HookContext) -> Reply | None:
        record("rcpt")
        user = (context.rcpt or "").partition("@")[0]
        if user == "slow":
            time.sleep(float(os.environ.get("SLOW_SECONDS", "3")))
        if user == "crash":
            os._exit(3)
        if user == "raise":
            raise RuntimeError("the hook failed on purpose")
        if user.startswith("raw-"):
            # a reply no SDK call writes: straight onto the relay, then accept nothing more
            self._relay.respond(RAW[user.removeprefix("raw-")])
            raise _Answered
        if user in ("bob", "slow"):
            return Reply(550, "5.1.1", "No such user")
        return None

    def on_data(self, context: HookContext, email: Email) -> Reply | None:
        record("data")
        if email.envelope.size > int(os.environ.get("MAX_SIZE", "1000000")):
            return Reply(552, "5.3.4", "Message too big for this mailbox")
        return None


class _Answered(Exception):
    """Raised after a raw answer, so serve() sends nothing more for this frame."""


def on_email(email: Email) -> str | Reply:
    return Reply(554, "5.7.1", "Spam") if email.message.subject == "spam" else CONTINUE


class _RawRelay(Worker):
    """The process's relay, except that the error frame after a raw answer is not sent."""

    def error(self, message: str) -> None:
        if not message.startswith("_Answered"):
            super().error(message)


if __name__ == "__main__":
    relay = _RawRelay(sys.stdin.buffer, os.fdopen(os.dup(1), "wb"))
    os.dup2(2, 1)
    serve(
        hooks=TestHooks(relay) if not os.environ.get("NO_HOOKS") else None,
        emails=on_email,
        worker=relay,
    )
