"""SMTP hook verdicts from real worker processes (`hooks_worker.py`, written with the SDK),
asked through the SMTP pool as the server asks them: what the worker's code decides comes back,
and whatever goes wrong (a timeout, a crash, an answer that is no verdict) becomes the
configured error verdict, logged, with the broken worker replaced and a sound one kept.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from mailrunner.config import PoolConfig
from mailrunner.errors import BadAnswer
from mailrunner.pool.hooks import HookRunner
from mailrunner.pool.pool import WorkerPool
from mailrunner.smtp.delivery import PoolDelivery
from mailrunner.wire.hooks import HOOK_STAGES, HookContext, Reply
from mailrunner.wire.protocol import SMTP_MODE
from mailrunner.wire.smtp import CONTINUE, decode_delivery_answer
from support.events import BUILDER, arrival

WORKER = Path(__file__).with_name("hooks_worker.py")
ERROR_VERDICT = Reply(451, "4.3.0", "Temporary failure, try again later")
HOOKS_TIMEOUT = 0.5
"""Short, so the slow hook (3 s) surely overruns it; the fast ones answer in milliseconds."""

pytestmark = pytest.mark.asyncio


@asynccontextmanager
async def hooks_pool(
    tmp_path: Path, env: Mapping[str, str] | None = None, on_error: Reply | None = ERROR_VERDICT
) -> AsyncIterator[tuple[WorkerPool, HookRunner]]:
    config = PoolConfig(num_workers=1, allocate_timeout=5, exec_timeout=5, destroy_timeout=2)
    environment = {"HOOKS_LOG": str(tmp_path / "hooks.log"), **(env or {})}
    pool = WorkerPool(SMTP_MODE, config, [sys.executable, str(WORKER)], environment)
    await pool.start()
    try:
        yield pool, HookRunner(pool, HOOK_STAGES, HOOKS_TIMEOUT, on_error)
    finally:
        await pool.stop()


def at(stage: Any, **fields: Any) -> HookContext:
    return HookContext(hook=stage, uuid="conn-1", remote_addr="127.0.0.1:40000", **fields)


def pid_of(pool: WorkerPool) -> int:
    [worker] = pool.workers()
    return worker.pid


def message(size: int) -> bytes:
    return b"From: a@example.com\r\nSubject: s\r\n\r\n" + b"x" * size + b"\r\n"


async def test_each_stage_gets_what_the_worker_code_decides(tmp_path: Path) -> None:
    small = await BUILDER.build(arrival(), message(10))
    large = await BUILDER.build(arrival(), message(5000))
    async with hooks_pool(tmp_path, {"MAX_SIZE": "2000"}) as (_, hooks):
        verdicts = [
            await hooks.verdict(at("connect")),
            await hooks.verdict(at("helo", helo="client")),
            await hooks.verdict(at("mail", mail_from="ann@example.com")),
            await hooks.verdict(at("mail", mail_from="blocked@example.com")),
            await hooks.verdict(at("rcpt", rcpt="bob@example.com")),
            await hooks.verdict(at("rcpt", rcpt="alice@example.com")),
            await hooks.verdict(at("data", recipients=("alice@example.com",)), small.to_json()),
            await hooks.verdict(at("data", recipients=("alice@example.com",)), large.to_json()),
        ]

    assert verdicts == [
        None,
        None,
        None,
        Reply(550, "5.7.1", "Sender blocked"),
        Reply(550, "5.1.1", "No such user"),
        None,
        None,
        Reply(552, "5.3.4", "Message too big for this mailbox"),
    ]
    stages = [line.split()[0] for line in (tmp_path / "hooks.log").read_text().splitlines()]
    assert stages == ["connect", "helo", "mail", "mail", "rcpt", "rcpt", "data", "data"]


async def test_a_hook_past_its_timeout_is_killed_and_its_late_refusal_reaches_no_later_stage(
    tmp_path: Path,
) -> None:
    """`slow@` would answer 550 after 3 s; the next question, asked at once of the same
    (one-worker) pool, must get the fresh worker's ACCEPT, never that stale 550."""
    async with hooks_pool(tmp_path) as (pool, hooks):
        first = pid_of(pool)
        with capture_logs() as logs:
            timed_out = await hooks.verdict(at("rcpt", rcpt="slow@example.com"))
        following = await hooks.verdict(at("rcpt", rcpt="alice@example.com"))
        second = pid_of(pool)

    assert timed_out == ERROR_VERDICT
    assert following is None, "a late answer of the killed worker was read as a verdict"
    assert second != first, "the worker that overran hooks_timeout must be replaced"
    [failed] = [entry for entry in logs if entry["event"] == "hook failed"]
    assert (failed["stage"], failed["answered"]) == ("rcpt", ERROR_VERDICT.line)
    assert "ExecTimeout" in failed["reason"]


