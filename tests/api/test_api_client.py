"""ApiClient: the JobsService methods over HTTP, against a running jobs node."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from api_support import start_jobs_node

from mailrunner.api.client import ApiClient
from mailrunner.api.pooled import PooledTransport
from mailrunner.api.transport import OneShotTransport, Transport
from mailrunner.errors import ApiUnavailable, PipelineNotFound, RequestOutcomeUnknown
from mailrunner.jobs.model import Job, JobOptions
from support.server import RunningServer
from support.waiting import wait_until

T = TypeVar("T")


def job(job_id: str, pipeline: str, order: str = "ack") -> Job:
    return Job(job_id, "client.test", json.dumps({"do": order}).encode(), JobOptions(pipeline))


def test_every_jobs_rpc_method_works_over_http(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    node = start_jobs_node(start_server, tmp_path)

    async def held_pipeline(client: ApiClient) -> None:
        assert await client.declare("held", {"driver": "memory"}) is True
        assert await client.declare("held", {"driver": "memory"}) is False
        assert "held" in await client.list_pipelines()
        await client.pause("held")
        await client.push(job("a", "held"))
        results = await client.push_batch([job("b", "held"), job("c", "held")])
        assert [(r.id, r.error) for r in results] == [("b", None), ("c", None)]
        stat = await client.stat("held")
        assert (stat.queued, stat.paused, stat.driver) == (3, True, "memory")
        peeked = await client.peek("held", limit=2)
        assert [(j.id, j.payload) for j in peeked] == [
            ("a", b'{"do": "ack"}'),
            ("b", b'{"do": "ack"}'),
        ]
        await client.resume("held")
        assert (await client.stat("held")).paused is False
        await client.destroy("held", purge=True)
        assert "held" not in await client.list_pipelines()
        with pytest.raises(PipelineNotFound):
            await client.stat("held")

    async def failed_list(client: ApiClient) -> None:
        await client.push(job("doomed", "work", "nack-final"))
        await client.push(job("also", "work", "nack-final"))

    async def settle(client: ApiClient) -> tuple[list[str], int, int]:
        failed = await client.list_failed("work")
        retried = await client.retry_failed("work", ["doomed"])
        purged = await client.purge_failed("work", ["also"])
        return sorted(f.job.id for f in failed), retried, purged

    async def with_client(scenario: Callable[[ApiClient], Awaitable[T]]) -> T:
        async with ApiClient(node.server.api_url) as client:
            return await scenario(client)

    def run(scenario: Callable[[ApiClient], Awaitable[T]]) -> T:
        return asyncio.run(with_client(scenario))

    run(held_pipeline)
    run(failed_list)
    wait_until(lambda: node.api.stat("work")["failed"] == 2, "both jobs in the failed list")
    assert run(settle) == (["also", "doomed"], 1, 1)
    wait_until(lambda: len(node.executed()) == 3, "the retried job to run again")


TRANSPORTS = [
    pytest.param(lambda: OneShotTransport(timeout=5), id="one-shot"),
    pytest.param(lambda: PooledTransport(timeout=5), id="pooled"),
]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_no_answer_is_unavailable_unless_a_change_may_have_been_sent(
    transport: Callable[[], Transport],
) -> None:
    """Nothing listening: nothing was done. A listener that reads the request and hangs up:
    a read is simply unavailable, a change may have been carried out."""
    done = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(0.1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"

        def hang_up_after_each_request() -> None:
            while not done.is_set():
                try:
                    connection, _ = listener.accept()
                except TimeoutError:
                    continue
                with connection:
                    connection.recv(65536)

        async def calls() -> list[type[Exception]]:
            raised = []
            async with ApiClient(url, transport=transport()) as client:
                for call in (client.list_pipelines(), client.pause("q")):
                    try:
                        await call
                    except ApiUnavailable as error:
                        raised.append(type(error))
            return raised

        hanging = threading.Thread(target=hang_up_after_each_request, daemon=True)
        hanging.start()
        try:
            assert asyncio.run(calls()) == [ApiUnavailable, RequestOutcomeUnknown]
        finally:
            done.set()
            hanging.join(timeout=10)

    async def refused() -> None:
        async with ApiClient(url, transport=transport()) as client:
            await client.pause("q")

    with pytest.raises(ApiUnavailable) as caught:
        asyncio.run(refused())
    assert type(caught.value) is ApiUnavailable, "a refused connection sent nothing"
