"""Stopping background tasks without losing what they died of."""

from __future__ import annotations

import asyncio

import structlog

log = structlog.get_logger("mailrunner")


async def cancel_and_wait(task: asyncio.Task[None], what: str) -> None:
    """Cancel `task` and wait until it has ended. Waiting never raises the task's outcome
    (so a cancel of the caller itself still propagates); an error the task had died of
    before is logged instead of vanishing into "Task exception was never retrieved"."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("background task had failed", task=what, exc_info=error)
