"""The Redis driver passes the driver contract, and keeps its promises when Redis itself fails.

The contract runs twice: against the machine's Redis on 127.0.0.1:6379 (appendonly off, so
the driver reports `durable: false` and the durable tests skip by capability), and against a
redis-server of our own with `appendonly yes` and `appendfsync always`, where the durable
tests run. That private server is also killed with SIGKILL, frozen with SIGSTOP and restarted
to show what a push does while Redis is down or stuck. Every test gets its own stream (key
namespace) and its keys are deleted afterwards.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from contract import (
    EARLY,
    LATE,
    STORED_LATE_BY,
    DriverContract,
    Harness,
    assert_nothing_due,
    assert_stat,
    make_job,
    make_jobs,
    push,
    queue_stat,
    reserve_one,
    sleep_until,
)
from pydantic import ValidationError

import mailrunner.jobs.drivers.redis as redis_driver
from mailrunner.config import RedisDriverConfig
from mailrunner.errors import DriverError, DriverUnavailable, PushTimeout
from mailrunner.jobs.deadline import VERDICT_GRACE
from mailrunner.jobs.driver import Driver
from mailrunner.jobs.model import Capabilities, Job, JobOptions
from support.brokers import RedisServer
from support.net import free_port
from support.requirements import REQUIRE_TOOLS, require_broker

pytestmark = pytest.mark.redis

MACHINE_REDIS = ("127.0.0.1", 6379)
DURABLE = {"appendonly": "yes", "appendfsync": "always"}


def settings_for(port: int, stream: str, **config: Any) -> dict[str, Any]:
    return {
        "driver": "redis",
        "config": {"addr": f"redis://127.0.0.1:{port}/0", "stream": stream, **config},
    }


def delete_stream_keys(port: int, stream: str) -> None:
    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=5.0) as client:
        keys = list(client.scan_iter(match=f"mailrunner:{{{stream}}}:*"))
        if keys:
            client.delete(*keys)


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start private redis-servers with the given settings; each is killed by pid after."""
    binary = shutil.which("redis-server")
    if binary is None:
        if REQUIRE_TOOLS:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    servers: list[RedisServer] = []

    def start(**settings: str) -> RedisServer:
        directory = tmp_path / f"redis-{len(servers)}"
        directory.mkdir()
        server = RedisServer(binary, directory, settings)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        process = server.process
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)  # a frozen server must die too
        server.kill()


@pytest.fixture
def durable_redis(start_redis: Callable[..., RedisServer]) -> RedisServer:
    return start_redis(**DURABLE)


def redis_capabilities(port: int, *, durable: bool) -> Capabilities:
    """All a Redis stream honours; its payload limit is the server's proto-max-bulk-len."""
    with redis.Redis(port=port) as client:
        limit = int(client.config_get("proto-max-bulk-len")["proto-max-bulk-len"])
    return Capabilities(
        durable=durable,
        idempotent_push=True,
        atomic_batch=True,
        priority=True,
        delay=True,
        peek=True,
        max_payload=limit,
    )


@pytest.fixture
def durable_harness(durable_redis: RedisServer, tmp_path: Path) -> Harness:
    stream = f"durable-{uuid.uuid4().hex}"
    return Harness.from_settings(settings_for(durable_redis.port, stream), tmp_path)


class TestRedisDriver(DriverContract):
    """The contract against the machine's Redis, which keeps nothing on disk."""

    @pytest.fixture
    def pipeline_settings(self) -> Iterator[dict[str, Any]]:
        require_broker("redis", *MACHINE_REDIS)
        stream = f"contract-{uuid.uuid4().hex}"
        yield settings_for(MACHINE_REDIS[1], stream)
        delete_stream_keys(MACHINE_REDIS[1], stream)

    def test_declares_exactly_its_capabilities(self, harness: Harness) -> None:
        """A capability left undeclared would turn its contract tests into skips."""
        expected = redis_capabilities(MACHINE_REDIS[1], durable=False)

        async def scenario(driver: Driver) -> None:
            assert driver.capabilities == expected, driver.capabilities

        harness.run(scenario)


class TestRedisDriverOnADurableServer(DriverContract):
    """The contract again, on appendonly yes + appendfsync always: the durable tests run."""

    @pytest.fixture
    def pipeline_settings(self, durable_redis: RedisServer) -> dict[str, Any]:
        return settings_for(durable_redis.port, f"contract-{uuid.uuid4().hex}")

    def test_the_driver_declares_itself_durable(
        self, harness: Harness, durable_redis: RedisServer
    ) -> None:
        async def scenario(driver: Driver) -> None:
            assert driver.capabilities.durable, (
                "appendonly yes with appendfsync always must make the driver durable"
            )
            expected = redis_capabilities(durable_redis.port, durable=True)
            assert driver.capabilities == expected, driver.capabilities

        harness.run(scenario)


