"""Consumers with real worker processes on memory and sqlite pipelines."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailrunner.config import MemoryPipelineConfig
from mailrunner.jobs.consumer import PipelineConsumer
from mailrunner.jobs.driver import Lease
from mailrunner.jobs.drivers.memory import MemoryDriver
from mailrunner.jobs.model import Job, JobOptions
from mailrunner.jobs.service import Pipeline
from mailrunner.wire.jobs import Answer, decode_answer
from support.server import RunningServer
from support.waiting import wait_until

WORKER = Path(__file__).with_name("job_worker.py")
DRIVERS = ["memory", "sqlite"]


class JobsNode:
    """A running app with one consumed pipeline `q` and a log of executed jobs."""

    def __init__(self, server: RunningServer, log: Path) -> None:
        self.server = server
        self.service = server.app.jobs
        self.log = log

    def push(self, order: dict[str, Any] | None = None, **options: Any) -> str:
        job_id = options.pop("job_id", None) or str(uuid.uuid4())
        job = Job(job_id, "test.job", json.dumps(order or {}).encode(), JobOptions("q", **options))
        self.server.call(self.service.push(job))
        return job_id

    def executed(self) -> list[tuple[str, int, int, dict[str, list[str]]]]:
        if not self.log.exists():
            return []
        rows = []
        for line in self.log.read_text().splitlines():
            job_id, attempt, pid, headers = line.split(" ", 3)
            rows.append((job_id, int(attempt), int(pid), json.loads(headers)))
        return rows

    def wait_executed(
        self, count: int, timeout: float = 20
    ) -> list[tuple[str, int, int, dict[str, list[str]]]]:
        wait_until(lambda: len(self.executed()) >= count, f"{count} executed jobs", timeout)
        return self.executed()

    def stat(self) -> dict[str, Any]:
        result: dict[str, Any] = self.server.call(self.service.stat("q")).to_dict()
        return result


@pytest.fixture
def jobs_node(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> Callable[..., JobsNode]:
    def start(driver: str = "sqlite", workers: int = 2, **pipeline: Any) -> JobsNode:
        log = tmp_path / f"executed-{uuid.uuid4().hex}.log"
        settings = {"driver": driver, "visibility_timeout": 5, **pipeline}
        server = start_server(
            server={"command": [sys.executable, str(WORKER)], "env": {"JOB_LOG": str(log)}},
            jobs={
                "pipelines": {"q": settings},
                "consume": ["q"],
                "pool": {"num_workers": workers, "exec_timeout": 10, "destroy_timeout": 3},
                "shutdown_timeout": 5,
            },
        )
        return JobsNode(server, log)

    return start


@pytest.mark.parametrize("driver", DRIVERS)
def test_1000_concurrent_pushes_each_run_exactly_once(
    jobs_node: Callable[..., JobsNode], driver: str
) -> None:
    node = jobs_node(driver, workers=2, prefetch=20)

    async def push_all() -> list[str]:
        ids = [str(uuid.uuid4()) for _ in range(1000)]
        jobs = [Job(i, "test.job", b"{}", JobOptions("q")) for i in ids]
        await __import__("asyncio").gather(*(node.service.push(job) for job in jobs))
        return ids

    ids = node.server.call(push_all())
    executed = node.wait_executed(1000, timeout=60)
    assert sorted(row[0] for row in executed) == sorted(ids), "every job must run exactly once"
    wait_until(
        lambda: node.stat()["reserved"] == 0 and node.stat()["queued"] == 0, "an empty pipeline"
    )


@pytest.mark.parametrize("driver", DRIVERS)
def test_priority_decides_order_while_paused_jobs_pile_up(
    jobs_node: Callable[..., JobsNode], driver: str
) -> None:
    node = jobs_node(driver, workers=1, prefetch=1)
    node.server.call(node.service.pause("q"))
    low = [node.push(priority=50) for _ in range(3)]
    high = [node.push(priority=1) for _ in range(3)]
    default = [node.push() for _ in range(3)]
    wait_until(lambda: node.stat()["queued"] == 9, "a paused pipeline to store all 9 pushes")
    assert node.stat()["paused"] is True
    node.server.call(node.service.resume("q"))
    order = [row[0] for row in node.wait_executed(9)]
    assert order == high + default + low, (
        "lower priority number first, pipeline default 10, FIFO within"
    )


@pytest.mark.parametrize("driver", DRIVERS)
def test_delayed_job_runs_after_its_delay(jobs_node: Callable[..., JobsNode], driver: str) -> None:
    node = jobs_node(driver)
    pushed = time.monotonic()
    delayed = node.push(delay=2.0)
    now = node.push()
    assert node.wait_executed(1)[0][0] == now
    assert node.stat()["delayed"] == 1
    assert [row[0] for row in node.wait_executed(2)] == [now, delayed]
    assert time.monotonic() - pushed >= 2.0


@pytest.mark.parametrize("driver", DRIVERS)
def test_nack_retries_until_the_limit_then_the_job_is_failed(
    jobs_node: Callable[..., JobsNode], driver: str
) -> None:
    node = jobs_node(driver, retries=3)
    job_id = node.push({"do": "nack"})
    attempts = [row[1] for row in node.wait_executed(3)]
    assert attempts == [1, 2, 3]
    wait_until(lambda: node.stat()["failed"] == 1, "the job in the failed list")
    (failed,) = node.server.call(node.service.list_failed("q"))
    assert (failed.job.id, failed.attempts, failed.error) == (job_id, 3, "asked to fail")
    assert len(node.executed()) == 3, "no execution beyond retries"
    assert node.server.call(node.service.retry_failed("q")) == 1
    wait_until(lambda: len(node.executed()) == 6, "the retried job to run again")
    assert [row[1] for row in node.executed()[3:]] == [1, 2, 3], "retry resets the attempts"


@pytest.mark.parametrize("driver", DRIVERS)
def test_jobs_waiting_for_a_busy_pool_are_not_charged_an_attempt(
    start_server: Callable[..., RunningServer], tmp_path: Path, driver: str
) -> None:
    """prefetch 3 on one worker: two jobs wait past allocate_timeout while the first runs.
    They are given back uncounted, so with retries 1 none of them may end up failed."""
    log = tmp_path / "executed.log"
    server = start_server(
        server={"command": [sys.executable, str(WORKER)], "env": {"JOB_LOG": str(log)}},
        jobs={
            "pipelines": {"q": {"driver": driver, "retries": 1, "prefetch": 3}},
            "consume": ["q"],
            "pool": {"num_workers": 1, "allocate_timeout": 1, "destroy_timeout": 3},
        },
    )
    node = JobsNode(server, log)
    ids = [node.push({"seconds": 2}) for _ in range(3)]
    rows = node.wait_executed(3, timeout=30)
    assert sorted(row[0] for row in rows) == sorted(ids)
    assert [row[1] for row in rows] == [1, 1, 1], "waiting for a worker is not an attempt"
    assert node.stat()["failed"] == 0


@pytest.mark.parametrize("driver", DRIVERS)
def test_nack_without_requeue_fails_at_once_and_can_be_purged(
    jobs_node: Callable[..., JobsNode], driver: str
) -> None:
    node = jobs_node(driver, retries=5)
    job_id = node.push({"do": "nack-final"})
    node.wait_executed(1)
    wait_until(lambda: node.stat()["failed"] == 1, "the job in the failed list")
    assert node.server.call(node.service.purge_failed("q")) == [job_id]
    assert node.stat()["failed"] == 0
    assert len(node.executed()) == 1


@pytest.mark.parametrize("driver", DRIVERS)
def test_requeue_replaces_headers_and_counts_as_an_attempt(
    jobs_node: Callable[..., JobsNode], driver: str
) -> None:
    node = jobs_node(driver, retries=2)
    node.push({"do": "requeue"})
    first, second = node.wait_executed(2)
    assert (first[1], second[1]) == (1, 2)
    assert second[3] == {"requeued": ["yes"]}
    wait_until(lambda: node.stat()["failed"] == 1, "a job requeued past retries to be failed")


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_crashing_worker_counts_as_nack_with_requeue(
    jobs_node: Callable[..., JobsNode], driver: str
) -> None:
    node = jobs_node(driver, retries=2)
    node.push({"do": "fail-until", "attempt": 2})
    node.push({"do": "crash"})
    wait_until(lambda: node.stat()["failed"] == 1, "the crashing job to be failed after 2 attempts")
    (failed,) = node.server.call(node.service.list_failed("q"))
    assert failed.attempts == 2
    assert "jobs worker" in failed.error
    assert [row[1] for row in node.wait_executed(2)] == [1, 2]


@pytest.mark.parametrize("driver", DRIVERS)
def test_auto_ack_acks_on_receipt_even_if_the_job_fails(
    jobs_node: Callable[..., JobsNode], driver: str
) -> None:
    node = jobs_node(driver)
    node.push({"do": "nack"}, auto_ack=True)
    node.wait_executed(1)
    wait_until(lambda: node.stat()["reserved"] == 0, "the auto-acked job to be gone")
    assert (node.stat()["queued"], node.stat()["failed"]) == (0, 0)


def test_job_outlasting_the_visibility_timeout_runs_once(
    jobs_node: Callable[..., JobsNode],
) -> None:
    node = jobs_node("sqlite", workers=2, visibility_timeout=2)
    job_id = node.push({"seconds": 5})
    node.wait_executed(1)
    wait_until(lambda: node.stat()["reserved"] == 0, "the long job to be acked")
    assert [row[0] for row in node.executed()] == [job_id], "the lease must be extended, not expire"


@pytest.mark.parametrize("driver", DRIVERS)
def test_destroy_removes_the_pipeline_and_stops_consuming(
    jobs_node: Callable[..., JobsNode], driver: str
) -> None:
    node = jobs_node(driver)
    node.push()
    node.wait_executed(1)
    detached = node.service.pipeline("q")
    assert detached.consuming, "the pipeline's consumer must be running before destroy"
    node.server.call(node.service.destroy("q", purge=True))
    assert not detached.consuming, "destroy left the pipeline's consumer running"
    assert "q" not in node.service.list_pipelines()
    with pytest.raises(Exception, match="unknown pipeline 'q'"):
        node.push()


@pytest.mark.parametrize(
    ("body", "answer"),
    [
        (b'{"type": 2, "data": {}}', Answer(ack=True)),
        (b'{"type": 0}', Answer(ack=True)),
        (
            b'{"type": 3, "data": {"message": "m", "requeue": false}}',
            Answer(ack=False, requeue=False, message="m"),
        ),
        (
            b'{"type": 1, "data": {"message": "e", "requeue": true, "delay_seconds": 2}}',
            Answer(ack=False, delay=2.0, message="e"),
        ),
        (
            b'{"type": 4, "data": {"delay_seconds": 1, "headers": {"a": ["b"]}}}',
            Answer(ack=False, delay=1.0, message="requeued", headers={"a": ["b"]}),
        ),
    ],
)
def test_worker_answers_are_read_as_roadrunner_defines_them(body: bytes, answer: Answer) -> None:
    assert decode_answer(body) == answer


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'{"type": "2"}',
        b'{"type": 9}',
        b'{"type": true}',
        b'{"data": {}}',
        b'{"type": 3, "data": {"delay_seconds": "x"}}',
        b'{"type": 3, "data": {"delay_seconds": "inf"}}',
        b'{"type": 3, "data": {"delay_seconds": -1}}',
        b'{"type": 3, "data": {"requeue": "false"}}',
        b'{"type": 4, "data": {"headers": "oops"}}',
        b'{"type": 4, "data": {"headers": {"a": "b"}}}',
        b'{"type": 4, "data": {"headers": 0}}',
        b'{"type": 3, "data": {"delay_seconds": ' + b"9" * 400 + b"}}",
    ],
)
def test_an_empty_malformed_or_unknown_answer_is_a_failure_not_an_ack(body: bytes) -> None:
    answer = decode_answer(body)
    assert answer.ack is False
    assert answer.requeue is True
    assert answer.message


def test_stop_waits_for_jobs_in_flight_and_leaves_the_rest_stored(
    jobs_node: Callable[..., JobsNode], tmp_path: Path
) -> None:
    node = jobs_node("sqlite", workers=1, prefetch=1)
    node.server.call(node.service.pause("q"))
    running = node.push({"seconds": 1.5})
    waiting = [node.push() for _ in range(5)]
    node.server.call(node.service.resume("q"))
    wait_until(lambda: node.stat()["reserved"] == 1, "the slow job to be running")
    node.server.stop()
    assert [row[0] for row in node.executed()] == [running], "the job in flight must finish"
    database = node.server.config.data_dir / "jobs.db"
    rows = (
        sqlite3.connect(database).execute("SELECT id FROM jobs WHERE failed_at IS NULL").fetchall()
    )
    assert sorted(row[0] for row in rows) == sorted(waiting), "jobs not yet run stay stored"


class CancelSwallowingDriver(MemoryDriver):
    """A reserve that turns the first cancel into an empty answer, as Python 3.11's wait_for
    does when what it waits for completes at the same moment."""

    def __init__(self, name: str, settings: MemoryPipelineConfig, data_dir: Path) -> None:
        super().__init__(name, settings, data_dir)
        self.waiting = asyncio.Event()
        self.swallowed = 0

    async def reserve(self, limit: int, wait: float) -> list[Lease]:
        self.waiting.set()
        try:
            return await super().reserve(limit, wait)
        except asyncio.CancelledError:
            if self.swallowed:
                raise
            self.swallowed += 1
            return []


def test_stop_ends_the_consumer_even_when_its_driver_swallows_the_cancel(tmp_path: Path) -> None:
    async def scenario() -> int:
        settings = MemoryPipelineConfig(driver="memory")
        driver = CancelSwallowingDriver("q", settings, tmp_path)
        pipeline = Pipeline("q", settings, driver)
        pipeline.resumed.set()
        consumer = PipelineConsumer(pipeline, None, 1.0, None)  # type: ignore[arg-type]
        consumer.start()
        await driver.waiting.wait()
        stopping = asyncio.create_task(consumer.stop())
        done, _ = await asyncio.wait({stopping}, timeout=5)
        assert done, "stop() did not return within 5 s of a swallowed cancel"
        return driver.swallowed

    assert asyncio.run(scenario()) == 1, "the cancel must have reached the driver's reserve"


class SilentNackDriver(MemoryDriver):
    """A give-back that never answers, as on a broker that stopped answering."""

    def __init__(self, name: str, settings: MemoryPipelineConfig, data_dir: Path) -> None:
        super().__init__(name, settings, data_dir)
        self.nacking = asyncio.Event()

    async def nack(self, lease: Any, nack: Any) -> None:
        self.nacking.set()
        await asyncio.Event().wait()


class EndlessPool:
    """A jobs pool whose worker never answers."""

    def __init__(self) -> None:
        self.running = asyncio.Event()

    async def exec(self, context: bytes, payload: bytes) -> tuple[bytes, bytes]:
        self.running.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def test_stop_keeps_one_deadline_for_running_jobs_and_their_give_back(tmp_path: Path) -> None:
    shutdown_timeout = 1.0

    async def scenario() -> tuple[float, float | None, bool]:
        settings = MemoryPipelineConfig(driver="memory")
        driver = SilentNackDriver("q", settings, tmp_path)
        pipeline = Pipeline("q", settings, driver)
        pipeline.resumed.set()
        pool = EndlessPool()
        consumer = PipelineConsumer(pipeline, pool, shutdown_timeout, None)  # type: ignore[arg-type]
        await driver.push(
            [Job("a", "test.job", b"{}", JobOptions("q"))], deadline=time.monotonic() + 5
        )
        consumer.start()
        await asyncio.wait_for(pool.running.wait(), 5)
        started = time.monotonic()
        await asyncio.wait_for(consumer.stop(), 5)
        return (
            time.monotonic() - started,
            driver.close_by and driver.close_by - started,
            driver.nacking.is_set(),
        )

    took, close_by, nacked = asyncio.run(scenario())
    assert nacked, "the running job was not given back"
    assert took < shutdown_timeout + 0.2, f"stop took {took:.2f}s"
    assert took > shutdown_timeout / 2 - 0.05, f"the running job got only {took:.2f}s"
    assert close_by is not None, "the driver was not told when to be closed"
    assert abs(close_by - shutdown_timeout) < 0.1, "close_by is not the consumers' deadline"
