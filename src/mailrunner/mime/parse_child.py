"""The parse child: `python -m mailrunner.mime.parse_child`, started by `ParseProcesses`.

It parses the messages its parent writes to its stdin and writes each result to its stdout,
in order, until stdin ends. It reads nothing else: no configuration file, no network, no
signals (the parent ends it by closing the pipe, so a Ctrl-C in the server's terminal does
not kill it half way through a reply).
"""

from __future__ import annotations

import enum
import pickle
import signal
import struct
import sys
from typing import BinaryIO

from mailrunner.events import Address
from mailrunner.mime.parse import ParsedMessage, ParsedPart, ParseOptions, parse

REQUEST = struct.Struct("!QI")
"""Before each message the parent writes: its number, its size."""
REPLY = struct.Struct("!QBI")
"""Before each result the child writes: the message's number, a `ReplyStatus`, the size."""


class ReplyStatus(enum.IntEnum):
    PARSED = 0
    """A pickled `ParsedMessage` follows."""
    FAILED = 1
    """The parse raised; its repr follows, in UTF-8."""
    READY = 2
    """Numbered 0, nothing follows: the options are read, messages are welcome."""


def packed(parsed: ParsedMessage) -> bytes:
    """The parse as a pickle of plain values: the parent unpickles it on its event loop, and
    slotted dataclasses (`Address`, `ParsedPart`) cost twice as much to unpickle (1 KB
    message: 7.2 us, 3.5 us this way). Only an in-memory parse comes here, so no part's body
    was left in a file."""
    addresses = [
        [(address.email, address.name) for address in field]
        for field in (parsed.from_, parsed.to, parsed.cc, parsed.reply_to)
    ]
    parts = []
    for part in parsed.attachments:
        assert part.body is None, "a child parses messages in memory only"
        parts.append((part.filename, part.content_type, part.content, part.content_id, part.inline))
    values = (parsed.message_id, parsed.subject, addresses, parsed.headers, parsed.body)
    rest = (parsed.html_body, parts, parsed.parse_errors)
    return pickle.dumps((*values, *rest), protocol=5)


def unpacked(data: bytes) -> ParsedMessage:
    """`packed`'s parse again, in the parent."""
    message_id, subject, addresses, headers, body, html_body, parts, errors = pickle.loads(data)
    from_, to, cc, reply_to = ([Address(*pair) for pair in field] for field in addresses)
    return ParsedMessage(
        message_id=message_id,
        subject=subject,
        from_=from_,
        to=to,
        cc=cc,
        reply_to=reply_to,
        headers=headers,
        body=body,
        html_body=html_body,
        attachments=[ParsedPart(*values) for values in parts],
        parse_errors=errors,
    )


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    """`size` bytes, or None when the stream ends first (the parent went away)."""
    data = stream.read(size)
    return data if len(data) == size else None


def serve(requests: BinaryIO, replies: BinaryIO) -> None:
    """The options first (pickled), then messages."""
    header = _read_exactly(requests, REQUEST.size)
    if header is None:
        return
    _, size = REQUEST.unpack(header)
    options_data = _read_exactly(requests, size)
    if options_data is None:
        return
    options: ParseOptions = pickle.loads(options_data)
    _reply(replies, 0, ReplyStatus.READY, b"")
    while (header := _read_exactly(requests, REQUEST.size)) is not None:
        number, size = REQUEST.unpack(header)
        raw = _read_exactly(requests, size)
        if raw is None:
            return
        try:
            status, reply = ReplyStatus.PARSED, packed(parse(raw, options))
        except Exception as error:  # parse never raises; should it, the parent parses again
            status, reply = ReplyStatus.FAILED, repr(error).encode("utf-8", "replace")
        _reply(replies, number, status, reply)


def _reply(replies: BinaryIO, number: int, status: ReplyStatus, data: bytes) -> None:
    replies.write(REPLY.pack(number, status, len(data)))
    replies.write(data)
    replies.flush()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serve(sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main()
