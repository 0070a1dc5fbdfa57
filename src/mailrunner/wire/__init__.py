"""The worker wire protocol, the one place both ends of the relay read it from.

The server (pools, the jobs consumer, SMTP delivery) and the worker SDK (`mailrunner.worker`)
import this package and nothing of each other, so it uses the standard library only::

    frame.py      goridge v3 frames: header, CRC, options, CONTROL frames, blocking I/O
    protocol.py   names both ends spell the same: MAILRUNNER_MODE and its values, the
                  event name and version, the `smtp.email` job name
    smtp.py       SMTP pool payloads: event out, CONTINUE / CLOSE (or a refusal) back
    hooks.py      SMTP hook payloads: the session so far out, ACCEPT or a 4xx/5xx reply back
    jobs.py       jobs pool payloads: job context out, ack / nack / requeue answer back
    context.py    a context that is a JSON object (a job's, a hook's), read field by field
    event.py      the EMAIL_RECEIVED event's parts (Address, Envelope, Message, Attachment)
                  that the server builds and encodes and the SDK reads back
    errors.py     WireError, which each side turns into its own errors at its edge

A new frame kind gets a module of its own beside smtp.py, hooks.py and jobs.py.
"""
