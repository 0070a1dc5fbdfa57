"""A worker for the legacy pool path (`smtp.use_jobs: false`): print one line per email.

Run by the server (see examples/pool.yaml); print() goes to stderr, which the server logs
with this worker's pid.
"""

from mailrunner.worker import CONTINUE, Email, handle_emails


def show(email: Email) -> str:
    attachments = ", ".join(
        f"{a.filename or '(unnamed)'} ({a.size} bytes)" for a in email.attachments
    )
    print(
        f"from={email.envelope.from_} to={','.join(email.envelope.to)} "
        f"subject={email.message.subject!r} attachments=[{attachments}]"
    )
    return CONTINUE


if __name__ == "__main__":
    handle_emails(show)
