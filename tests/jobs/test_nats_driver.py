"""The NATS JetStream driver passes the driver contract, and keeps its promises when the
server itself fails.

The contract runs against the machine's nats-server on 127.0.0.1:4222, each test on its own
stream and subject (deleted afterwards). The other tests start a nats-server of our own on a
free port and a tmp store dir, kill it with SIGKILL and restart it on the same dir, to show
that a confirmed push survives, that a push while it is down fails within its deadline and is
never delivered later, and that the same driver works again once the server is back.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from contract import (
    LATE,
    DriverContract,
    Harness,
    assert_nothing_due,
    make_job,
    push,
    reserve_one,
    until_broker_unreachable,
)
from pydantic import ValidationError
from structlog.testing import capture_logs

from mailrunner.config import NatsDriverConfig
from mailrunner.errors import DriverError
from mailrunner.jobs.driver import Driver
from mailrunner.jobs.model import Capabilities
from support.brokers import NATS_SERVER, NatsServer, delete_streams
from support.nats_pusher import publish_as_lagging_pusher
from support.requirements import REQUIRE_TOOLS, require_broker

pytestmark = pytest.mark.nats

MACHINE_NATS = ("127.0.0.1", 4222)
NATS_CAPABILITIES = Capabilities(
    durable=True,
    idempotent_push=False,
    atomic_batch=False,
    priority=False,
    delay=False,
    peek=False,
    max_payload=1024 * 1024 - 8 * 1024,
)
"""A JetStream stream is on disk; a nats-server's default max_payload (1 MiB) less the 8 KiB
the driver keeps for a job's headers."""


def settings_for(port: int, stream: str, **extra: Any) -> dict[str, Any]:
    return {
        "driver": "nats",
        "config": {
            "addr": f"nats://127.0.0.1:{port}",
            "stream": stream,
            "subject": f"test.{stream}",
        },
        **extra,
    }


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    if not os.access(NATS_SERVER, os.X_OK):
        if REQUIRE_TOOLS:
            pytest.fail(f"{NATS_SERVER} is not installed (apt-get install nats-server)")
        pytest.skip(f"{NATS_SERVER} is not installed (apt-get install nats-server)")
    directory = tmp_path / "nats-store"
    directory.mkdir()
    server = NatsServer(directory)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def own_harness(own_nats: NatsServer, tmp_path: Path) -> Harness:
    settings = settings_for(own_nats.port, f"own-{uuid.uuid4().hex}", visibility_timeout=5.0)
    return Harness.from_settings(settings, tmp_path)


class TestNatsDriver(DriverContract):
    """The contract against the machine's nats-server, one stream per test."""

    @pytest.fixture
    def pipeline_settings(self) -> Iterator[dict[str, Any]]:
        require_broker("nats", *MACHINE_NATS)
        stream = f"contract-{uuid.uuid4().hex}"
        yield settings_for(MACHINE_NATS[1], stream)
        delete_streams(MACHINE_NATS[1], stream)

    def test_declares_exactly_its_capabilities(self, harness: Harness) -> None:
        """A capability left undeclared would turn its contract tests into skips."""

        async def scenario(driver: Driver) -> None:
            assert driver.capabilities == NATS_CAPABILITIES, driver.capabilities

        harness.run(scenario)


@pytest.fixture
def machine_stream() -> Iterator[str]:
    """A stream of its own on the machine's nats-server, deleted afterwards."""
    require_broker("nats", *MACHINE_NATS)
    stream = f"skew-{uuid.uuid4().hex}"
    yield stream
    delete_streams(MACHINE_NATS[1], stream)


