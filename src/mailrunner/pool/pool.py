"""A pool of worker processes that run payloads one at a time each.

The pool owns every child: it starts them in their own process group (so a shell wrapper
cannot leave an orphan), replaces any that die, kills and replaces any that hang or break
the frame protocol, recycles them after `max_jobs`, and on stop asks each to exit before
killing it after `destroy_timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from mailrunner.config import MAX_WORKERS_FACTOR, PoolConfig
from mailrunner.errors import (
    ExecTimeout,
    NoFreeWorker,
    PoolError,
    PoolLimit,
    PoolStopped,
    WorkerCrashed,
    WorkerFailed,
)
from mailrunner.pool.relay import ProcessRelay
from mailrunner.wire.errors import WireError
from mailrunner.wire.frame import (
    Flag,
    Frame,
    FrameError,
    control_frame,
    parse_control,
    payload_frame,
    split_payload,
)
from mailrunner.wire.protocol import MODE_ENV

log = structlog.get_logger("mailrunner.pool")

ANSWER_LIMIT = 16 * 1024 * 1024
"""Largest answer frame accepted from a worker; answers are small, so more means garbage."""
_RESPAWN_BACKOFF_MAX = 30.0


class WorkerState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    WORKING = "working"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What the management API shows about one worker."""

    pid: int
    state: str
    executions: int
    rss_bytes: int
    created: float


