"""The in-process driver: a priority and delay queue in memory, for tests and for developers
who consume in the same process. Not durable, and bounded (docs/jobs.md#drivers)."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from mailrunner.config import MemoryPipelineConfig
from mailrunner.errors import DriverError
from mailrunner.jobs.driver import Driver, DriverLease, Lease, LeaseKeeper, Nack
from mailrunner.jobs.drivers._common import WaitingReserve, selection, store_capabilities, time_left
from mailrunner.jobs.model import FailedJob, Job, QueueStat

_ORDER = itertools.count()


@dataclass(slots=True)
class _Entry:
    job: Job
    due_at: float
    order: int = field(default_factory=lambda: next(_ORDER))
    attempts: int = 0
    token: str | None = None
    failed: FailedJob | None = None

    def leased(self, now: float) -> bool:
        return self.token is not None and self.due_at > now

    def state(self, now: float) -> str:
        if self.failed is not None:
            return "failed"
        return "reserved" if self.leased(now) else "delayed" if self.due_at > now else "queued"

    def key(self) -> tuple[int, int]:
        return (self.job.options.priority, self.order)


class MemoryDriver(WaitingReserve, Driver, LeaseKeeper[str]):
    """Jobs in a dict; a reserve scans for the best due job (fine for in-process volumes)."""

    capabilities = store_capabilities(durable=False)
    idle_poll = math.inf
    """No poll: every change comes through this object and sets `_changed`."""

    def __init__(self, name: str, settings: MemoryPipelineConfig, data_dir: Path) -> None:
        self.name = name
        self.visibility_timeout = settings.visibility_timeout
        self.max_queued = settings.config.max_queued
        self.entries: dict[str, _Entry] = {}
        self.failed_count = 0
        """Entries on the failed list, kept as they move so a push need not count them."""
        self._changed = asyncio.Event()

    async def open(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """Nothing to disconnect; jobs stay in this object."""

    async def push(self, jobs: Sequence[Job], *, deadline: float) -> None:
        time_left(self.name, deadline)
        now = time.monotonic()
        new: dict[str, Job] = {}
        for job in jobs:
            if job.id not in self.entries:
                new.setdefault(job.id, job)
        waiting = len(self.entries) - self.failed_count
        if waiting + len(new) > self.max_queued:
            raise DriverError(
                f"pipeline {self.name}: {waiting} jobs are waiting, {len(new)} more would pass"
                f" max_queued ({self.max_queued}); nothing was stored"
            )
        for job_id, job in new.items():
            self.entries[job_id] = _Entry(job, now + job.options.delay)
        self._changed.set()

    def _current(self, lease: DriverLease[str]) -> _Entry | None:
        """The lease's entry, if the lease is still its current one."""
        entry = self.entries.get(lease.job.id)
        return entry if entry is not None and entry.token == lease.handle else None

    async def extend(self, lease: DriverLease[str]) -> None:
        entry = self._current(lease)
        if entry is not None:
            entry.due_at = time.monotonic() + self.visibility_timeout

    async def ack(self, lease: DriverLease[str]) -> None:
        if self._current(lease) is not None:
            del self.entries[lease.job.id]

    async def release(self, lease: DriverLease[str]) -> None:
        entry = self._current(lease)
        if entry is not None:
            entry.token = None
            entry.attempts -= 1
            entry.due_at = time.monotonic()
            self._changed.set()

    async def nack(self, lease: DriverLease[str], nack: Nack) -> None:
        entry = self._current(lease)
        if entry is None:
            return
        if nack.headers is not None:
            entry.job = replace(entry.job, headers=nack.headers)
        entry.token = None
        if nack.requeue:
            entry.due_at = time.monotonic() + nack.delay
            self._changed.set()
        else:
            entry.failed = FailedJob(entry.job, nack.error, entry.attempts, time.time())
            self.failed_count += 1

    async def _take(self, limit: int) -> tuple[list[Lease], float | None]:
        """The leases, and seconds until the next job (or lease expiry) is due."""
        now = time.monotonic()
        leases: list[Lease] = []
        due = [e for e in self.entries.values() if e.failed is None and e.due_at <= now]
        for entry in sorted(due, key=_Entry.key)[:limit]:
            entry.attempts += 1
            entry.token = uuid.uuid4().hex
            entry.due_at = now + self.visibility_timeout
            leases.append(DriverLease(self, entry.job, entry.attempts, entry.token))
        pending = [e.due_at - now for e in self.entries.values() if e.failed is None]
        return leases, max(0.0, min(pending)) if pending else None

    async def stat(self) -> QueueStat:
        now = time.monotonic()
        count = Counter(entry.state(now) for entry in self.entries.values())
        return QueueStat(count["queued"], count["delayed"], count["reserved"], count["failed"])

    async def _peek(self, limit: int) -> list[Job]:
        now = time.monotonic()
        waiting = sorted(
            (e for e in self.entries.values() if e.failed is None and not e.leased(now)),
            key=lambda e: (e.due_at > now, *e.key()),
        )
        return [e.job for e in waiting[:limit]]

    async def _failed(self, limit: int) -> list[FailedJob]:
        failed = [e.failed for e in self.entries.values() if e.failed is not None]
        return sorted(failed, key=lambda f: f.failed_at)[:limit]

    def _take_failed(self, ids: Sequence[str] | None) -> list[_Entry]:
        """The failed entries `ids` chooses, taken off the failed list."""
        wanted = selection(ids)
        entries = [e for e in self.entries.values() if e.failed is not None and wanted(e.job.id)]
        for entry in entries:
            entry.failed = None
        self.failed_count -= len(entries)
        return entries

    async def _retry_failed(self, ids: Sequence[str] | None) -> int:
        entries = self._take_failed(ids)
        for entry in entries:
            entry.attempts, entry.due_at = 0, time.monotonic()
        self._changed.set()
        return len(entries)

    async def _purge_failed(self, ids: Sequence[str] | None) -> list[str]:
        return [self.entries.pop(entry.job.id).job.id for entry in self._take_failed(ids)]

    async def destroy(self) -> None:
        self.entries.clear()
        self.failed_count = 0
