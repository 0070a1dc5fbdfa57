"""SIGTERM stops a server whose RabbitMQ went silent within `jobs.shutdown_timeout`.

The pipeline's broker address is a TCP listener of the test's own in front of the machine's
RabbitMQ (which no test may stop): it forwards until told to go silent, then stops passing
bytes on the connections it holds and accepts new ones without ever answering, as a broker
host that hangs does. The server holds a lease of a long job when the broker goes silent.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from support.brokers import amqp_addr
from support.processes import ServeProcess, run_cli
from support.proxy import BrokerProxy
from support.waiting import wait_until

pytestmark = pytest.mark.amqp

SHUTDOWN_TIMEOUT = 3.0
AMQP_TIMEOUT = 3.0
"""`config.timeout`: before, the give-back of the running job added that much to the stop."""
DESTROY_TIMEOUT = 0.5
"""The worker running the job is killed after that long when the pool stops."""
MARGIN = DESTROY_TIMEOUT + 1.0
"""Beyond `shutdown_timeout`: the pool's kill of the worker still running the job (after the
consumers' deadline), then exiting (closing the driver gets only a slice: asserted apart)."""
HERE = Path(__file__).parent


def logged_at(logs: str, event: str) -> float:
    """When the server logged `event` (its first line holding it), in epoch seconds."""
    line = next(line for line in logs.splitlines() if event in line)
    return datetime.fromisoformat(line.split()[0]).timestamp()


def test_sigterm_stops_the_server_within_shutdown_timeout_while_rabbitmq_is_silent(
    queue_name: str, serve: Callable[..., ServeProcess], tmp_path: Path
) -> None:
    with BrokerProxy() as proxy:
        addr = amqp_addr(proxy.port)
        settings: dict[str, Any] = {
            "server": {"command": [sys.executable, str(HERE / "job_worker.py")]},
            "jobs": {
                "pipelines": {
                    "smtp-emails": {"driver": "memory"},
                    "q": {
                        "driver": "amqp",
                        "config": {"addr": addr, "queue": queue_name, "timeout": AMQP_TIMEOUT},
                    },
                },
                "consume": ["q"],
                "shutdown_timeout": SHUTDOWN_TIMEOUT,
                "pool": {"num_workers": 1, "destroy_timeout": DESTROY_TIMEOUT},
            },
        }
        server = serve(**settings)
        api = f"http://127.0.0.1:{server.api_port}"

        def cli_json(*args: str) -> Any:
            done = run_cli(*args, "--server", api, "--json")
            assert done.returncode == 0, done.stderr
            return json.loads(done.stdout)

        cli_json("jobs", "push", "q", "--payload", json.dumps({"do": "sleep", "seconds": 600}))
        wait_until(lambda: cli_json("jobs", "stat", "q")["reserved"] == 1, "the job leased")
        proxy.silence()
        started = time.monotonic()
        code = server.terminate()
        took = time.monotonic() - started
    logs = server.logs()
    # One deadline covers the running job and its give-back; closing the driver (after the
    # pool) adds next to nothing: it waited 2 s for a silent broker's Close-Ok before.
    closing = logged_at(logs, "] stopped ") - logged_at(logs, "] worker pool stopped ")
    assert closing < 1.0, f"closing the jobs drivers took {closing:.1f}s:\n{logs[-3000:]}"
    assert took < SHUTDOWN_TIMEOUT + MARGIN, f"the server took {took:.1f}s to stop:\n{logs[-3000:]}"
    assert code == 0, f"the server exited with {code}:\n{server.logs()[-3000:]}"
