"""An SMTP session of mailrunner's protocol class fed bytes in memory, no socket: for tests
that compare transcripts over thousands of generated streams (a socket each would be slow)."""

from __future__ import annotations

import asyncio
from typing import Any

from mailrunner.config import AuthConfig
from mailrunner.metrics import Metrics
from mailrunner.smtp.data_reader import InflightBudget
from mailrunner.smtp.protocol import MailrunnerSMTP
from mailrunner.smtp.session import ProtocolSettings

SETTLE_STEPS = 100
"""Loop iterations a session gets to consume what it was fed; it needs two or three."""
METRICS = Metrics()


class Recorder:
    """The DATA hook: records what it was handed, numbers its replies."""

    def __init__(self) -> None:
        self.messages: list[tuple[Any, Any]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.content, envelope.original_content))
        return f"250 2.0.0 OK: message {len(self.messages)}"


class Admit:
    def admit(self, connection: MailrunnerSMTP) -> str | None:
        return None

    def forget(self, connection: MailrunnerSMTP) -> None:
        return None


class MemoryTransport(asyncio.Transport):
    """Collects what the server writes; closing it ends the connection as a socket would."""

    def __init__(self, protocol: MailrunnerSMTP) -> None:
        super().__init__()
        self.protocol = protocol
        self.written = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 2525) if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def get_write_buffer_size(self) -> int:
        return 0


async def settle(protocol: MailrunnerSMTP) -> None:
    """Let the session run until it waits for more bytes (or has ended)."""
    for _ in range(SETTLE_STEPS):
        await asyncio.sleep(0)
        task = protocol._handler_coroutine
        if (task is not None and task.done()) or protocol._reader._waiter is not None:
            return
    raise AssertionError("the session neither waited for bytes nor ended")


async def session(
    kind: type[MailrunnerSMTP], chunks: list[bytes], size_limit: int
) -> tuple[bytes, list[tuple[Any, Any]]]:
    """Feed `chunks` one by one, each once the session waits for more: the replies written
    and the (content, original_content) of each message handed to the DATA hook."""
    recorder = Recorder()
    settings = ProtocolSettings(
        hostname="mx.test",
        read_timeout=600,
        session_timeout=600,
        max_message_size=size_limit,
        auth=AuthConfig(mode="capture"),
    )
    protocol = kind(recorder, settings, Admit(), METRICS, InflightBudget(1 << 40))
    transport = MemoryTransport(protocol)
    protocol.connection_made(transport)
    for chunk in chunks:
        await settle(protocol)
        if transport.closed:
            break
        protocol.data_received(chunk)
    await settle(protocol)
    transport.close()
    await asyncio.sleep(0)
    return bytes(transport.written), recorder.messages
