"""The RabbitMQ driver passes the driver contract, and keeps its RabbitMQ-specific promises.

Runs against the machine's RabbitMQ on 127.0.0.1:5672 (guest/guest), which is never
restarted here. Every test gets its own queue and exchange names, and they (with the driver's
`.failed`, `.delays` and `.delay.<ms>` queues) are deleted afterwards through aio-pika.
Capabilities RabbitMQ cannot honour (peek, idempotent_push, atomic_batch) are declared false,
so those contract tests skip by capability.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from contract import (
    EARLY,
    LATE,
    DriverContract,
    Harness,
    assert_nothing_due,
    assert_stat,
    make_job,
    push,
    queue_stat,
    reserve_one,
    soon,
    until_broker_unreachable,
)
from pydantic import ValidationError
from structlog.testing import capture_logs

from mailrunner.config import AmqpDriverConfig
from mailrunner.errors import DriverError, DriverUnavailable
from mailrunner.jobs.driver import Driver
from mailrunner.jobs.drivers._amqp_message import broker_priority, delay_ms
from mailrunner.jobs.drivers.amqp import AmqpDriver
from mailrunner.jobs.model import Capabilities
from support.brokers import AMQP_ADDR, amqp_addr
from support.proxy import BrokerProxy

pytestmark = pytest.mark.amqp

AMQP_CAPABILITIES = Capabilities(
    durable=True,
    idempotent_push=False,
    atomic_batch=False,
    priority=True,
    delay=True,
    peek=False,
    max_payload=128 * 1024 * 1024,
)
"""RabbitMQ's default max_message_size is the payload limit (AMQP cannot ask for the real
one)."""


def settings_for(queue: str, **config: Any) -> dict[str, Any]:
    return {"driver": "amqp", "config": {"addr": AMQP_ADDR, "queue": queue, **config}}


class TestAmqpDriver(DriverContract):
    """The contract against the machine's RabbitMQ."""

    @pytest.fixture
    def pipeline_settings(self, queue_name: str) -> dict[str, Any]:
        return settings_for(queue_name)

    def test_capabilities_are_declared_as_rabbitmq_honours_them(self, harness: Harness) -> None:
        async def scenario(driver: Driver) -> None:
            caps = driver.capabilities
            assert (caps.durable, caps.priority, caps.delay) == (True, True, True)
            assert (caps.peek, caps.idempotent_push, caps.atomic_batch) == (False, False, False)
            assert caps == AMQP_CAPABILITIES, f"a capability is missing or extra: {caps}"

        harness.run(scenario)


def harness_for(queue: str, tmp_path: Path, **settings: Any) -> Harness:
    return Harness.from_settings({**settings_for(queue), **settings}, tmp_path)


def test_priorities_map_onto_rabbitmqs_higher_first_range() -> None:
    assert [broker_priority(p) for p in (0, 1, 10, 126, 127, 128, 10_000)] == [
        254,
        252,
        234,
        2,
        0,
        0,
        0,
    ]
    assert broker_priority(-5) == 254


def test_delays_round_up_to_two_significant_digits_never_down() -> None:
    assert [delay_ms(s) for s in (0.0001, 0.05, 0.6, 0.5, 1.234, 30.0, 0.4837)] == [
        1,
        50,
        600,
        500,
        1300,
        30000,
        490,
    ]


def test_priorities_within_0_to_127_are_served_lowest_first(
    queue_name: str, tmp_path: Path
) -> None:
    async def scenario(driver: Driver) -> None:
        order = [("p127", 127), ("p0", 0), ("p300", 300), ("p126", 126), ("p1", 1)]
        for job_id, priority in order:
            await push(driver, make_job(job_id, priority=priority))
        served = []
        for _ in order:
            lease = await reserve_one(driver, 1.0, "every pushed job must be reservable")
            served.append(lease.job.id)
            assert lease.job.options.priority == dict(order)[lease.job.id], "priority changed"
        # 127 and 300 share RabbitMQ's lowest priority 0, so they keep their push order.
        assert served == ["p0", "p1", "p126", "p127", "p300"], f"served {served}"

    harness_for(queue_name, tmp_path).run(scenario)