async def test_a_crashing_hook_gives_the_error_verdict_and_a_new_worker(tmp_path: Path) -> None:
    async with hooks_pool(tmp_path) as (pool, hooks):
        first = pid_of(pool)
        crashed = await hooks.verdict(at("rcpt", rcpt="crash@example.com"))
        after = await hooks.verdict(at("rcpt", rcpt="bob@example.com"))  # waits for the new one
        second = pid_of(pool)

    assert crashed == ERROR_VERDICT
    assert second != first
    assert after == Reply(550, "5.1.1", "No such user")


async def test_a_hook_that_raises_gives_the_error_verdict_and_the_worker_keeps_serving(
    tmp_path: Path,
) -> None:
    async with hooks_pool(tmp_path) as (pool, hooks):
        first = pid_of(pool)
        raised = await hooks.verdict(at("rcpt", rcpt="raise@example.com"))
        after = await hooks.verdict(at("rcpt", rcpt="bob@example.com"))
        same = pid_of(pool)

    assert raised == ERROR_VERDICT
    assert after == Reply(550, "5.1.1", "No such user")
    assert same == first


@pytest.mark.parametrize("answer", ["2xx", "continue", "huge"])
async def test_an_answer_that_is_no_verdict_gives_the_error_verdict_and_keeps_the_worker(
    tmp_path: Path, answer: str
) -> None:
    """A 2xx, a delivery decision answering a hook (the wrong kind of frame), a 100 KB reply:
    all sound frames, so the worker stays; none is applied."""
    async with hooks_pool(tmp_path) as (pool, hooks):
        first = pid_of(pool)
        with capture_logs() as logs:
            refused = await hooks.verdict(at("rcpt", rcpt=f"raw-{answer}@example.com"))
        after = await hooks.verdict(at("rcpt", rcpt="alice@example.com"))
        same = pid_of(pool)

    assert refused == ERROR_VERDICT
    assert after is None
    assert same == first
    [failed] = [entry for entry in logs if entry["event"] == "hook failed"]
    assert "BadVerdict" in failed["reason"]


async def test_hooks_on_error_accept_lets_a_failed_hook_go_on_and_still_logs_it(
    tmp_path: Path,
) -> None:
    async with hooks_pool(tmp_path, on_error=None) as (_, hooks):
        with capture_logs() as logs:
            crashed = await hooks.verdict(at("rcpt", rcpt="crash@example.com"))

    assert crashed is None
    [failed] = [entry for entry in logs if entry["event"] == "hook failed"]
    assert failed["answered"] == "accept"


async def test_a_worker_serving_no_hooks_fails_each_hook_to_the_error_verdict(
    tmp_path: Path,
) -> None:
    async with hooks_pool(tmp_path, {"NO_HOOKS": "1"}) as (_, hooks):
        assert await hooks.verdict(at("rcpt", rcpt="alice@example.com")) == ERROR_VERDICT


async def test_the_same_worker_answers_emails_with_a_refusal_or_continue(tmp_path: Path) -> None:
    spam = await BUILDER.build(arrival(), b"Subject: spam\r\n\r\nbuy\r\n")
    ham = await BUILDER.build(arrival(), b"Subject: hello\r\n\r\nhi\r\n")
    async with hooks_pool(tmp_path) as (pool, _):
        answers = [decode_delivery_answer(*await pool.exec(e.to_json())) for e in (spam, ham)]

    assert answers == [Reply(554, "5.7.1", "Spam"), CONTINUE]


BEHAVIOUR_WORKER = Path(__file__).with_name("behaviour_worker.py")


@pytest.mark.parametrize(
    "answer",
    [
        "ACCEPT",  # a hook's verdict where an email's answer was due
        '{"code":250,"enhanced":"2.0.0","text":"OK"}',
        '{"code":550,"enhanced":"5.1.1","text":"' + "x" * 3000 + '"}',
    ],
    ids=["hook verdict", "2xx", "oversized"],
)
async def test_an_email_answered_with_no_decision_nor_refusal_is_a_bad_answer(
    tmp_path: Path, answer: str
) -> None:
    config = PoolConfig(num_workers=1, allocate_timeout=5, exec_timeout=5, destroy_timeout=2)
    pool = WorkerPool(SMTP_MODE, config, [sys.executable, str(BEHAVIOUR_WORKER)], {})
    event = await BUILDER.build(arrival(), f"Subject: answer:{answer}\r\n\r\nx\r\n".encode())
    await pool.start()
    try:
        with pytest.raises(BadAnswer, match="expected CONTINUE, CLOSE or a 4xx/5xx reply"):
            await PoolDelivery(pool).deliver(event)
    finally:
        await pool.stop()
