"""What a test needs from the machine: skipped on a laptop that lacks it, a failure in CI.

CI (`MAILRUNNER_REQUIRE_BROKERS=1` or `CI=true`) runs as root on Linux, where every such need
is met; a skip there would hide a test that no longer runs, as the broker fixtures' rule says.
"""

from __future__ import annotations

from typing import NoReturn

import pytest

from conftest import REQUIRE_TOOLS


def unavailable(reason: str) -> NoReturn:
    """Skip the test for `reason`, or fail it where every need must be met."""
    if REQUIRE_TOOLS:
        pytest.fail(f"{reason}; CI runs as root on Linux, where this must work")
    pytest.skip(reason)
