"""Schemathesis hooks for test_api_openapi.py (loaded through the `hooks` config key).

Generated declares of broker pipelines (redis, amqp, nats) become memory pipelines before
they are sent: the fuzzer must not create queues and streams with random names on whatever
broker runs on this machine, and where no broker (or its client library) is available the
declare answers 503 DriverUnavailable, which is the documented answer, not a server fault.
Every other request is sent as generated, and every 5xx fails the run.
"""

from __future__ import annotations

from typing import Any

import schemathesis

BROKER_DRIVERS = frozenset({"redis", "amqp", "nats"})


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    """Runs in every phase (unlike map_body, which the coverage phase does not apply)."""
    declare = (case.operation.method.upper(), case.operation.path) == ("POST", "/jobs/pipelines")
    driver = case.body.get("driver") if declare and isinstance(case.body, dict) else None
    if isinstance(driver, str) and driver in BROKER_DRIVERS:
        case.body = {**case.body, "driver": "memory"}
    return case
