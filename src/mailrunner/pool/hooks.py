"""SMTP hooks on the SMTP worker pool: one frame per stage, one verdict back.

The SMTP side asks `HookRunner.verdict` at each stage listed in `smtp.hooks` and gets None
(go on) or the `Reply` to send. Whatever goes wrong on the way (no free worker, a worker
that does not answer within `smtp.hooks_timeout` and is killed, a crash, an ERROR frame, an
answer that is no verdict) is logged here and becomes the configured error verdict: 451
4.3.0, or None with `smtp.hooks_on_error: accept`. So the SMTP side never sees a pool error
from a hook, and a late answer cannot reach another stage: its worker is gone.
"""

from __future__ import annotations

import enum
from collections.abc import Collection

import structlog

from mailrunner.errors import PoolError
from mailrunner.pool.pool import WorkerPool
from mailrunner.wire.errors import BadVerdict
from mailrunner.wire.hooks import (
    HookContext,
    HookName,
    Reply,
    decode_verdict,
    encode_context,
)

log = structlog.get_logger("mailrunner.hooks")


class _Default(enum.Enum):
    RUNNERS = enum.auto()
    """`verdict`'s failed hook answers with the runner's `on_error`."""


class HookRunner:
    """Asks `pool`'s workers for verdicts at `stages`; `on_error` is the verdict of a hook
    that failed (the SMTP side passes its 451, or None to accept), unless the caller of
    `verdict` names its own (the auth stage does: accepting would let anyone in)."""

    def __init__(
        self,
        pool: WorkerPool,
        stages: Collection[HookName],
        timeout: float,
        on_error: Reply | None,
    ) -> None:
        self._pool = pool
        self._stages = frozenset(stages)
        self._timeout = timeout
        self._on_error = on_error

    def runs(self, stage: HookName) -> bool:
        """Whether `stage` is configured: the SMTP side asks nothing at the others."""
        return stage in self._stages

    async def verdict(
        self,
        context: HookContext,
        body: bytes = b"",
        *,
        on_error: Reply | _Default | None = _Default.RUNNERS,
    ) -> Reply | None:
        """None to go on, else the reply that refuses the command; `body` is the event JSON
        at `data`; `on_error`, when given, replaces the runner's for this call."""
        try:
            answer, answer_body = await self._pool.exec(
                encode_context(context),
                body,
                answer_within=self._timeout,
                allocate_within=self._timeout,
            )
            return decode_verdict(answer, answer_body)
        except (PoolError, BadVerdict) as error:
            if on_error is _Default.RUNNERS:
                on_error = self._on_error
            log.warning(
                "hook failed",
                stage=context.hook,
                uuid=context.uuid,
                reason=f"{type(error).__name__}: {error}",
                answered=on_error.line if on_error is not None else "accept",
            )
            return on_error
