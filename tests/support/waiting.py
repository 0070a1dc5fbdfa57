"""Waiting for a condition with a deadline: the tests' one alternative to sleeping."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

WAIT_SECONDS = 10.0


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS) -> None:
    """Poll a condition with a deadline (for state that offers no notification)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)