def test_a_delayed_job_waits_its_delay_in_its_own_delay_queue(
    queue_name: str, tmp_path: Path
) -> None:
    async def scenario(driver: Driver) -> None:
        pushed_at = time.monotonic()
        await push(driver, make_job("later", delay=1.0))
        await assert_stat(driver, queue_stat(delayed=1), "a delayed job")
        await assert_nothing_due(driver, "a delayed job was served early", 0.7)
        lease = await reserve_one(driver, 2.0, "the delayed job must come after its delay")
        waited = time.monotonic() - pushed_at
        assert 1.0 - EARLY <= waited <= 1.0 + LATE + 0.2, f"served after {waited:.2f}s"
        connection = await aio_pika.connect(AMQP_ADDR, timeout=5.0)
        async with connection:
            channel = await connection.channel()
            delay_queue = await channel.declare_queue(f"{queue_name}.delay.1000", passive=True)
            assert delay_queue.declaration_result.message_count == 0
        await lease.ack()

    harness_for(queue_name, tmp_path).run(scenario)


def test_an_unroutable_publish_fails_the_push(queue_name: str, tmp_path: Path) -> None:
    async def unbind() -> None:
        connection = await aio_pika.connect(AMQP_ADDR, timeout=5.0)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(
                queue_name, durable=True, arguments={"x-max-priority": 255}
            )
            await queue.unbind(queue_name, queue_name)

    async def scenario(driver: Driver) -> None:
        await unbind()
        with pytest.raises(DriverError, match="unroutable"):
            await driver.push([make_job("lost")], deadline=soon())
        await assert_stat(driver, queue_stat(), "an unroutable job was stored")

    harness_for(queue_name, tmp_path).run(scenario)


def test_jobs_stay_in_rabbitmq_for_a_new_driver_instance(queue_name: str, tmp_path: Path) -> None:
    harness = harness_for(queue_name, tmp_path)

    async def main() -> None:
        async with harness.opened() as first:
            await push(first, make_job("a", b"A"), make_job("b", b"B", priority=1))
            await push(first, make_job("later", delay=30.0))
        async with harness.opened() as second:
            await assert_stat(second, queue_stat(queued=2, delayed=1), "after a new instance")
            lease = await reserve_one(second, 1.0, "a stored job")
            assert (lease.job.id, lease.job.payload, lease.attempt) == ("b", b"B", 1)

    asyncio.run(main())


def test_a_lease_held_at_close_comes_back_when_it_would_have_expired(
    queue_name: str, tmp_path: Path
) -> None:
    harness = harness_for(queue_name, tmp_path, visibility_timeout=1.0)

    async def main() -> None:
        async with harness.opened() as first:
            await push(first, make_job("held"))
            await reserve_one(first, 1.0, "a pushed job")
            leased_at = time.monotonic()
        async with harness.opened() as second:
            await assert_stat(second, queue_stat(delayed=1), "a lease moved aside on close")
            lease = await reserve_one(second, 2.5, "the lease must come back after its expiry")
            assert time.monotonic() - leased_at >= 1.0 - EARLY, "came back before its expiry"
            assert lease.attempt == 2, f"attempt {lease.attempt}"

    asyncio.run(main())


def test_open_fails_fast_with_driver_unavailable_naming_the_address_but_not_the_password(
    tmp_path: Path,
) -> None:
    harness = Harness.from_settings(
        {
            "driver": "amqp",
            "config": {"addr": "amqp://guest:secret@127.0.0.1:1/", "timeout": 2.0},
        },
        tmp_path,
    )

    async def main() -> None:
        driver = harness.build()
        started = time.monotonic()
        with pytest.raises(DriverUnavailable) as raised:
            await driver.open()
        assert time.monotonic() - started < 3.0, "open did not fail fast"
        assert "127.0.0.1:1" in str(raised.value)
        assert "secret" not in str(raised.value)
        with pytest.raises(DriverUnavailable):
            await driver.push([make_job("x")], deadline=soon())

    asyncio.run(main())


def test_defaults_derive_from_the_pipeline_name(tmp_path: Path) -> None:
    harness = Harness.from_settings({"driver": "amqp"}, tmp_path, name="mail")
    driver = harness.build()
    assert isinstance(driver, AmqpDriver)
    assert (driver.queue_name, driver.exchange_name, driver.routing_key) == (
        "mailrunner.mail",
        "mailrunner.mail",
        "mailrunner.mail",
    )
    assert driver.failed_name == "mailrunner.mail.failed"


def test_config_rejects_unknown_keys_and_non_amqp_addresses() -> None:
    with pytest.raises(ValidationError):
        AmqpDriverConfig.model_validate({"addr": "redis://127.0.0.1:6379/0"})
    with pytest.raises(ValidationError):
        AmqpDriverConfig.model_validate({"queues": "x"})
    assert AmqpDriverConfig.model_validate({"addr": "amqps://h:5671/"}).addr == "amqps://h:5671/"


