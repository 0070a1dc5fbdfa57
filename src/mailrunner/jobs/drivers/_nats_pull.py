"""Pull requests to a JetStream consumer on this process's own inbox, one at a time (under
`lock`), so a job message belongs to the pull in progress; a status message (404, 408) names
its pull in its subject. A message that arrives after its pull gave up is given back at once
(`nak()`, and `on_stray` tells the driver it is no attempt) instead of sitting leased, unseen."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

PULL_MARGIN = 0.25
"""Seconds a waiting pull listens past its expiry for the server's 408."""


class Puller:
    """Pulls from `consumer` on `stream`; a `no_wait` pull listens `no_wait_listen` seconds."""

    def __init__(
        self, stream: str, consumer: str, no_wait_listen: float, on_stray: Callable[[Msg], None]
    ) -> None:
        self.lock = asyncio.Lock()
        self._request_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._no_wait_listen = no_wait_listen
        self._on_stray = on_stray
        self._tokens = itertools.count(1)
        self._current: tuple[str, asyncio.Queue[Msg]] | None = None
        self._sub: Subscription | None = None
        self._inbox = ""

    async def start(self, nc: Client) -> None:
        self._inbox = nc.new_inbox()
        self._sub = await nc.subscribe(self._inbox + ".*", cb=self._route)

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _route(self, msg: Msg) -> None:
        current = self._current
        status = JetStreamContext.is_status_msg(msg)
        if current is not None and (status is None or msg.subject.endswith("." + current[0])):
            current[1].put_nowait(msg)
        elif status is None and msg.reply:
            with contextlib.suppress(Exception):
                self._on_stray(msg)
                await msg.nak()

    async def pull(self, nc: Client, batch: int, expires: float | None) -> list[Msg]:
        """One pull request: `no_wait` when `expires` is None. Call it holding `lock`."""
        token = str(next(self._tokens))
        queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._current = (token, queue)
        request: dict[str, Any] = {"batch": batch}
        if expires is None:
            request["no_wait"] = True
            listen = self._no_wait_listen
        else:
            request["expires"] = max(1_000_000, int(expires * 1e9))
            listen = expires + PULL_MARGIN
        msgs: list[Msg] = []
        try:
            reply = f"{self._inbox}.{token}"
            await nc.publish(self._request_subject, json.dumps(request).encode(), reply=reply)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(listen):
                    while len(msgs) < batch:
                        msg = await queue.get()
                        status = JetStreamContext.is_status_msg(msg)
                        if status is None:
                            msgs.append(msg)
                        elif status != "100":
                            break
        finally:
            self._current = None
            while not queue.empty():  # arrived with the terminating status: keep them
                msg = queue.get_nowait()
                if JetStreamContext.is_status_msg(msg) is None:
                    msgs.append(msg)
        return msgs