@pytest.mark.parametrize(
    ("max_clock_skew", "served"),
    [(None, ["in-skew", "in-time"]), (0.5, ["in-time"])],
    ids=["default-2s", "skew-0.5s"],
)
def test_a_job_stored_after_its_deadline_beyond_the_clock_skew_is_dropped_logged_and_counted(
    machine_stream: str, tmp_path: Path, max_clock_skew: float | None, served: list[str]
) -> None:
    settings = settings_for(MACHINE_NATS[1], machine_stream)
    if max_clock_skew is not None:
        settings["config"]["max_clock_skew"] = max_clock_skew
    harness = Harness.from_settings(settings, tmp_path)
    addr, subject = settings["config"]["addr"], settings["config"]["subject"]

    async def scenario(driver: Driver) -> None:
        for job_id, expired_ago in (("lagging", 10.0), ("in-skew", 1.0), ("in-time", -5.0)):
            await publish_as_lagging_pusher(addr, subject, job_id, expired_ago=expired_ago)
        with capture_logs() as logs:
            leases = await driver.reserve(10, 1.0)
            leases += await driver.reserve(10, 0.2)
        assert sorted(lease.job.id for lease in leases) == sorted(served), (
            f"served {[lease.job.id for lease in leases]}; expected {served}"
        )
        dropped = sorted(entry["id"] for entry in logs if entry["event"].startswith("job dropped"))
        expected_dropped = sorted({"lagging", "in-skew", "in-time"} - set(served))
        assert dropped == expected_dropped, f"dropped-job log lines name {dropped}: {logs}"
        assert all(
            entry["pipeline"] == "contract" and entry["log_level"] == "warning"
            for entry in logs
            if entry["event"].startswith("job dropped")
        ), f"a drop must be a warning naming its pipeline: {logs}"
        assert driver.dropped_late == len(expected_dropped)
        for lease in leases:
            await lease.ack()
        await assert_nothing_due(driver, "a dropped job came back", 0.5)

    harness.run(scenario)


def test_max_payload_is_the_servers_less_room_for_headers(own_harness: Harness) -> None:
    async def scenario(driver: Driver) -> None:
        max_payload = driver.capabilities.max_payload
        assert max_payload is not None
        assert 1024 * 1024 - 16 * 1024 < max_payload < 1024 * 1024, (
            f"the default server takes 1 MiB; the driver reports {max_payload}"
        )
        job = make_job("biggest", bytes(max_payload))
        await push(driver, job)
        lease = await reserve_one(driver, 1.0, "a job of max_payload bytes must be stored")
        assert lease.job.payload == job.payload

    own_harness.run(scenario)


def test_a_confirmed_push_survives_kill_9_and_restart(
    own_nats: NatsServer, own_harness: Harness
) -> None:
    async def pushing(driver: Driver) -> None:
        await push(driver, make_job("kept"))

    own_harness.run(pushing)
    own_nats.kill()
    own_nats.start()

    async def reading(driver: Driver) -> None:
        lease = await reserve_one(driver, 2.0, "a confirmed job must survive kill -9")
        assert lease.job.id == "kept"
        assert lease.attempt == 1

    own_harness.run(reading)


def test_push_while_down_fails_in_time_is_never_delivered_and_the_driver_recovers(
    own_nats: NatsServer, own_harness: Harness
) -> None:
    async def scenario(driver: Driver) -> None:
        await push(driver, make_job("before"))
        await asyncio.to_thread(own_nats.kill)
        await until_broker_unreachable(driver)
        started = time.monotonic()
        with pytest.raises(DriverError):
            await driver.push([make_job("while-down")], deadline=started + 2.0)
        elapsed = time.monotonic() - started
        assert elapsed < 2.0 + LATE, f"push to a dead server took {elapsed:.2f}s, deadline 2 s"
        with pytest.raises(DriverError):
            await driver.reserve(1, 0.0)
        await asyncio.to_thread(own_nats.start)
        give_up = time.monotonic() + 10.0
        while True:  # the same driver, reconnected by nats-py itself
            try:
                await push(driver, make_job("after"))
                break
            except DriverError:
                assert time.monotonic() < give_up, "the driver did not recover within 10 s"
                await asyncio.sleep(0.1)
        leases = await driver.reserve(10, 1.0)
        leases += await driver.reserve(10, 0.5)
        assert sorted(lease.job.id for lease in leases) == ["after", "before"], (
            f"expected the jobs pushed before and after the outage, got "
            f"{[lease.job.id for lease in leases]}"
        )
        for lease in leases:
            await lease.ack()
        await assert_nothing_due(driver, "a push made while the server was down", 1.0)

    own_harness.run(scenario)


def test_a_repush_within_the_duplicate_window_is_dropped(own_harness: Harness) -> None:
    async def scenario(driver: Driver) -> None:
        await push(driver, make_job("dup", b"first"))
        await push(driver, make_job("dup", b"second"))
        lease = await reserve_one(driver, 1.0, "the job must be stored")
        assert lease.job.payload == b"first", "a re-push replaced the job"
        await assert_nothing_due(driver, "the id was stored twice")

    own_harness.run(scenario)


def test_config_rejects_bad_addresses_streams_and_subjects() -> None:
    assert NatsDriverConfig().addr == "nats://127.0.0.1:4222"
    for bad in ({"addr": "http://x"}, {"stream": "a.b"}, {"subject": "a.*"}, {"x": 1}):
        with pytest.raises(ValidationError):
            NatsDriverConfig.model_validate(bad)
