"""A jobs consumer for `smtp.email` jobs: print one line per email, then ack it.

Run by the server's jobs pool (see examples/mailrunner.yaml); print() goes to stderr,
which the server logs with this worker's pid. A job that raises is nacked and retried.
"""

import traceback

from mailrunner.worker import Consumer, Email, emails


def show(email: Email) -> None:
    attachments = ", ".join(
        f"{a.filename or '(unnamed)'} ({a.size} bytes)" for a in email.attachments
    )
    print(
        f"from={email.envelope.from_} to={','.join(email.envelope.to)} "
        f"subject={email.message.subject!r} attachments=[{attachments}]"
    )


if __name__ == "__main__":
    for task, email in emails(Consumer()):
        try:
            show(email)
        except Exception as error:
            traceback.print_exc()
            task.nack(f"{type(error).__name__}: {error}", requeue=True, delay=5)
        else:
            task.ack()