def worker_command(command: str | Sequence[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def worker_environment(extra: Mapping[str, str], mode: str) -> dict[str, str]:
    """The server's environment, `server.env`, the pool mode, and our interpreter first in PATH."""
    env = {**os.environ, **extra, MODE_ENV: mode}
    interpreter_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([interpreter_dir, env.get("PATH", os.defpath)])
    return env


class WorkerProcess:
    """One child process and its relay."""

    def __init__(self, process: asyncio.subprocess.Process, pool_name: str) -> None:
        assert process.stdin is not None
        assert process.stdout is not None
        self.process = process
        self.pid = process.pid
        self.relay = ProcessRelay(process.stdin, process.stdout, ANSWER_LIMIT)
        self.state = WorkerState.STARTING
        self.executions = 0
        self.created = time.time()
        self.retiring = False
        self.on_reaped: Callable[[WorkerProcess], None] | None = None
        self._pool_name = pool_name
        self._stderr_task = asyncio.create_task(
            self._pump_stderr(), name=f"worker-{self.pid}-stderr"
        )

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            self.pid, self.state.value, self.executions, self.rss_bytes(), self.created
        )

    def rss_bytes(self) -> int:
        try:
            pages = int(Path(f"/proc/{self.pid}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            return 0
        return pages * os.sysconf("SC_PAGE_SIZE")

    async def handshake(self) -> None:
        """The server speaks first with its pid; the worker answers with its own."""
        await self.relay.send(control_frame({"pid": os.getpid()}))
        answer = await self.relay.receive()
        if Flag.CONTROL not in answer.flags or "pid" not in parse_control(answer):
            raise WorkerCrashed(f"worker {self.pid} answered the handshake without its pid")
        self.state = WorkerState.READY

    async def run(self, context: bytes, body: bytes) -> Frame:
        await self.relay.send(payload_frame(context, body))
        return await self.relay.receive()

    def kill(self) -> None:
        """SIGKILL the worker's whole process group."""
        self.state = WorkerState.STOPPED
        self.relay.close()
        if self.alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    async def stop(self, grace: float) -> None:
        """Ask the worker to exit; kill it after `grace` seconds."""
        self.state = WorkerState.STOPPING
        if self.alive:
            with contextlib.suppress(WorkerCrashed, OSError):
                await self.relay.send(control_frame({"stop": True}))
            self.relay.close()
            try:
                async with asyncio.timeout(grace):
                    await self.process.wait()
            except TimeoutError:
                log.warning("worker ignored stop, killing", pool=self._pool_name, pid=self.pid)
        await self.reap()

    async def reap(self) -> None:
        """Kill if still running, wait for the exit and the last stderr line, let go of it."""
        self.kill()
        await self.process.wait()
        await self._stderr_task
        self.state = WorkerState.STOPPED
        if self.on_reaped is not None:
            self.on_reaped(self)

    async def _pump_stderr(self) -> None:
        stream = self.process.stderr
        assert stream is not None
        while True:
            try:
                line = await stream.readline()
            except ValueError:
                line = await stream.read(65536)
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()
            log.info("worker output", pool=self._pool_name, pid=self.pid, line=text)


class WorkerPool:
    """`num_workers` processes of one command; `exec` runs a payload on a free one."""

    def __init__(
        self, name: str, config: PoolConfig, command: str | Sequence[str], env: Mapping[str, str]
    ) -> None:
        self.name = name
        self.config = config
        self._command = worker_command(command)
        self._env = worker_environment(env, name)
        self._target = config.num_workers
        self._workers: set[WorkerProcess] = set()
        self._idle: asyncio.Queue[WorkerProcess] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._unreaped: set[WorkerProcess] = set()
        """Every child not yet waited for, live or killed, so stop() leaves no pipe open."""
        self._reaping: set[asyncio.Task[None]] = set()
        """Killed workers being waited for; stop() lets these finish instead of cancelling."""
        self._stopping = False

    # --- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every worker; fails (and cleans up) if any cannot start."""
        try:
            await asyncio.gather(*(self._spawn() for _ in range(self._target)))
        except BaseException:
            await self.stop()
            raise
        log.info("worker pool started", pool=self.name, workers=self._target, command=self._command)

    async def stop(self) -> None:
        """Stop every worker within destroy_timeout; none is left behind."""
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*self._reaping)
        await asyncio.gather(*(w.stop(self.config.destroy_timeout) for w in list(self._unreaped)))
        self._unreaped.clear()
        self._workers.clear()
        log.info("worker pool stopped", pool=self.name)

    async def _spawn(self) -> WorkerProcess:
        try:
            process = await self._start_process()
        except OSError as error:
            raise PoolError(f"cannot start {self.name} worker {self._command}: {error}") from error
        worker = WorkerProcess(process, self.name)
        self._unreaped.add(worker)
        worker.on_reaped = self._unreaped.discard
        self._workers.add(worker)
        try:
            async with asyncio.timeout(self.config.allocate_timeout):
                await worker.handshake()
        except (WireError, WorkerCrashed, TimeoutError) as error:
            self._workers.discard(worker)
            self._reap(worker)
            raise PoolError(
                f"{self.name} worker {worker.pid} failed its handshake: {error}"
            ) from error
        self._watch(worker)
        self._idle.put_nowait(worker)
        log.debug("worker started", pool=self.name, pid=worker.pid)
        return worker

    async def _start_process(self) -> asyncio.subprocess.Process:
        """A new worker process. A stop that cancels a respawn while the process is being
        made must not leave it running unseen (uvloop then finds its transport open when the
        loop closes): the process is let finish starting, then killed and waited for."""
        starting = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                *self._command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env,
                start_new_session=True,
            )
        )
        try:
            return await asyncio.shield(starting)
        except asyncio.CancelledError:
            with contextlib.suppress(OSError):
                process = await starting
                process.kill()
                await process.wait()
            raise

    def _background(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _watch(self, worker: WorkerProcess) -> None:
        self._background(self._on_exit(worker), f"worker-{worker.pid}-watch")

    async def _on_exit(self, worker: WorkerProcess) -> None:
        """A worker that dies while idle is replaced at once."""
        await worker.process.wait()
        if worker.state is WorkerState.READY:
            log.warning(
                "idle worker died", pool=self.name, pid=worker.pid, code=worker.process.returncode
            )
            self._replace(worker)

    def _reap(self, worker: WorkerProcess) -> None:
        """Kill now and wait for the exit in the background: a long-running server that
        replaces crashed workers keeps no dead ones (nor their pipes) around."""
        worker.kill()
        task = asyncio.create_task(worker.reap(), name=f"worker-{worker.pid}-reap")
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)

    def _replace(self, worker: WorkerProcess) -> None:
        self._reap(worker)
        self._workers.discard(worker)
        self._drop_idle(worker)
        if not self._stopping and len(self._workers) < self._target:
            self._background(self._respawn(), f"{self.name}-respawn")

    async def _respawn(self) -> None:
        delay = 0.0
        while not self._stopping and len(self._workers) < self._target:
            try:
                await self._spawn()
            except PoolError as error:
                delay = min(_RESPAWN_BACKOFF_MAX, max(0.5, delay * 2))
                log.error("cannot replace worker", pool=self.name, error=str(error), retry_in=delay)
                await asyncio.sleep(delay)

    # --- work --------------------------------------------------------------------------------

    async def exec(
        self,
        context: bytes,
        body: bytes = b"",
        *,
        answer_within: float | None = None,
        allocate_within: float | None = None,
    ) -> tuple[bytes, bytes]:
        """Run one payload; raises NoFreeWorker, ExecTimeout, WorkerCrashed or WorkerFailed.

        `answer_within` and `allocate_within` replace exec_timeout and allocate_timeout for
        this call (an SMTP hook
        is bounded by `smtp.hooks_timeout`). A worker that does not answer in time is killed,
        so an answer it sends later is never read as the answer to another payload."""
        exec_timeout = self.config.exec_timeout if answer_within is None else answer_within
        worker = await self._allocate(allocate_within)
        try:
            async with asyncio.timeout(exec_timeout):
                answer = await worker.run(context, body)
        except TimeoutError:
            log.warning("worker exec timeout, killing", pool=self.name, pid=worker.pid)
            self._replace(worker)
            raise ExecTimeout(
                f"{self.name} worker {worker.pid} did not answer within {exec_timeout}s"
            ) from None
        except (WireError, WorkerCrashed) as error:
            log.warning("worker broke, replacing", pool=self.name, pid=worker.pid, error=str(error))
            self._replace(worker)
            raise WorkerCrashed(f"{self.name} worker {worker.pid}: {error}") from error
        except BaseException:
            self._replace(worker)
            raise
        if Flag.ERROR in answer.flags:
            self._release(worker)
            message = answer.payload.decode("utf-8", "replace")
            raise WorkerFailed(f"{self.name} worker {worker.pid} reported: {message}")
        try:
            parts = _answer_parts(answer)
        except FrameError as error:
            log.warning("worker broke the protocol, replacing", pool=self.name, pid=worker.pid)
            self._replace(worker)
            raise WorkerCrashed(f"{self.name} worker {worker.pid}: {error}") from error
        self._release(worker)
        return parts

    async def _allocate(self, within: float | None = None) -> WorkerProcess:
        if self._stopping:
            raise PoolStopped(f"the {self.name} pool is stopping")
        wait = self.config.allocate_timeout if within is None else within
        try:
            async with asyncio.timeout(wait):
                return await self._next_ready()
        except TimeoutError:
            raise NoFreeWorker(f"no free {self.name} worker within {wait}s") from None

    async def _next_ready(self) -> WorkerProcess:
        while True:
            worker = await self._idle.get()
            if worker.alive and worker.state is WorkerState.READY:
                worker.state = WorkerState.WORKING
                return worker

    def _drop_idle(self, worker: WorkerProcess) -> None:
        """Take a dead worker out of the idle queue now rather than at the next allocation,
        which on a quiet server with a crashing worker might not come for a long time."""
        idle = [self._idle.get_nowait() for _ in range(self._idle.qsize())]
        for other in idle:
            if other is not worker:
                self._idle.put_nowait(other)

    def _release(self, worker: WorkerProcess) -> None:
        worker.executions += 1
        max_jobs = self.config.max_jobs
        if worker.retiring or (max_jobs and worker.executions >= max_jobs):
            self._retire(worker)
            return
        worker.state = WorkerState.READY
        self._idle.put_nowait(worker)

    def _retire(self, worker: WorkerProcess) -> None:
        """Stop a worker gracefully and start its successor."""
        self._workers.discard(worker)
        worker.state = WorkerState.STOPPING
        self._background(worker.stop(self.config.destroy_timeout), f"worker-{worker.pid}-stop")
        if not self._stopping and len(self._workers) < self._target:
            self._background(self._respawn(), f"{self.name}-respawn")

    # --- management --------------------------------------------------------------------------

    def workers(self) -> list[WorkerInfo]:
        return sorted((w.info() for w in self._workers), key=lambda info: info.created)

    async def add_worker(self) -> WorkerInfo:
        """Start one more worker, up to `worker_limit`: each is a process, and the API must
        not let one caller fork the machine to death."""
        limit = self.config.worker_limit
        if self._target >= limit:
            raise PoolLimit(
                f"the {self.name} pool is at its limit of {limit} workers"
                f" ({self.name}.pool.max_workers, default {MAX_WORKERS_FACTOR}x num_workers)"
            )
        self._target += 1
        try:
            return (await self._spawn()).info()
        except PoolError:
            self._target -= 1
            raise

    async def remove_worker(self) -> WorkerInfo:
        """Stop one idle worker (waiting up to allocate_timeout for one) and shrink the pool."""
        if self._target <= 1:
            raise PoolLimit(f"the {self.name} pool keeps at least one worker")
        self._target -= 1
        try:
            worker = await self._allocate()
        except PoolError:
            self._target += 1
            raise
        info = worker.info()
        self._workers.discard(worker)
        await worker.stop(self.config.destroy_timeout)
        return info

    async def reset(self) -> None:
        """Replace every worker: idle ones now, busy ones once they answer."""
        for worker in list(self._workers):
            worker.retiring = True
            if worker.state is WorkerState.READY:
                worker.state = WorkerState.STOPPING
                self._workers.discard(worker)
                self._background(
                    worker.stop(self.config.destroy_timeout), f"worker-{worker.pid}-stop"
                )
        await self._respawn()


def _answer_parts(answer: Frame) -> tuple[bytes, bytes]:
    """(context, body) of a worker's answer; a frame that is not a payload answer is a
    protocol error of that worker."""
    if Flag.CONTROL in answer.flags:
        raise FrameError("a CONTROL frame where the answer to a payload was due")
    return split_payload(answer)
