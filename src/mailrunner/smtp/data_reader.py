"""DATA read in large chunks into one buffer, within a memory budget shared by all sessions.

aiosmtpd 1.4.6 collects DATA with one `readuntil` and one bytearray per line, so a client
sending millions of short lines makes the server hold about 28 times what it sent. This
reader keeps aiosmtpd's rules exactly (a differential test runs both on the same streams):

- lines end at CRLF only; the data ends at the first line that is exactly `.`, so only
  CRLF.CRLF ends it (also right after `DATA`) and `LF.LF`, `CR.CR`, `LF.CRLF` stay inside;
- a line longer than `SMTP.line_length_limit` octets with its CRLF is refused with 500, and
  the dot-stuffed octets of the lines before the final dot beyond `data_size_limit` with
  552; the first of the two wins. A line of more than limit + 2 octets trips aiosmtpd's
  stream limit before the line is counted, a shorter one is counted first;
- a leading dot is removed from every line (RFC 5321 4.5.2).

Refused or over-budget data is drained to its final dot as it arrives, never buffered. Bytes
a pipelining client sent after the final dot go back into the stream for the next command.

With a spool (`smtp/spool.py`), a message past the spool's threshold moves from the buffer
to a file as it arrives (`Spill`): only what is held in memory counts against the budget.

BDAT's chunks (RFC 3030) are counted, not scanned: `read_chunk` takes exactly the octets a
chunk announces into a `ChunkScanner`, within the same budget and spool.
"""

from __future__ import annotations

import asyncio
import enum
import re
from collections.abc import AsyncIterator
from typing import Protocol, cast

import structlog
from aiosmtpd.smtp import SMTP

from mailrunner.smtp.spool import MessageContent, Spool, SpoolFile

log = structlog.get_logger("mailrunner.smtp")

CHUNK_BYTES = 256 * 1024
"""What one read may take: an asyncio socket transport receives at most 256 KiB at a time."""

LINE_LIMIT = SMTP.line_length_limit
"""Octets of one DATA line with its CRLF (aiosmtpd: 1000 plus a transparency dot)."""

_COUNTED_FIRST = LINE_LIMIT + 2
"""aiosmtpd's StreamReader limit is LINE_LIMIT octets before the CRLF: a line up to this long
is read (and counted against the size limit) before its length is judged."""

_CRLF = b"\r\n"
_FINAL_DOT = b"\r\n.\r\n"
_STUFFED = b"\r\n."
_STUFFED_SEARCH = re.compile(re.escape(_STUFFED)).search
_DOT = b"."
_DOTS_LOOKED_AT = 8
"""Dots of a read `_final_dot` looks at one by one before it searches for CRLF. instead."""
_TAIL = len(_FINAL_DOT) - 1
"""While draining, the octets kept from one chunk to find a final dot split across reads."""


class DataOutcome(enum.Enum):
    """How a DATA transaction ended; anything but COMPLETE left nothing buffered."""

    COMPLETE = "complete"
    TOO_LONG = "line too long"
    TOO_MUCH = "message too big"
    NO_ROOM = "in-flight budget exhausted"
    NO_DISK = "spool write failed"


