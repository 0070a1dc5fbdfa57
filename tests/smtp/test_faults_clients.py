"""Fault rules as aiosmtplib and swaks meet them: each stage and action, and `times` exact
over 1,000 messages sent on parallel connections."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable

import aiosmtplib
import pytest

from mailrunner.faults import FaultStage
from support.faults import (
    DELAY,
    MESSAGE,
    REFUSAL,
    STAGES,
    add_fault,
    fault_server,
    injected,
    remaining,
)
from support.server import RunningServer
from support.waiting import WAIT_SECONDS

Start = Callable[..., RunningServer]
SWAKS_EXIT_CODES: dict[FaultStage, int] = {
    "connect": 21,
    "helo": 22,
    "mail": 23,
    "rcpt": 24,
    "data": 26,
}
"""swaks's exit code for a refusal at each stage (swaks(1), EXIT CODES)."""
SWAKS_CLOSED = 6
"""swaks's exit code when the server closed the connection unexpectedly."""


def refusing(stage: FaultStage) -> int:
    """A reply rule's `times` that refuses one message: a client whose EHLO is refused tries
    HELO, which meets the rule again."""
    return 2 if stage == "helo" else 1


@pytest.fixture
def server(start_server: Start) -> RunningServer:
    return fault_server(start_server)


async def aio_send(server: RunningServer, recipient: str = "b@example.com") -> None:
    client = aiosmtplib.SMTP(
        hostname=server.host,
        port=server.port,
        local_hostname="client.example",
        timeout=WAIT_SECONDS,
    )
    async with client:
        await client.sendmail("a@example.com", [recipient], MESSAGE)


def refusal(error: BaseException) -> tuple[int, str]:
    """The code and text of the reply behind aiosmtplib's error."""
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused):
        (error,) = error.recipients
    assert isinstance(error, aiosmtplib.SMTPResponseException), f"not a refusal: {error!r}"
    return error.code, error.message


@pytest.mark.parametrize("stage", STAGES)
def test_aiosmtplib_reads_an_injected_reply_at_each_stage(
    server: RunningServer, stage: FaultStage
) -> None:
    add_fault(server, stage=stage, reply=REFUSAL, times=refusing(stage))
    with pytest.raises(aiosmtplib.SMTPException) as refused:
        asyncio.run(aio_send(server))
    assert refusal(refused.value) == (550, "5.7.1 Refused by the test")
    asyncio.run(aio_send(server))
    assert len(server.delivery.events) == 1, "the refused message was delivered"


@pytest.mark.parametrize("stage", STAGES)
def test_aiosmtplib_sees_an_injected_disconnect_at_each_stage(
    server: RunningServer, stage: FaultStage
) -> None:
    add_fault(server, stage=stage, action="disconnect")
    with pytest.raises((aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPConnectError)):
        asyncio.run(aio_send(server))
    asyncio.run(aio_send(server))
    assert len(server.delivery.events) == 1, "the message cut off at its final dot was delivered"


@pytest.mark.parametrize("stage", STAGES)
def test_aiosmtplib_waits_out_an_injected_delay_at_each_stage(
    server: RunningServer, stage: FaultStage
) -> None:
    add_fault(server, stage=stage, action="delay", delay=DELAY)
    started = time.monotonic()
    asyncio.run(aio_send(server))
    seconds = time.monotonic() - started
    assert seconds >= DELAY, f"the message went through in {seconds:.3f}s"
    assert len(server.delivery.events) == 1


def test_times_refuses_exactly_that_many_of_1000_messages_on_parallel_connections(
    server: RunningServer,
) -> None:
    connections, per_connection = 4, 250
    add_fault(server, stage="rcpt", match="bounce-*@example.com", reply=REFUSAL, times=37)

    async def connection(index: int) -> list[int]:
        codes: list[int] = []
        async with aiosmtplib.SMTP(
            hostname=server.host, port=server.port, timeout=WAIT_SECONDS
        ) as client:
            for number in range(per_connection):
                recipient = f"bounce-{index}-{number}@example.com"
                try:
                    await client.sendmail("a@example.com", [recipient], MESSAGE)
                except aiosmtplib.SMTPRecipientsRefused as error:
                    codes.append(refusal(error)[0])
                    await client.rset()
                else:
                    codes.append(250)
        return codes

    async def main() -> list[int]:
        answers = await asyncio.gather(*(connection(i) for i in range(connections)))
        return [code for codes in answers for code in codes]

    codes = asyncio.run(main())
    assert len(codes) == 1000
    assert codes.count(550) == 37
    assert codes.count(250) == 963
    assert len(server.delivery.events) == 963
    assert remaining(server) == {}, "the rule outlived its 37 matches"
    assert injected(server) == {("rcpt", "reply"): 37}


def run_swaks(swaks: str, server: RunningServer) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [swaks, "--server", f"{server.host}:{server.port}", "--to", "b@example.com"],
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS * 3,
        check=False,
    )


@pytest.mark.swaks
@pytest.mark.parametrize("stage", STAGES)
def test_swaks_reports_an_injected_reply_at_its_stage(
    server: RunningServer, swaks: str, stage: FaultStage
) -> None:
    add_fault(server, stage=stage, reply=REFUSAL, times=refusing(stage))
    result = run_swaks(swaks, server)
    assert result.returncode == SWAKS_EXIT_CODES[stage], result.stdout + result.stderr
    assert f"<** {REFUSAL}" in result.stdout
    assert server.delivery.events == []


@pytest.mark.swaks
@pytest.mark.parametrize("stage", STAGES)
def test_swaks_reports_an_injected_disconnect(
    server: RunningServer, swaks: str, stage: FaultStage
) -> None:
    add_fault(server, stage=stage, action="disconnect")
    result = run_swaks(swaks, server)
    assert result.returncode == SWAKS_CLOSED, result.stdout + result.stderr
    assert server.delivery.events == []


@pytest.mark.swaks
@pytest.mark.parametrize("stage", STAGES)
def test_swaks_delivers_after_an_injected_delay(
    server: RunningServer, swaks: str, stage: FaultStage
) -> None:
    add_fault(server, stage=stage, action="delay", delay=DELAY)
    started = time.monotonic()
    result = run_swaks(swaks, server)
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert seconds >= DELAY, f"swaks finished in {seconds:.3f}s"
    assert len(server.delivery.events) == 1
