"""Deciding SMTP replies in your own code (`smtp.hooks`): refuse unknown recipients, blocked
senders and oversized messages while the client is still connected.

Run by the server's SMTP pool (see examples/hooks.yaml). Each method answers None (go on) or
a Reply, which the client gets as is: `550 5.1.1 No such user`. Keep them fast: the client
waits, and a hook slower than `smtp.hooks_timeout` is killed (the client gets 451 4.3.0).
print() goes to stderr, which the server logs with this worker's pid.
"""

from __future__ import annotations

from mailrunner.worker import CONTINUE, Email, HookContext, Hooks, Reply, serve

MAILBOXES = frozenset({"alice@example.com", "carol@example.com"})
"""Who receives mail here; anyone else is refused at RCPT, one recipient at a time."""
BLOCKED_SENDERS = frozenset({"spammer@example.net"})
BLOCKED_DOMAINS = frozenset({"junk.example"})
MAX_SIZE = 1024 * 1024
"""Larger messages are refused after DATA (the SIZE= a client announces is not trusted)."""


class MailboxHooks(Hooks):
    def on_mail(self, context: HookContext) -> Reply | None:
        sender = (context.mail_from or "").lower()
        if sender in BLOCKED_SENDERS or sender.rpartition("@")[2] in BLOCKED_DOMAINS:
            return Reply(550, "5.7.1", "Sender blocked")
        return None

    def on_rcpt(self, context: HookContext) -> Reply | None:
        if (context.rcpt or "").lower() not in MAILBOXES:
            return Reply(550, "5.1.1", "No such user")
        return None

    def on_data(self, context: HookContext, email: Email) -> Reply | None:
        if email.envelope.size > MAX_SIZE:
            return Reply(552, "5.3.4", f"Messages here are at most {MAX_SIZE} bytes")
        return None


def deliver(email: Email) -> str:
    """Only messages every hook accepted get here (the pool path, `use_jobs: false`)."""
    print(f"for {','.join(email.envelope.to)}: {email.message.subject!r}")
    return CONTINUE


if __name__ == "__main__":
    serve(hooks=MailboxHooks(), emails=deliver)
