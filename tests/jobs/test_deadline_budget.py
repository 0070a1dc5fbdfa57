"""The timing budget (`mailrunner.jobs.deadline`) keeps "a 451 is never stored later".

Each party that waits for a push's outcome must wait longer than the party it waits for, so
that a definite "not stored" (PushTimeout, answered 451) is never overtaken by a store. Each
test names one inequality of that chain; where the budget is used (the node's time left, the
ApiClient's wait, the SMTP side's bound) it is checked there, not only on the constants.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import annotated_types
import pytest
from pydantic import BaseModel

from mailrunner.api.client import ApiClient
from mailrunner.api.http import _time_left
from mailrunner.api.schemas import PushRequest
from mailrunner.api.transport import Reply, Request
from mailrunner.config import SmtpJobsConfig
from mailrunner.errors import DeliveryTimeout, PushTimeout
from mailrunner.events import EmailEvent, Envelope, Message
from mailrunner.jobs.deadline import (
    CALLER_MARGIN,
    COMMIT_WAIT,
    DEFAULT_PUSH_TIMEOUT,
    GRACE,
    PUSH_GRACE,
    REPLY_GRACE,
    VERDICT_GRACE,
)
from mailrunner.jobs.drivers.sqlite import BUSY_TIMEOUT
from mailrunner.jobs.model import Job, JobOptions
from mailrunner.smtp.delivery import JobsDelivery

PUSH_TIMEOUT = 2.0


def _minimum(model: type[BaseModel], field: str) -> float:
    """The smallest value `model` accepts for `field` (its `ge`)."""
    bounds = [m.ge for m in model.model_fields[field].metadata if isinstance(m, annotated_types.Ge)]
    assert len(bounds) == 1, f"{model.__name__}.{field} has no single lower bound: {bounds}"
    return float(bounds[0])


def test_every_grace_is_a_positive_multiple_of_the_unit() -> None:
    for name, value in {
        "CALLER_MARGIN": CALLER_MARGIN,
        "VERDICT_GRACE": VERDICT_GRACE,
        "REPLY_GRACE": REPLY_GRACE,
        "PUSH_GRACE": PUSH_GRACE,
    }.items():
        assert value > 0, f"{name} = {value}: no slack for the step it covers"
        assert (value / GRACE).is_integer(), f"{name} = {value} is not a multiple of {GRACE}"


def test_a_broker_verdict_comes_before_the_smtp_side_gives_up() -> None:
    """In process: redis, amqp and nats answer by deadline + VERDICT_GRACE; the SMTP side
    answers 451 on its own only at push_timeout + PUSH_GRACE."""
    assert VERDICT_GRACE < PUSH_GRACE


def test_a_node_gives_up_before_its_caller() -> None:
    """A remote node's deadline is CALLER_MARGIN before the caller's, counted from arrival."""
    arrived = time.monotonic()
    left = _time_left(PUSH_TIMEOUT, arrived)
    assert 0 < left <= PUSH_TIMEOUT - CALLER_MARGIN, (
        f"a node given push_timeout {PUSH_TIMEOUT}s on arrival keeps {left:.3f}s; it must give"
        f" up at least CALLER_MARGIN ({CALLER_MARGIN}s) before its caller"
    )


@pytest.mark.parametrize("model", [SmtpJobsConfig, PushRequest])
def test_the_shortest_push_timeout_leaves_a_node_time_to_store(model: type[BaseModel]) -> None:
    shortest = _minimum(model, "push_timeout")
    assert shortest > CALLER_MARGIN, (
        f"{model.__name__} accepts push_timeout {shortest}s, all of it taken by CALLER_MARGIN"
    )
    assert _time_left(shortest, time.monotonic()) > 0


def test_the_client_awaits_a_verdict_when_each_way_takes_a_caller_margin() -> None:
    """Request sent at 0, at the node after CALLER_MARGIN; the node's deadline is push_timeout
    - CALLER_MARGIN later, its driver's verdict up to VERDICT_GRACE after that, and the answer
    back after another CALLER_MARGIN: the ApiClient must still be waiting."""
    requests: list[float] = []

    class RecordingTransport:
        async def request(self, request: Request) -> Reply:
            assert request.timeout is not None, "a push must bound its wait for the node's answer"
            requests.append(request.timeout)
            return Reply(200, "application/json", "utf-8", b'{"id": "1"}')

        async def close(self) -> None:
            return None

    client = ApiClient("http://node.invalid", transport=RecordingTransport())
    job = Job(id="1", name="n", payload=b"", options=JobOptions(pipeline="p"))
    asyncio.run(client.push(job, push_timeout=PUSH_TIMEOUT))
    (client_waits,) = requests

    verdict_at_node = CALLER_MARGIN + (PUSH_TIMEOUT - CALLER_MARGIN) + VERDICT_GRACE
    answer_back = verdict_at_node + CALLER_MARGIN
    assert answer_back <= client_waits, (
        f"the node's verdict is back {answer_back}s after the request, the client gives up"
        f" after {client_waits}s"
    )


def test_the_client_gives_up_before_the_smtp_side_does() -> None:
    """Remote: the ApiClient's answer (a verdict, or RequestOutcomeUnknown) comes at
    push_timeout + REPLY_GRACE at the latest, before the SMTP side's push_timeout + PUSH_GRACE
    runs out, so the SMTP side always hears what the client knows."""
    assert REPLY_GRACE < PUSH_GRACE


def test_the_sqlite_commit_wait_covers_any_lock_wait() -> None:
    """A push's caller is asked to wait COMMIT_WAIT from the start of its transaction: no
    less than any statement may wait for a lock (the driver's busy timeout)."""
    assert BUSY_TIMEOUT <= COMMIT_WAIT


def test_the_default_push_timeout_outlasts_every_margin() -> None:
    assert DEFAULT_PUSH_TIMEOUT > CALLER_MARGIN
    assert SmtpJobsConfig().push_timeout == DEFAULT_PUSH_TIMEOUT


class _LateVerdict:
    """An in-process push whose driver refuses the job as late as the budget lets it:
    VERDICT_GRACE past the deadline."""

    async def push(self, job: Job, *, push_timeout: float) -> None:
        await asyncio.sleep(push_timeout + VERDICT_GRACE)  # the broker's fsync, simulated
        raise PushTimeout("refused at the end of its verdict grace; nothing stored")


def test_the_smtp_side_hears_a_verdict_given_at_the_end_of_its_grace() -> None:
    """The SMTP side's own bound must not turn a definite "not stored" into "outcome unknown"
    (DeliveryTimeout): a refusal at deadline + VERDICT_GRACE reaches it as PushTimeout."""
    settings = SmtpJobsConfig.model_construct(pipeline="p", push_timeout=0.05)
    delivery = JobsDelivery(_LateVerdict(), settings)
    event = EmailEvent(
        id="e1",
        uuid="u1",
        remote_addr="127.0.0.1",
        received_at=datetime.now(UTC),
        envelope=Envelope(from_="a@b.c", to=("d@e.f",), helo="h", size=0),
        authentication=None,
        message=Message(None, "", (), (), (), (), {}, "", ""),
    )
    with pytest.raises(PushTimeout) as raised:
        asyncio.run(delivery.deliver(event))
    assert not isinstance(raised.value, DeliveryTimeout)
