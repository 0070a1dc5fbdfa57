"""A large message's event is turned into JSON on the parse threads, not on the event loop
(`JsonOffload`), and the jobs carry the same bytes either way."""

from __future__ import annotations

import asyncio
import base64
import threading
from unittest import mock

from mailrunner.config import SmtpJobsConfig
from mailrunner.events import EmailEvent
from mailrunner.jobs.model import Job
from mailrunner.mime.parse_threads import ParseThreads
from mailrunner.smtp import delivery as delivery_module
from mailrunner.smtp.delivery import JobsDelivery, JsonOffload, event_payloads
from support.events import BUILDER, arrival

ATTACHMENT = bytes(range(256)) * 1024
MESSAGE = (
    b'Subject: large\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
    b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
    b"\r\n" + base64.encodebytes(ATTACHMENT).replace(b"\n", b"\r\n") + b"--b--\r\n"
)


class Recording:
    """A Jobs RPC that keeps every job it is given."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []

    async def push(self, job: Job, *, push_timeout: float) -> None:
        self.jobs.append(job)


def deliver(event: EmailEvent, over_bytes: int) -> tuple[list[Job], set[str]]:
    """The jobs pushed, and the names of the threads the event was dumped on."""
    rpc = Recording()
    threads = ParseThreads(1, name="parse")
    settings = SmtpJobsConfig.model_construct(pipeline="p", push_timeout=5.0)
    delivery = JobsDelivery(rpc, settings, json_offload=JsonOffload(over_bytes, threads))
    dumped_on: set[str] = set()

    def recorded(*args: object) -> tuple[bytes, bytes]:
        dumped_on.add(threading.current_thread().name)
        return event_payloads(*args)  # type: ignore[arg-type]

    try:
        with mock.patch.object(delivery_module, "event_payloads", recorded):
            asyncio.run(delivery.deliver(event))
    finally:
        threads.shutdown()
    return rpc.jobs, dumped_on


def test_a_message_over_the_offload_size_is_dumped_on_a_parse_thread() -> None:
    event = asyncio.run(BUILDER.build(arrival(), MESSAGE))
    jobs, dumped_on = deliver(event, over_bytes=len(MESSAGE) - 1)
    assert dumped_on == {"parse-0"}
    assert [job.payload for job in jobs] == [event_payloads(event, False)[0]]
    assert base64.b64decode(event.attachments[0].to_dict()["content"]) == ATTACHMENT


def test_a_message_at_most_the_offload_size_is_dumped_on_the_loop() -> None:
    event = asyncio.run(BUILDER.build(arrival(), MESSAGE))
    jobs, dumped_on = deliver(event, over_bytes=len(MESSAGE))
    assert dumped_on == {threading.main_thread().name}
    assert [job.payload for job in jobs] == [event_payloads(event, False)[0]]