class InflightBudget:
    """DATA octets held in memory by every session of a server together.

    Owned by the server and shared by its connections on one event loop, so no lock.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0

    @property
    def available(self) -> int:
        return self.capacity - self.held

    def reserve(self, size: int) -> bool:
        """Take `size` octets if they fit; False (and nothing taken) if they do not."""
        if size > self.available:
            return False
        self.held += size
        return True

    def release(self, size: int) -> None:
        self.held -= size


class _HasBuffer(Protocol):
    _buffer: bytearray


def unread(reader: asyncio.StreamReader, data: bytes) -> None:
    """Put `data` back at the front of the stream, to be read before anything newer.

    StreamReader has no public way to do this; its pending bytes are the `_buffer` bytearray
    (CPython 3.4 to 3.13, and aiosmtpd's STARTTLS clears the same attribute).
    """
    cast(_HasBuffer, reader)._buffer[0:0] = data


def _first_long_line(data: bytes, start: int, stop: int) -> int:
    """Where the first line over LINE_LIMIT starts in `data[start:stop]` (whole lines), or -1.

    Each step jumps to the last CRLF within LINE_LIMIT octets, so a run of short lines costs
    one search per LINE_LIMIT octets, not one per line.
    """
    position = start
    while stop - position > LINE_LIMIT:
        last = data.rfind(_CRLF, position, position + LINE_LIMIT)
        if last == -1:
            return position
        position = last + 2
    return -1


def _final_dot(data: bytes) -> tuple[int, bool]:
    """Where the first CRLF.CRLF in `data` starts (-1: none), and whether a line starting
    with a dot comes before it. A final dot starts like a dot-stuffed line, so one search
    finds both: a 100 KB message was scanned twice per read, once for each.

    The first few dots are found with memchr (`bytes.find` of one octet: 1 us for 100 KB)
    and looked at one by one: most reads of a message hold a handful of dots or none (an
    attachment's base64 has none). Past them, `re` finds each CR with memchr and compares;
    `bytes.find` of CRLF. stops at every dot of a text (read of 100 KB: 155 us with two
    finds, 105 with one, 80 with `re`, 5-50 now). Past a stuffed line the final dot is
    found by one more search, never one step per line."""
    position = data.find(_DOT)
    for _ in range(_DOTS_LOOKED_AT):
        if position == -1:
            return -1, False
        if position >= 2 and data.startswith(_CRLF, position - 2):
            break
        position = data.find(_DOT, position + 1)
    else:
        if position == -1:
            return -1, False
        found = _STUFFED_SEARCH(data, max(position - 2, 0))
        if found is None:
            return -1, False
        position = found.start() + 2
    if data.startswith(_CRLF, position + 1):
        return position - 2, False
    return data.find(_FINAL_DOT, position - 2), True


class MessageBuffer:
    """The octets of one message held in memory against the budget, and how it ended so far;
    what DATA's and BDAT's readers share (and what `Spill` moves to the spool)."""

    def __init__(self, size_limit: int | None, budget: InflightBudget) -> None:
        self.outcome = DataOutcome.COMPLETE
        # a message the whole budget cannot hold would get 452 at every retry: too big it is
        self._size_limit = min(size_limit or budget.capacity, budget.capacity)
        self._budget = budget
        self._counted = 0
        self._held = 0
        self._content = bytearray()

    @property
    def draining(self) -> bool:
        """True once the data is refused for good: only its end is looked for."""
        return self.outcome in (DataOutcome.TOO_LONG, DataOutcome.TOO_MUCH, DataOutcome.NO_DISK)

    @property
    def held(self) -> int:
        """The octets of the message held in memory now."""
        return len(self._content)

    def content(self) -> bytes:
        """The message (after a COMPLETE outcome).

        The buffer goes as it is copied, so the handler parses a message held once. Handing
        over a BytesIO's own bytes instead avoids the copy but measured a higher peak for a
        10 MB message (glibc then maps the parser's large buffers afresh).
        """
        content = bytes(self._content)
        self._content = bytearray()
        return content

    def take(self) -> bytearray:
        """Hand over the octets held so far (to the spool) and give them back to the budget."""
        content = self._content
        self.release()
        return content

    def refuse(self, outcome: DataOutcome) -> None:
        """Refuse the message for a reason found outside the scanner; the rest is drained."""
        self._refuse(outcome)

    def release(self) -> None:
        """Give the held octets back to the budget (the message was handed on or refused)."""
        self._budget.release(self._held)
        self._held = 0
        self._content = bytearray()

    def _keep(self, octets: bytes | memoryview) -> None:
        """Hold `octets` if the budget has room for them, else refuse the message (NO_ROOM)."""
        if not self._budget.reserve(len(octets)):
            self._refuse(DataOutcome.NO_ROOM)
            return
        self._held += len(octets)
        self._content += octets

    def _over_size(self, more: int) -> DataOutcome | None:
        if self._size_limit and self._counted + more > self._size_limit:
            return DataOutcome.TOO_MUCH
        return None

    def _refuse(self, outcome: DataOutcome) -> None:
        """The first line or size refusal stands; either one replaces an exhausted budget,
        since that message would be refused again on retry."""
        if not self.draining:
            self.outcome = outcome
        self.release()


class DataScanner(MessageBuffer):
    """The state of one DATA transaction, fed chunk by chunk; pure, no I/O. Its content is
    the message without its transparency dots.

    While the data is acceptable `_carry` is the CRLF that ended the last whole line (at
    first the one that ended the DATA command) plus the line in progress; once refused it is
    only the last few octets, enough to find a final dot that straddles two chunks.
    """

    def __init__(self, size_limit: int | None, budget: InflightBudget) -> None:
        super().__init__(size_limit, budget)
        self._carry = _CRLF

    def feed(self, chunk: bytes) -> bytes | None:
        """Take the next octets; None while the final dot is to come, else what follows it."""
        data = self._carry + chunk
        end, stuffed = _final_dot(data)
        if end != -1:
            if not self.draining:
                self._take(data, end + 2, stuffed)
            return data[end + len(_FINAL_DOT) :]
        if not self.draining:
            last = data.rfind(_CRLF)
            self._take(data, last + 2, stuffed)
            self._carry = data[last:]
            if len(self._carry) - len(_CRLF) > _COUNTED_FIRST:
                self._refuse(DataOutcome.TOO_LONG)
        if self.draining:
            self._carry = data[-_TAIL:]
        return None

    def _take(self, data: bytes, stop: int, stuffed: bool) -> None:
        """Judge and keep the whole lines `data[2:stop]`; `data` starts with a CRLF. Without
        `stuffed` no line of `data` starts with a dot."""
        refusal = self._judge(data, stop)
        if refusal is not None:
            self._refuse(refusal)
            return
        self._counted += stop - 2
        if self.outcome is DataOutcome.NO_ROOM:
            return
        lines = memoryview(data)[2:stop]
        if stuffed:
            lines = memoryview(data[:stop].replace(_STUFFED, _CRLF))[2:]
        self._keep(lines)

    def _judge(self, data: bytes, stop: int) -> DataOutcome | None:
        """The refusal the lines `data[2:stop]` earn in aiosmtpd's order, or None."""
        long_line = _first_long_line(data, 2, stop)
        if long_line == -1:
            return self._over_size(stop - 2)
        before = self._over_size(long_line - 2)
        if before is not None:
            return before
        length = data.find(_CRLF, long_line) + 2 - long_line
        if length <= _COUNTED_FIRST:
            return self._over_size(long_line - 2 + length) or DataOutcome.TOO_LONG
        return DataOutcome.TOO_LONG


class ChunkScanner(MessageBuffer):
    """The chunks of one BDAT transaction (RFC 3030), the message's octets as they are: no
    dots, no line rules, only their count. Lives from the first chunk to the last.

    A chunk that takes the message past the size limit is refused when announced, so it is
    drained without being held; a budget that runs out refuses the message too (NO_ROOM):
    a BDAT refusal ends the transaction, so there is no later chunk to judge.
    """

    def begin(self, size: int) -> None:
        """A chunk of `size` octets is announced."""
        if self.outcome is DataOutcome.COMPLETE and (refusal := self._over_size(size)):
            self._refuse(refusal)
        self._counted += size

    def feed(self, piece: bytes) -> None:
        """Take the next octets of the announced chunk (never more than it has left)."""
        if self.outcome is DataOutcome.COMPLETE:
            self._keep(piece)


class Spill:
    """Moves one message from the scanner's buffer to a spool file once it is larger than the
    spool's threshold, then in writes of about a read chunk each.

    The file goes as soon as the message is refused, so a refused message is drained without
    being spooled; `remove()` takes whatever is left once the reply is decided.
    """

    def __init__(self, spool: Spool, connection_id: str) -> None:
        self._spool = spool
        self._connection_id = connection_id
        self._file: SpoolFile | None = None

    async def offer(self, scanner: MessageBuffer, final: bool) -> None:
        """Write what `scanner` holds if it is time to; a failed write refuses the message."""
        if scanner.outcome is not DataOutcome.COMPLETE:
            await self.remove()
            return
        if self._file is None and scanner.held <= self._spool.threshold:
            return
        if self._file is not None and scanner.held < CHUNK_BYTES and not final:
            return
        if self._file is None:
            self._file = self._spool.new_file()
        try:
            await self._spool.write(self._file, scanner.take())
        except OSError as error:
            log.error(
                "spool write failed: message refused",
                uuid=self._connection_id,
                folder=str(self._spool.folder),
                reason=str(error),
            )
            scanner.refuse(DataOutcome.NO_DISK)
            await self.remove()

    def content(self, scanner: MessageBuffer) -> MessageContent:
        """The message after a COMPLETE outcome: its spool file, or the scanner's buffer."""
        if self._file is not None:
            return self._file.finish()
        return MessageContent.in_memory(scanner.content())

    async def remove(self) -> None:
        """Remove the file, if any, once the writes before are done."""
        if self._file is not None:
            file, self._file = self._file, None
            await self._spool.discard(file)


async def read_data(
    reader: asyncio.StreamReader, scanner: DataScanner, spill: Spill | None = None
) -> DataOutcome:
    """Read through the final dot; the bytes after it are left in `reader`.

    The read timeout needs nothing here: the protocol counts every received byte as activity.
    """
    while True:
        chunk = await reader.read(CHUNK_BYTES)
        if not chunk:
            # aiosmtpd cancels the session on EOF, so this is what its readuntil would raise
            raise asyncio.IncompleteReadError(b"", None)
        after = scanner.feed(chunk)
        if spill is not None:
            await spill.offer(scanner, final=after is not None)
        if after is not None:
            if after:
                unread(reader, after)
            return scanner.outcome


async def read_chunk(
    reader: asyncio.StreamReader,
    scanner: ChunkScanner,
    size: int,
    spill: Spill | None = None,
    *,
    last: bool = False,
) -> DataOutcome:
    """Read exactly the `size` octets of one BDAT chunk into `scanner` (drained if refused);
    the bytes after them stay in `reader`. With `last`, what the spill still holds back is
    written, so a spooled message is whole in its file."""
    scanner.begin(size)
    async for piece in _chunk_pieces(reader, size):
        scanner.feed(piece)
        if spill is not None:
            await spill.offer(scanner, final=False)
    if spill is not None and (last or scanner.outcome is not DataOutcome.COMPLETE):
        await spill.offer(scanner, final=last)
    return scanner.outcome


async def skip_chunk(reader: asyncio.StreamReader, size: int) -> None:
    """Read and drop a BDAT chunk that was refused before it was read, so the stream stays in
    step: its bytes are not commands."""
    async for _ in _chunk_pieces(reader, size):
        pass


async def _chunk_pieces(reader: asyncio.StreamReader, size: int) -> AsyncIterator[bytes]:
    """The `size` octets of a BDAT chunk as they arrive, at most `CHUNK_BYTES` at a time; a
    client that hangs up before the last raises `IncompleteReadError`."""
    left = size
    while left:
        piece = await reader.read(min(left, CHUNK_BYTES))
        if not piece:
            raise asyncio.IncompleteReadError(b"", left)
        left -= len(piece)
        yield piece
