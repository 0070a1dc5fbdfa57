"""Fixtures of the inbox's API and CLI tests: servers with an inbox (inbox_api_support)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from inbox_api_support import InboxServer

from mailrunner.api.http import ApiServer
from mailrunner.api.trust import DeclarePolicy
from mailrunner.config import InboxConfig
from mailrunner.inbox.service import Inbox
from support.server import RunningServer


@pytest.fixture
def start_inbox_server(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> Iterator[Callable[..., InboxServer]]:
    """Start servers with an inbox (config overrides as for `start_server`)."""
    started: list[InboxServer] = []

    def start(**overrides: Any) -> InboxServer:
        server = start_server(**overrides)
        config = server.config
        inbox = Inbox(InboxConfig(), tmp_path / f"inbox{len(started)}.db")
        rpc = config.rpc.model_copy(update={"listen": "127.0.0.1:0"})
        api = ApiServer(
            rpc,
            jobs=server.app.jobs,
            smtp=server.app.smtp,
            pools={},
            metrics=server.app.metrics,
            consumed=[],
            max_request=1 << 20,
            declare_policy=DeclarePolicy(config),
            inbox=inbox,
        )

        async def open_and_serve() -> None:
            await inbox.open()
            await api.start()

        server.call(open_and_serve())
        running = InboxServer(server, inbox, api)
        started.append(running)
        return running

    yield start
    for running in started:

        async def stop(running: InboxServer = running) -> None:
            await running.api.stop()
            await running.inbox.close()

        running.server.call(stop())


@pytest.fixture
def inbox_server(start_inbox_server: Callable[..., InboxServer]) -> InboxServer:
    return start_inbox_server()
