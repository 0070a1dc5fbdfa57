"""The embedded, durable driver: one SQLite file in WAL mode with synchronous=FULL, called on
the driver's own threads, pushes group-committed. Table, deadlines, restarts: docs/jobs.md#sqlite.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mailrunner.config import SqlitePipelineConfig
from mailrunner.errors import DriverError, DriverUnavailable, PushTimeout
from mailrunner.files import create_directories, write_new_file
from mailrunner.jobs.deadline import COMMIT_WAIT
from mailrunner.jobs.driver import (
    Driver,
    DriverLease,
    Lease,
    LeaseKeeper,
    Nack,
    VerdictListener,
    current_verdict_listener,
)
from mailrunner.jobs.drivers import _common
from mailrunner.jobs.model import FailedJob, Job, QueueStat

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq          INTEGER PRIMARY KEY,
    pipeline     TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    payload      BLOB    NOT NULL,
    headers      TEXT    NOT NULL,
    priority     INTEGER NOT NULL,
    auto_ack     INTEGER NOT NULL,
    available_at REAL    NOT NULL,
    lease        TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    failed_at    REAL,
    last_error   TEXT    NOT NULL DEFAULT '',
    created_at   REAL    NOT NULL,
    UNIQUE (pipeline, id)
);
CREATE INDEX IF NOT EXISTS jobs_by_pipeline ON jobs (pipeline, failed_at, priority, seq);
"""
_JOB_COLUMNS = "id, name, payload, headers, priority, auto_ack"
_ROWS_PER_INSERT = 100
"""Rows per INSERT statement: 900 parameters, under the 999 SQLite allowed before 3.32."""
BUSY_TIMEOUT = COMMIT_WAIT
"""Seconds a statement waits for another connection's lock (a push: at most until its
deadline); a push's caller is asked to wait up to COMMIT_WAIT for its COMMIT."""


@dataclass(slots=True, eq=False)
class _PendingPush:
    jobs: Sequence[Job]
    deadline: float
    future: asyncio.Future[None] = field(repr=False)
    listener: VerdictListener | None = field(default=None, repr=False)
    """The caller's, told when the push's transaction begins (its outcome may then come
    after the deadline)."""

    def expired(self) -> bool:
        return self.future.cancelled() or time.monotonic() >= self.deadline