def test_pushes_fail_fast_while_the_broker_is_away_and_work_after_it_reconnects(
    queue_name: str, tmp_path: Path
) -> None:
    async def main() -> None:
        proxy = BrokerProxy()
        config = {"addr": amqp_addr(proxy.port), "queue": queue_name}
        harness = Harness.from_settings({"driver": "amqp", "config": config}, tmp_path)
        async with harness.opened() as driver:
            await push(driver, make_job("before"))
            held = await reserve_one(driver, 1.0, "a pushed job")
            proxy.cut()
            await until_broker_unreachable(driver)
            started = time.monotonic()
            with pytest.raises(DriverError):
                await driver.push([make_job("while-down")], deadline=time.monotonic() + 3.0)
            assert time.monotonic() - started < 1.0, "a push while the broker is away hung"
            await held.ack()  # its delivery is gone with the connection: a no-op, no error
            proxy.restore()
            give_up = time.monotonic() + 15.0
            while True:
                try:
                    await push(driver, make_job("after"))
                    break
                except DriverError:
                    assert time.monotonic() < give_up, "the driver never reconnected"
                    await asyncio.sleep(0.2)
            await assert_stat(driver, queue_stat(queued=2), "the held job came back, and after")
            first = await reserve_one(driver, 1.0, "the job held across the cut")
            assert (first.job.id, first.attempt) == ("before", 2), (first.job.id, first.attempt)
            second = await reserve_one(driver, 1.0, "the job pushed after the reconnect")
            assert second.job.id == "after"
        proxy.close()

    asyncio.run(main())


@contextlib.asynccontextmanager
async def squatted_queue(name: str) -> AsyncIterator[None]:
    """A durable queue `name` declared by someone else, without the driver's arguments (so
    the driver's own declare of it is refused with PRECONDITION_FAILED), deleted afterwards."""
    connection = await aio_pika.connect(AMQP_ADDR, timeout=5.0)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(name, durable=True)
        try:
            yield
        finally:
            await (await connection.channel()).queue_delete(name)


def test_a_refused_delay_queue_declare_fails_that_push_only_and_keeps_the_leases(
    queue_name: str, tmp_path: Path
) -> None:
    harness = harness_for(queue_name, tmp_path, visibility_timeout=30.0)

    async def scenario(driver: Driver) -> None:
        await push(driver, make_job("held"))
        held = await reserve_one(driver, 1.0, "a pushed job")
        async with squatted_queue(f"{queue_name}.delay.7000"):
            with pytest.raises(DriverError, match="PRECONDITION_FAILED"):
                await driver.push([make_job("odd", delay=7.0)], deadline=soon())
            await push(driver, make_job("next"))  # at once: the driver's channel is open
            await assert_stat(driver, queue_stat(queued=1, reserved=1), "after the refusal")
            await held.ack()
            lease = await reserve_one(driver, 1.0, "the job pushed after the refusal")
            assert lease.job.id == "next", f"served {lease.job.id}: the held lease came back"
            await lease.ack()
            await assert_nothing_due(driver, "the acked lease was delivered again", 0.3)

    harness.run(scenario)


def test_the_longest_api_delay_is_held_a_longer_push_is_refused_and_a_longer_nack_is_cut(
    queue_name: str, tmp_path: Path
) -> None:
    thirty_days = 30 * 24 * 3600.0
    fifty_days = 50 * 24 * 3600.0

    async def scenario(driver: Driver) -> None:
        await push(driver, make_job("thirty-days", delay=thirty_days))
        await assert_stat(driver, queue_stat(delayed=1), "a job delayed by 30 days")
        with pytest.raises(DriverError, match=r"about 49\.7 days"):
            await driver.push([make_job("fifty-days", delay=fifty_days)], deadline=soon())
        await push(driver, make_job("now"))
        await assert_stat(driver, queue_stat(queued=1, delayed=1), "after the refusal")
        lease = await reserve_one(driver, 1.0, "the undelayed job")
        with capture_logs() as logs:
            await lease.nack(requeue=True, delay=fifty_days)  # a worker asking too much
        await assert_stat(driver, queue_stat(delayed=2), "a nack beyond the longest delay")
        assert [entry["event"] for entry in logs] == [
            "amqp delay cut to the longest rabbitmq can hold"
        ]

    harness_for(queue_name, tmp_path).run(scenario)
