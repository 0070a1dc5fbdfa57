"""What a test needs from the machine: skipped on a laptop that lacks it, a failure in CI.

CI (`MAILRUNNER_REQUIRE_BROKERS=1` or `CI=true`) runs as root on Linux, where every such need
is met; a skip there would hide a test that no longer runs, as the broker fixtures' rule says.
"""

from __future__ import annotations

import os
import shutil
import socket
from typing import NoReturn

import pytest

REQUIRE_TOOLS = (
    os.environ.get("MAILRUNNER_REQUIRE_BROKERS") == "1" or os.environ.get("CI") == "true"
)


def unavailable(reason: str) -> NoReturn:
    """Skip the test for `reason`, or fail it where every need must be met."""
    if REQUIRE_TOOLS:
        pytest.fail(f"{reason}; CI runs as root on Linux, where this must work")
    pytest.skip(reason)


def require_broker(name: str, host: str, port: int) -> None:
    """Make sure a broker listens on host:port: skipped locally when it does not, a failure in
    CI (`MAILRUNNER_REQUIRE_BROKERS=1`), where every broker must be there."""
    try:
        with socket.create_connection((host, port), timeout=2.0):
            return
    except OSError as error:
        reason = f"{name} is not reachable on {host}:{port} ({error})"
    if REQUIRE_TOOLS:
        pytest.fail(f"{reason}; CI must start it before the tests")
    pytest.skip(reason)


def swaks_path() -> str:
    """The swaks binary; skipped locally when missing, a failure in CI."""
    path = shutil.which("swaks")
    if path is None:
        unavailable("swaks is not installed (apt-get install swaks)")
    return path