class SqliteDriver(_common.WaitingReserve, Driver, LeaseKeeper[str]):
    """One pipeline's rows in a SQLite file (`config.path`, default `<data_dir>/jobs.db`)."""

    capabilities = _common.store_capabilities(durable=True)
    idle_poll = 0.25
    """How often an idle reserve looks for jobs pushed by other processes into the same file."""

    def __init__(
        self, name: str, settings: SqlitePipelineConfig, data_dir: Path, *, max_batch: int = 1000
    ) -> None:
        self.name = name
        self.path = settings.config.path or data_dir / "jobs.db"
        self.visibility_timeout = settings.visibility_timeout
        self._data_dir = data_dir
        self._node = ""
        self.commits = 0
        self.max_batch = max_batch
        self._executor: ThreadPoolExecutor | None = None
        self._connection: sqlite3.Connection | None = None
        self._committer: _GroupCommitter | None = None
        self.write_lock = _write_lock(self.path)
        self._changed = asyncio.Event()

    # --- the driver thread -------------------------------------------------------------------

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise _common.not_open(self.name, "sqlite")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, function, *args)
        except sqlite3.Error as error:
            raise self.as_driver_error(error) from error

    def as_driver_error(self, error: sqlite3.Error) -> DriverError:
        return DriverError(f"pipeline {self.name} ({self.path}): {error}")

    def _db(self, busy_timeout: float = BUSY_TIMEOUT) -> sqlite3.Connection:
        if self._connection is None:
            raise _common.not_open(self.name, "sqlite")
        self._connection.execute(f"PRAGMA busy_timeout = {round(busy_timeout * 1000)}")
        return self._connection

    async def _query(self, statement: str, values: Any) -> list[Any]:
        return await self._run(lambda: self._db().execute(statement, values).fetchall())

    async def _execute(self, statement: str, values: Any) -> int:
        """A write of one statement (its own transaction)."""

        def write() -> int:
            with self.write_lock:
                return self._db().execute(statement, values).rowcount

        return await self._run(write)

    def _writing(
        self, busy_timeout: float = BUSY_TIMEOUT
    ) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A write transaction on the driver's connection, after this process's other writers
        of the file (`_write_lock`)."""
        return _transaction(self._db(busy_timeout), self.write_lock)

    def _open_sync(self) -> int:
        """Open the file and give back the leases of this node's earlier processes (how many)."""
        create_directories(self.path.parent)  # 0700; an existing file or folder keeps its mode
        self._node = self._node or _common.node_id(self._data_dir)
        with contextlib.suppress(FileExistsError):  # 0600 (and so -wal, -shm): jobs hold mail
            write_new_file(self.path, b"")
        self._connection = _connect(self.path)
        self._connection.executescript(SCHEMA)
        return self._connection.execute(
            "UPDATE jobs SET lease = NULL, available_at = MIN(available_at, ?)"
            " WHERE pipeline = ? AND lease GLOB ? AND NOT lease GLOB ?",
            (time.time(), self.name, f"{self._node}/*", _common.lease_prefix(self._node) + "*"),
        ).rowcount

    def _close_sync(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    async def open(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"sqlite-{self.name}")
        try:
            reclaimed = await self._run(self._open_sync)
            connection = await asyncio.to_thread(_connect, self.path)
        except (DriverError, OSError, sqlite3.Error) as error:
            raise DriverUnavailable(
                f"pipeline {self.name}: cannot open {self.path}: {error}"
            ) from error
        self._committer = _GroupCommitter(self, connection)
        _common.log_reclaimed("sqlite", self.name, reclaimed)

    async def close(self) -> None:
        if self._executor is None:
            return
        if self._committer is not None:
            committer, self._committer = self._committer, None
            await asyncio.to_thread(committer.stop)
        await self._run(self._close_sync)
        executor, self._executor = self._executor, None
        await asyncio.to_thread(executor.shutdown, wait=True)

    # --- push: group commit ------------------------------------------------------------------

    async def push(self, jobs: Sequence[Job], *, deadline: float) -> None:
        _common.time_left(self.name, deadline)
        if self._committer is None:
            raise _common.not_open(self.name, "sqlite")
        future = asyncio.get_running_loop().create_future()
        self._committer.submit(_PendingPush(jobs, deadline, future, current_verdict_listener()))
        await future

    def stored(self, futures: list[asyncio.Future[None]]) -> None:
        """On the loop after a commit: its pushes return, and a waiting reserve wakes up."""
        _resolve_all(futures, None)
        self._changed.set()

    # --- reserve and leases ------------------------------------------------------------------

    def _reserve_sync(self, limit: int) -> list[DriverLease[str]]:
        now, leases = time.time(), []
        with self._writing(1.0) as db:
            rows = db.execute(
                f"SELECT seq, attempts, {_JOB_COLUMNS} FROM jobs WHERE pipeline = ? AND"
                " failed_at IS NULL AND available_at <= ? ORDER BY priority, seq LIMIT ?",
                (self.name, now, limit),
            ).fetchall()
            for seq, attempts, *job_columns in rows:
                token = _common.lease_prefix(self._node) + uuid.uuid4().hex
                db.execute(
                    "UPDATE jobs SET attempts = attempts + 1, lease = ?, available_at = ?"
                    " WHERE seq = ?",
                    (token, now + self.visibility_timeout, seq),
                )
                job = _common.stored_job(self.name, job_columns)
                leases.append(DriverLease(self, job, attempts + 1, token))
        return leases

    async def _take(self, limit: int) -> tuple[list[Lease], float | None]:
        """One reserve transaction (none while another process writes), and when nothing was
        leased, how long until a job is due."""
        try:
            leases: list[Lease] = list(await self._run(self._reserve_sync, limit))
        except DriverError as error:
            if "locked" not in str(error):
                raise
            leases = []
        if leases:
            return leases, None
        ((next_due,),) = await self._query(
            "SELECT MIN(available_at) FROM jobs WHERE pipeline = ? AND failed_at IS NULL",
            (self.name,),
        )
        return leases, None if next_due is None else max(0.0, next_due - time.time())

    async def _update_lease(self, lease: DriverLease[str], change: str, *values: Any) -> None:
        """Change (`UPDATE jobs SET …` or `DELETE FROM jobs`) a leased job, only if the lease
        is still the current one."""
        await self._execute(
            f"{change} WHERE pipeline = ? AND id = ? AND lease = ?",
            (*values, self.name, lease.job.id, lease.handle),
        )
        self._changed.set()

    async def extend(self, lease: DriverLease[str]) -> None:
        expiry = time.time() + self.visibility_timeout
        await self._update_lease(lease, "UPDATE jobs SET available_at = ?", expiry)

    async def ack(self, lease: DriverLease[str]) -> None:
        await self._update_lease(lease, "DELETE FROM jobs")

    async def ack_many(self, leases: Sequence[DriverLease[str]]) -> None:
        """One transaction for them all: acked one by one, each was a commit and an fsync of
        its own, competing for the write lock with the pushes' group commits."""
        rows = [(self.name, lease.job.id, lease.handle) for lease in leases]
        await self._run(self._delete_leased, rows)
        self._changed.set()

    def _delete_leased(self, rows: list[tuple[str, str, str]]) -> None:
        with self._writing() as db:
            db.executemany("DELETE FROM jobs WHERE pipeline = ? AND id = ? AND lease = ?", rows)

    async def release(self, lease: DriverLease[str]) -> None:
        await self._update_lease(
            lease,
            "UPDATE jobs SET available_at = ?, lease = NULL, attempts = attempts - 1",
            time.time(),
        )

    async def nack(self, lease: DriverLease[str], nack: Nack) -> None:
        column = "available_at" if nack.requeue else "failed_at"
        await self._update_lease(
            lease,
            f"UPDATE jobs SET {column} = ?, lease = NULL, last_error = ?, headers = ?",
            time.time() + (nack.delay if nack.requeue else 0.0),
            nack.error,
            json.dumps(nack.headers if nack.headers is not None else lease.job.headers),
        )

    # --- inspection and the failed list ------------------------------------------------------

    async def stat(self) -> QueueStat:
        ((queued, delayed, reserved, failed),) = await self._query(
            "SELECT TOTAL(failed_at IS NULL AND available_at <= :now),"
            " TOTAL(failed_at IS NULL AND lease IS NULL AND available_at > :now),"
            " TOTAL(failed_at IS NULL AND lease IS NOT NULL AND available_at > :now),"
            " TOTAL(failed_at IS NOT NULL) FROM jobs WHERE pipeline = :pipeline",
            {"now": time.time(), "pipeline": self.name},
        )
        return QueueStat(int(queued), int(delayed), int(reserved), int(failed))

    async def _peek(self, limit: int) -> list[Job]:
        rows = await self._query(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE pipeline = :pipeline AND failed_at IS NULL"
            " AND (lease IS NULL OR available_at <= :now)"
            " ORDER BY available_at > :now, priority, seq LIMIT :limit",
            {"pipeline": self.name, "now": time.time(), "limit": limit},
        )
        return [_common.stored_job(self.name, row) for row in rows]

    async def _failed(self, limit: int) -> list[FailedJob]:
        rows = await self._query(
            f"SELECT last_error, attempts, failed_at, {_JOB_COLUMNS} FROM jobs"
            " WHERE pipeline = ? AND failed_at IS NOT NULL ORDER BY failed_at, seq LIMIT ?",
            (self.name, limit),
        )
        return [FailedJob(_common.stored_job(self.name, row[3:]), *row[:3]) for row in rows]

    def _failed_where(self, ids: Sequence[str] | None) -> tuple[str, list[Any]]:
        """The WHERE clause choosing this pipeline's failed jobs (all, or those in `ids`)."""
        where = "pipeline = ? AND failed_at IS NOT NULL"
        if ids is None:
            return where, [self.name]
        return f"{where} AND id IN ({', '.join('?' * len(ids))})", [self.name, *ids]

    def _purge_failed_sync(self, ids: Sequence[str] | None) -> list[str]:
        """Read the chosen ids and delete their rows in one transaction, so the ids returned
        are exactly the rows deleted (no DELETE … RETURNING: it needs SQLite 3.35)."""
        where, values = self._failed_where(ids)
        with self._writing() as db:
            rows = db.execute(f"SELECT id FROM jobs WHERE {where} ORDER BY seq", values)
            removed = [job_id for (job_id,) in rows.fetchall()]
            db.execute(f"DELETE FROM jobs WHERE {where}", values)
        return removed

    async def _retry_failed(self, ids: Sequence[str] | None) -> int:
        where, values = self._failed_where(ids)
        count = await self._execute(
            "UPDATE jobs SET failed_at = NULL, attempts = 0, lease = NULL, available_at = ?"
            f" WHERE {where}",
            [time.time(), *values],
        )
        self._changed.set()
        return count

    async def _purge_failed(self, ids: Sequence[str] | None) -> list[str]:
        return await self._run(self._purge_failed_sync, ids)

    async def destroy(self) -> None:
        await self._execute("DELETE FROM jobs WHERE pipeline = ?", (self.name,))


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(
        path, isolation_level=None, timeout=BUSY_TIMEOUT, check_same_thread=False
    )
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    return connection


@contextlib.contextmanager
def _transaction(
    db: sqlite3.Connection, lock: threading.Lock | None, *, begun: bool = False
) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE unless `begun` (the write lock at once: two readers that both go on to
    write cannot deadlock), then COMMIT, or ROLLBACK on any error; inside `lock` unless None
    (`begun`: its caller holds it already)."""
    with lock if lock is not None else contextlib.nullcontext():
        if not begun:
            db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


_WRITE_LOCKS: dict[Path, threading.Lock] = {}
_WRITE_LOCKS_GUARD = threading.Lock()


def _write_lock(path: Path) -> threading.Lock:
    """One lock per file for this process's writers: SQLite's busy handler, finding the file's
    write lock taken, sleeps 1, 2, 5, 10 ms and more before it tries again, so the push,
    reserve and ack threads of two pipelines in one file (a pipeline and the inbox's) spent
    their time asleep; queued on this lock, each writes as soon as the last one committed.
    Other processes' writers are still waited for by the busy timeout."""
    key = path.resolve()
    with _WRITE_LOCKS_GUARD:
        return _WRITE_LOCKS.setdefault(key, threading.Lock())


def _resolve_all(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for future in futures:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


class _GroupCommitter:
    """The push side of the driver: its own thread and connection, committing back to back
    without waiting for the event loop between transactions."""

    def __init__(self, driver: SqliteDriver, connection: sqlite3.Connection) -> None:
        self._driver = driver
        self._connection = connection
        self._max_batch = driver.max_batch
        self._loop = asyncio.get_running_loop()
        self._queue: queue.SimpleQueue[_PendingPush | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._serve, name=f"sqlite-{driver.name}-push", daemon=True
        )
        self._thread.start()

    def submit(self, pending: _PendingPush) -> None:
        self._queue.put(pending)

    def stop(self) -> None:
        """Finish what was submitted, then close the connection (blocking)."""
        self._queue.put(None)
        self._thread.join()

    def _serve(self) -> None:
        try:
            while (batch := self._next_batch()) is not None:
                self._commit(batch)
        finally:
            self._connection.close()

    def _next_batch(self) -> list[_PendingPush] | None:
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < self._max_batch and not self._queue.empty():  # the only reader
            if (pending := self._queue.get_nowait()) is None:
                self._queue.put(None)
                break
            batch.append(pending)
        return batch

    def _settle(self, batch: Sequence[_PendingPush], error: BaseException | None) -> None:
        """One wake-up of the loop per batch, not per push."""
        futures = [pending.future for pending in batch]
        self._loop.call_soon_threadsafe(_resolve_all, futures, error)

    def _commit(self, batch: list[_PendingPush]) -> None:
        while batch := self._drop_expired(batch):
            try:
                stored = self._write(batch)
            except sqlite3.Error as error:
                self._settle(batch, self._driver.as_driver_error(error))
                return
            if stored is None:
                continue
            self._driver.commits += 1
            written = set(stored)
            self._drop_expired([p for p in batch if p not in written])
            self._loop.call_soon_threadsafe(self._driver.stored, [p.future for p in stored])
            return

    def _drop_expired(self, batch: list[_PendingPush]) -> list[_PendingPush]:
        expired = [p for p in batch if p.expired()]
        if not expired:
            return batch
        name = self._driver.name
        self._settle(expired, PushTimeout(f"pipeline {name}: not stored before the push deadline"))
        gone = set(expired)
        return [p for p in batch if p not in gone]

    def _write(self, batch: list[_PendingPush]) -> list[_PendingPush] | None:
        """Write the batch in one transaction; None if the write lock was not had by the nearest
        deadline. Deadlines are checked again under the lock: a push given up is not written."""
        lock = self._driver.write_lock
        if not lock.acquire(timeout=max(0.001, self._time_left(batch))):
            return None
        try:
            return self._write_locked(batch)
        finally:
            lock.release()

    @staticmethod
    def _time_left(batch: list[_PendingPush]) -> float:
        return min(p.deadline for p in batch) - time.monotonic()

    def _write_locked(self, batch: list[_PendingPush]) -> list[_PendingPush] | None:
        db = self._connection
        db.execute(f"PRAGMA busy_timeout = {max(1, int(self._time_left(batch) * 1000))}")
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            if "locked" in str(error) or "busy" in str(error):
                return None
            raise
        with _transaction(db, None, begun=True):
            stored = [p for p in batch if not p.expired()]
            self._committing(stored)
            now = time.time()
            rows = [_row(self._driver.name, job, now) for push in stored for job in push.jobs]
            for start in range(0, len(rows), _ROWS_PER_INSERT):
                chunk = rows[start : start + _ROWS_PER_INSERT]
                db.execute(_insert_rows(len(chunk)), [value for row in chunk for value in row])
        return stored

    def _committing(self, stored: list[_PendingPush]) -> None:
        """From here on these pushes' outcome is the COMMIT's, even past their deadline:
        their callers are told to wait for it (one wake-up of the loop per transaction)."""
        listeners = [p.listener for p in stored if p.listener is not None]
        if listeners:
            due = time.monotonic() + COMMIT_WAIT
            self._loop.call_soon_threadsafe(_tell_all, listeners, due)


def _tell_all(listeners: list[VerdictListener], due: float) -> None:
    for listener in listeners:
        listener(due)


@functools.cache
def _insert_rows(count: int) -> str:
    """One INSERT for `count` rows: executemany would run a statement per row, and each one
    hands the GIL to the event loop and back, which stalls the loop more than the disk does."""
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * count)
    return (
        "INSERT OR IGNORE INTO jobs (pipeline, id, name, payload, headers, priority,"
        f" auto_ack, available_at, created_at) VALUES {values}"
    )


def _row(pipeline: str, job: Job, now: float) -> tuple[Any, ...]:
    return (pipeline, *_common.stored_fields(job), now + job.options.delay, now)