class _RecordingLog:
    def __init__(self) -> None:
        self.warnings: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.warnings.append((event, fields))


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ({"appendonly": "no"}, "appendonly no"),
        ({"appendonly": "yes", "appendfsync": "everysec"}, "appendfsync everysec"),
    ],
)
def test_a_server_that_does_not_fsync_every_write_is_reported_not_durable_with_a_warning(
    start_redis: Callable[..., RedisServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    settings: dict[str, str],
    reason: str,
) -> None:
    recorder = _RecordingLog()
    monkeypatch.setattr(redis_driver, "log", recorder)
    server = start_redis(**settings)
    harness = Harness.from_settings(settings_for(server.port, "s"), tmp_path)

    async def scenario(driver: Driver) -> None:
        assert not driver.capabilities.durable, f"{settings} was reported durable"

    harness.run(scenario)
    assert len(recorder.warnings) == 1, f"expected one warning, got {recorder.warnings}"
    event, fields = recorder.warnings[0]
    assert "not durable" in event, f"the warning does not say what it is about: {event!r}"
    assert reason in fields["reason"], f"the warning does not say why: {fields}"
    assert fields["pipeline"] == "contract", f"the warning does not name the pipeline: {fields}"


def test_open_fails_with_driver_unavailable_naming_the_address_but_not_the_password(
    tmp_path: Path,
) -> None:
    port = free_port()  # nothing listens there
    settings = settings_for(port, "s")
    settings["config"]["addr"] = f"redis://mailrunner:s3cret@127.0.0.1:{port}/0"
    harness = Harness.from_settings(settings, tmp_path)

    async def main() -> None:
        driver = harness.build()
        started = time.monotonic()
        with pytest.raises(DriverUnavailable) as raised:
            await driver.open()
        assert time.monotonic() - started < 5.0, "open took too long to give up"
        message = str(raised.value)
        assert f"127.0.0.1:{port}" in message, f"the error does not name the address: {message}"
        assert "s3cret" not in message, f"the error shows the password: {message}"

    asyncio.run(main())


def test_a_job_pushed_and_one_acked_keep_their_state_across_kill_9_of_redis(
    durable_redis: RedisServer, durable_harness: Harness
) -> None:
    timeout = durable_harness.visibility_timeout

    async def before_the_crash(driver: Driver) -> None:
        await push(driver, *make_jobs("acked", "leased", "queued"))
        acked = await reserve_one(driver, 1.0, "the first job must be reservable")
        await acked.ack()
        await reserve_one(driver, 1.0, "the second job must be reservable")

    async def after_the_restart(driver: Driver) -> None:
        await assert_stat(driver, queue_stat(queued=1, reserved=1), "after kill -9 and restart")
        queued = await reserve_one(driver, 1.0, "the queued job must survive kill -9")
        assert (queued.job.id, queued.attempt) == ("queued", 1), (
            f"expected the queued job on attempt 1, got {queued.job.id} on {queued.attempt}"
        )
        await queued.ack()
        leased = await reserve_one(driver, timeout + 1.5, "the leased job's lease must expire")
        assert (leased.job.id, leased.attempt) == ("leased", 2), (
            f"expected the leased job on attempt 2, got {leased.job.id} on {leased.attempt}"
        )
        await leased.ack()
        await assert_nothing_due(driver, "the acked job came back after kill -9")

    durable_harness.run(before_the_crash)
    durable_redis.kill()
    durable_redis.start()
    durable_harness.run(after_the_restart)


def test_push_while_redis_is_down_fails_before_its_deadline_and_works_once_it_is_back(
    durable_redis: RedisServer, durable_harness: Harness
) -> None:
    async def scenario(driver: Driver) -> None:
        await push(driver, make_job("before"))
        durable_redis.kill()
        started = time.monotonic()
        with pytest.raises(DriverError):
            await driver.push([make_job("while-down")], deadline=started + 2.0)
        elapsed = time.monotonic() - started
        assert elapsed < 2.0 + LATE, f"push to a dead redis took {elapsed:.2f}s, deadline 2 s"
        with pytest.raises(DriverUnavailable):
            await driver.reserve(1, 0.0)
        await asyncio.to_thread(durable_redis.start)
        await push(driver, make_job("after"))  # the same driver, reconnected by itself
        leases = await driver.reserve(10, 1.0)
        assert sorted(lease.job.id for lease in leases) == ["after", "before"], (
            f"expected the jobs pushed before and after the outage, got "
            f"{[lease.job.id for lease in leases]}"
        )

    durable_harness.run(scenario)


def test_push_to_a_frozen_redis_times_out_and_is_not_stored_when_it_wakes(
    durable_redis: RedisServer, durable_harness: Harness
) -> None:
    async def scenario(driver: Driver) -> None:
        await push(driver, make_job("before"))  # Redis knows the push script from now on
        durable_redis.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(PushTimeout):
                await driver.push([make_job("late")], deadline=started + 0.3)
            elapsed = time.monotonic() - started
        finally:
            durable_redis.send_signal(signal.SIGCONT)
        gives_up = 0.3 + VERDICT_GRACE  # Redis's verdict may follow an fsync
        assert gives_up - EARLY <= elapsed <= gives_up + LATE, (
            f"PushTimeout came {elapsed:.2f}s after a push with a 0.3 s deadline; "
            f"expected it after {gives_up:.2f}s"
        )
        await push(driver, make_job("next"))
        # the late push, had Redis kept it once awake, would have run by now
        await sleep_until(time.monotonic() + STORED_LATE_BY)
        peeked = [job.id for job in await driver.peek(10)]
        assert peeked == ["before", "next"], f"a push that raised PushTimeout was stored: {peeked}"

    durable_harness.run(scenario)


def test_pipelines_naming_one_stream_share_its_queue_and_other_streams_stay_apart(
    tmp_path: Path,
) -> None:
    require_broker("redis", *MACHINE_REDIS)
    stream, other_stream = f"shared-{uuid.uuid4().hex}", f"other-{uuid.uuid4().hex}"
    ingress = Harness.from_settings(settings_for(MACHINE_REDIS[1], stream), tmp_path, "ingress")
    worker = Harness.from_settings(settings_for(MACHINE_REDIS[1], stream), tmp_path, "worker")
    other = Harness.from_settings(settings_for(MACHINE_REDIS[1], other_stream), tmp_path, "x")

    async def scenario(ingress_driver: Driver) -> None:
        async with worker.opened() as worker_driver, other.opened() as other_driver:
            waiter = asyncio.create_task(worker_driver.reserve(1, 5.0))
            await asyncio.sleep(0.1)  # let the reserve start waiting on the empty stream
            await push(ingress_driver, make_job("job-1"))
            pushed_at = time.monotonic()
            leases = await waiter
            woke_after = time.monotonic() - pushed_at
            assert [lease.job.id for lease in leases] == ["job-1"], "the other node's push"
            assert leases[0].job.options.pipeline == "worker", (
                f"a job must carry the pipeline that served it: {leases[0].job.options}"
            )
            assert woke_after < LATE, f"a push through another node was seen after {woke_after}s"
            await assert_stat(other_driver, queue_stat(), "another stream's job showed")

    try:
        ingress.run(scenario)
    finally:
        delete_stream_keys(MACHINE_REDIS[1], stream)
        delete_stream_keys(MACHINE_REDIS[1], other_stream)


def test_keys_share_one_hash_tag_and_priorities_beyond_8191_are_served_last(
    tmp_path: Path,
) -> None:
    require_broker("redis", *MACHINE_REDIS)
    stream = f"keys-{uuid.uuid4().hex}"
    harness = Harness.from_settings(settings_for(MACHINE_REDIS[1], stream), tmp_path)

    def job(job_id: str, priority: int) -> Job:
        return Job(job_id, "n", b"", JobOptions(pipeline="contract", priority=priority))

    async def scenario(driver: Driver) -> None:
        await push(driver, job("huge", 10**12), job("max", 8191), job("small", 1))
        served = [await reserve_one(driver, 1.0, "three jobs are due") for _ in range(3)]
        assert [lease.job.id for lease in served] == ["small", "huge", "max"], (
            "priorities above 8191 are served as 8191, in push order"
        )
        assert served[1].job.options.priority == 10**12, "the job's own priority must be kept"
        with redis.Redis(host=MACHINE_REDIS[0], port=MACHINE_REDIS[1]) as client:
            keys = sorted(key.decode() for key in client.scan_iter(match=f"*{{{stream}}}*"))
        assert keys, "the pushed jobs left no keys"
        strays = [key for key in keys if not key.startswith(f"mailrunner:{{{stream}}}:")]
        assert not strays, f"keys outside the pipeline's hash tag: {strays}"

    try:
        harness.run(scenario)
    finally:
        delete_stream_keys(MACHINE_REDIS[1], stream)


def test_config_rejects_unknown_keys_and_braces_that_would_break_the_hash_tag() -> None:
    assert RedisDriverConfig().key_prefix == "mailrunner"
    for bad in ({"stream": "a{b}"}, {"key_prefix": "x}"}, {"db": 1}, {"addr": "http://x"}):
        with pytest.raises(ValidationError):
            RedisDriverConfig.model_validate(bad)
