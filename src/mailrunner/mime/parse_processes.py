"""Small messages parsed on child processes, so the event loop's thread does not parse them.

Measured under load (smtp-source, 100 sessions of 1 KB messages into a durable sqlite
pipeline): the event loop's thread is the server's bottleneck, holding the GIL 98 % of the
time while the second core idles, and the parse is a fifth of its work per message (50 us).
Threads cannot take it over: `email`'s parser holds the GIL. A child process can: the loop
writes the message to the child's pipe and reads the pickled result back (6 us to unpickle
for 1 KB), and the parse itself runs on another core.

Only messages the loop would parse itself come here (in memory, at most
`smtp.parse.offload_bytes`); larger ones still go to the parse threads, so a big message
never queues small ones behind it in a child. The children start once the server has
parsed `BUSY_AFTER` messages itself, so a server that sees a trickle of mail (a test's)
never pays for them. Whenever no child is ready (starting, dead, stopped) `parse` answers
None and the caller parses in-process: a child is a speed-up, never a dependency, and one
that dies costs its waiting messages nothing but a second parse.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pickle
import sys
import time
from pathlib import Path
from typing import Literal

import structlog

import mailrunner
from mailrunner.errors import ParseChildLost
from mailrunner.mime.parse import ParsedMessage, ParseOptions
from mailrunner.mime.parse_child import REPLY, REQUEST, ReplyStatus, unpacked

log = structlog.get_logger("mailrunner.mime")

BUSY_AFTER = 200
"""Messages the server parses itself before it starts its children."""
RESTART_AFTER = 5.0
"""Seconds between a child's death and the start of its replacement: a message that kills
children cannot make the server spawn one per message."""
STALLED_AFTER = 10.0
"""Seconds a child may spend on one message (a small one: a parse takes milliseconds) before
it is killed; that message and those queued behind it are parsed on the parse threads."""
STOP_TIMEOUT = 2.0
"""Seconds a child has to exit after its pipe is closed before it is killed."""
_CHILD = (sys.executable, "-P", "-m", "mailrunner.mime.parse_child")
"""`-P`: the server's working directory is not put on the child's module path."""


def child_count(setting: int | Literal["auto"]) -> int:
    """`smtp.parse.processes`: `auto` is one child where there is a second CPU for it."""
    if setting == "auto":
        return 1 if (os.cpu_count() or 1) > 1 else 0
    return setting


def _child_environment() -> dict[str, str]:
    """The server's environment, with this mailrunner first on the module path, so the child
    runs the same code however the server was started (installed, from a checkout)."""
    package_root = str(Path(mailrunner.__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": package_root + (os.pathsep + path if path else "")}


class _Child:
    """One child and the messages it was given; answers come back in the order sent."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdin is not None
        assert process.stdout is not None
        self.process = process
        self.ready = False
        self.alive = True
        self._closing = False
        self._stalled = False
        self._requests = process.stdin
        self._replies = process.stdout
        self._waiting: dict[int, asyncio.Future[ParsedMessage | None]] = {}
        """In the order sent, which is the order the child answers in."""
        self._outstanding = 0
        """Messages sent and not answered yet, whether or not anyone still waits for them."""
        self._busy_since = 0.0
        """When the child began the message it works on (the oldest outstanding one)."""
        self._watch: asyncio.TimerHandle | None = None
        self._numbers = itertools.count(1)
        self._reading = asyncio.create_task(self._read())

    @property
    def load(self) -> int:
        """Messages the child has yet to answer, those nobody waits for any more included."""
        return self._outstanding

    def send_options(self, options: ParseOptions) -> None:
        data = pickle.dumps(options, protocol=5)
        self._requests.write(REQUEST.pack(0, len(data)) + data)

    async def parse(self, raw: bytes) -> ParsedMessage:
        """Raises `ParseChildLost` when the child dies (or stalls) before it answers."""
        number = next(self._numbers)
        loop = asyncio.get_running_loop()
        waiting: asyncio.Future[ParsedMessage | None] = loop.create_future()
        self._waiting[number] = waiting
        if not self._outstanding:
            self._busy_since = loop.time()
        self._outstanding += 1
        if self._watch is None:  # one armed earlier goes off sooner, and looks again then
            self._watch = loop.call_at(self._busy_since + STALLED_AFTER, self._check_progress)
        try:
            self._requests.writelines((REQUEST.pack(number, len(raw)), raw))
            parsed = await waiting
        finally:
            self._waiting.pop(number, None)
        if parsed is None:
            raise ParseChildLost(
                f"parse child {self.process.pid} gave no parse of message {number}"
            )
        return parsed

    def _check_progress(self) -> None:
        """Kill the child if it has worked on one message for `STALLED_AFTER`; else look
        again when the one it works on now would have taken that long."""
        self._watch = None
        if not self._outstanding or not self.alive:
            return
        loop = asyncio.get_running_loop()
        if loop.time() - self._busy_since < STALLED_AFTER:
            self._watch = loop.call_at(self._busy_since + STALLED_AFTER, self._check_progress)
            return
        log.error(
            "parse child stalled, killed",
            pid=self.process.pid,
            seconds=STALLED_AFTER,
            waiting=len(self._waiting),
        )
        self._stalled = True
        self.process.kill()

    async def _read(self) -> None:
        try:
            while True:
                number, status, size = REPLY.unpack(await self._replies.readexactly(REPLY.size))
                data = await self._replies.readexactly(size) if size else b""
                self._answer(number, ReplyStatus(status), data)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as error:
            if not isinstance(error, asyncio.IncompleteReadError):
                log.error("parse child broke the pipe protocol", reason=repr(error))
        finally:
            self.alive = False
            if self._watch is not None:
                self._watch.cancel()
            if not self._closing and not self._stalled:
                log.warning("parse child exited", pid=self.process.pid, waiting=len(self._waiting))
            for waiting in self._waiting.values():
                if not waiting.done():
                    waiting.set_result(None)
            self._waiting.clear()

    def _answer(self, number: int, status: ReplyStatus, data: bytes) -> None:
        if status is ReplyStatus.READY:
            self.ready = True
            log.info("parse child ready", pid=self.process.pid)
            return
        self._outstanding -= 1
        self._busy_since = asyncio.get_running_loop().time()  # on the next one, if any
        waiting = self._waiting.pop(number, None)
        if waiting is None or waiting.done():
            return  # its session went away meanwhile
        if status is ReplyStatus.PARSED:
            waiting.set_result(unpacked(data))
        else:
            log.error("parse child failed on a message", reason=data.decode("utf-8", "replace"))
            waiting.set_result(None)

    async def stop(self) -> None:
        """Close its pipe (it exits at the end of its input), kill it if it lingers."""
        self._closing = True
        self._requests.close()
        try:
            await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        await self._reading


