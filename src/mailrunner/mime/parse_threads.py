"""The threads large messages are parsed on, which never hold up a stop.

A parse cannot be interrupted. `ThreadPoolExecutor` threads are joined when the interpreter
exits and `shutdown(wait=True)` waits for the parse in progress, so one pathological message
would keep `mailrunner serve` running long after SIGTERM. These threads are daemons, and
`stop()` waits at most its timeout, only for parses whose caller still wants the result: a
parse whose SMTP session was closed is abandoned at once and left to finish on its own.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

import structlog

log = structlog.get_logger("mailrunner.mime")

_P = ParamSpec("_P")
_T = TypeVar("_T")
_Work = tuple["_Parse[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class _Parse(Future[_T]):
    """A parse's future that remembers whether its caller gave up on it: asyncio cancels
    the future of `run_in_executor` when the awaiting session is cancelled, which cannot stop
    a parse already running but tells `stop()` that nobody waits for it."""

    abandoned = False

    def cancel(self) -> bool:
        self.abandoned = True
        return super().cancel()


class ParseThreads(Executor):
    """Up to `threads` daemon threads, started as work arrives, taking parses in order."""

    def __init__(self, threads: int, name: str = "parse") -> None:
        self._max_threads = threads
        self._name = name
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._running: set[_Parse[Any]] = set()
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        parse: _Parse[_T] = _Parse()
        with self._lock:
            if self._closed:
                raise RuntimeError("the parse threads are stopped")
            self._work.put((parse, fn, args, kwargs))
            if len(self._threads) < self._max_threads:
                thread = threading.Thread(
                    target=self._serve, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        return parse

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more parses; with `cancel_futures`, drop the queued ones; with `wait`,
        join the threads (however long the parse in progress takes)."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        if cancel_futures:
            while not self._work.empty():
                queued = self._work.get_nowait()
                if queued is not None:
                    queued[0].cancel()
        for _ in threads:
            self._work.put(None)
        if wait:
            for thread in threads:
                thread.join()

    async def stop(self, grace: float) -> None:
        """Shut down, waiting at most `grace` seconds for the parses still awaited; any parse
        running after that is left to its daemon thread, with a warning."""
        self.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            awaited = [asyncio.wrap_future(p) for p in self._running if not p.abandoned]
        if awaited:
            _, late = await asyncio.wait(awaited, timeout=grace)
            for waiting in late:
                waiting.cancel()  # nothing is copied back to this loop once it is closed
        with self._lock:
            left = len(self._running)
        if left:
            log.warning("parses still running at stop, left to finish on their own", count=left)

    def _serve(self) -> None:
        while (work := self._work.get()) is not None:
            self._run(*work)
            # the message and its parse must not outlive their session while this thread
            # waits for the next one: a 10 MB message would stay held twice
            del work

    def _run(
        self, parse: _Parse[Any], fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Any
    ) -> None:
        with self._lock:
            if not parse.set_running_or_notify_cancel():
                return
            self._running.add(parse)
        try:
            parse.set_result(fn(*args, **kwargs))
        except BaseException as error:  # the caller gets what the parse raised
            parse.set_exception(error)
        finally:
            with self._lock:
                self._running.discard(parse)
