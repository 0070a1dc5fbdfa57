"""Fixtures of the inbox's API and CLI tests: servers with their inbox (inbox_api_support)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from inbox_api_support import InboxServer

from support.server import RunningServer


@pytest.fixture
def start_inbox_server(start_server: Callable[..., RunningServer]) -> Callable[..., InboxServer]:
    """Start servers with the inbox on (`inbox` overrides merged in) and email going through
    the jobs path to it, as `mailrunner serve` runs."""

    def start(**overrides: Any) -> InboxServer:
        inbox = {"enabled": True, **overrides.pop("inbox", {})}
        return InboxServer(start_server(record=False, inbox=inbox, **overrides))

    return start


@pytest.fixture
def inbox_server(start_inbox_server: Callable[..., InboxServer]) -> InboxServer:
    return start_inbox_server()