class ParseProcesses:
    """Up to `count` parse children, started when the server gets busy, replaced when they
    die (at most once every `RESTART_AFTER` seconds)."""

    def __init__(self, count: int, options: ParseOptions, *, busy_after: int = BUSY_AFTER) -> None:
        self._count = count
        self._options = options
        self._busy_after = busy_after
        self._parsed_here = 0
        self._children: list[_Child] = []
        self._starting: asyncio.Task[None] | None = None
        self._last_start = -RESTART_AFTER
        self._stopped = False

    @property
    def pids(self) -> list[int]:
        """The running children's process ids (the management API and tests see them)."""
        return [child.process.pid for child in self._children if child.alive]

    async def parse(self, raw: bytes) -> ParsedMessage | None:
        """The parse of `raw` by a child, or None: parse it in-process instead. Raises
        `ParseChildLost` when the child it went to died or stalled first."""
        ready = [child for child in self._children if child.ready and child.alive]
        if len(ready) < self._count:
            self._start_when_due(parsing_here=not ready)
        if ready:
            return await min(ready, key=lambda child: child.load).parse(raw)
        return None

    def _start_when_due(self, *, parsing_here: bool) -> None:
        """Start the missing children once the server is busy: a dead one is replaced even
        while the others serve, no sooner than `RESTART_AFTER` after the last start."""
        self._parsed_here += parsing_here
        if (
            self._count == 0
            or self._stopped
            or self._starting is not None
            or self._parsed_here < self._busy_after
            or time.monotonic() - self._last_start < RESTART_AFTER
        ):
            return
        self._last_start = time.monotonic()
        self._starting = asyncio.create_task(self._start())

    async def _start(self) -> None:
        try:
            dead = [child for child in self._children if not child.alive]
            for child in dead:
                await child.stop()
                self._children.remove(child)
            while len(self._children) < self._count and not self._stopped:
                process = await asyncio.create_subprocess_exec(
                    *_CHILD,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    env=_child_environment(),
                    start_new_session=True,
                )
                child = _Child(process)
                child.send_options(self._options)
                self._children.append(child)
        except OSError as error:
            log.error("parse child not started", reason=repr(error))
        finally:
            self._starting = None

    async def stop(self) -> None:
        self._stopped = True
        if self._starting is not None:
            await self._starting
        for child in self._children:
            await child.stop()
        self._children.clear()
