"""A worker for pool tests: the email's subject says how to (mis)behave.

`ok` (or anything unknown) logs "<event id> <pid>" to $BEHAVIOUR_LOG and answers CONTINUE;
`close` answers CLOSE; `fail` raises; `answer:X` answers X; `body` answers CONTINUE with a
body; `exit` dies; `hang` never
answers; `badcrc`, `truncated` and `huge` write a corrupt frame; `nooptions` and `control`
write a well-formed frame that is no answer to a payload. With $IGNORE_STOP set the worker
ignores the server's stop request.
"""

from __future__ import annotations

import os
import struct
import sys
import time
import zlib

from mailrunner.wire.frame import Flag, Frame, write_frame
from mailrunner.worker import Email, Worker

LOG = os.environ.get("BEHAVIOUR_LOG", "")


def record(line: str) -> None:
    if LOG:
        with open(LOG, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


def header(length: int, crc_ok: bool = True) -> bytes:
    fixed = struct.pack("<BBI", 0x13, 0x04, length)
    crc = zlib.crc32(fixed) if crc_ok else zlib.crc32(fixed) ^ 0xFFFF
    return fixed + struct.pack("<I", crc) + b"\x00\x00" + struct.pack("<I", 0)


def corrupt(out: object, kind: str) -> None:
    assert hasattr(out, "write")
    assert hasattr(out, "flush")
    if kind == "badcrc":
        out.write(header(8, crc_ok=False) + b"CONTINUE")
    elif kind == "truncated":
        out.write(header(100) + b"CONT")
        out.flush()
        os._exit(0)
    elif kind == "huge":
        out.write(header(0xFFFFFFF0))
    elif kind == "nooptions":
        write_frame(out, Frame(flags=Flag.CODEC_RAW, payload=b"CONTINUE"))
    elif kind == "control":
        write_frame(out, Frame(flags=Flag.CONTROL | Flag.CODEC_JSON, payload=b"{}", options=(0,)))
    out.flush()


def serve() -> None:
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    worker = Worker(sys.stdin.buffer, out)
    record(f"started {os.getpid()}")
    while (payload := worker.wait_payload()) is not None:
        email = Email.from_json(payload.context)
        subject = email.message.subject
        if subject == "exit":
            os._exit(3)
        if subject == "hang":
            time.sleep(3600)
        if subject in ("badcrc", "truncated", "huge", "nooptions", "control"):
            corrupt(out, subject)
            continue
        if subject == "fail":
            worker.error("the handler failed on purpose")
            continue
        if subject.startswith("answer:"):
            worker.respond(subject.removeprefix("answer:").encode())
            continue
        if subject == "body":
            worker.respond(b"CONTINUE", b"unexpected body")
            continue
        record(f"{email.id} {os.getpid()}")
        worker.respond(b"CLOSE" if subject == "close" else b"CONTINUE")
    if os.environ.get("IGNORE_STOP"):
        time.sleep(3600)


if __name__ == "__main__":
    serve()
