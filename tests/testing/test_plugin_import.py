"""pytest loads the plugin in every run of every project that has mailrunner installed: it
must cost that run nothing and change nothing until a test asks for one of its fixtures."""

from __future__ import annotations

import json
import subprocess
import sys

_PROBE = """
import asyncio, json, logging, sys
root = logging.getLogger()
before = (list(root.handlers), root.level, type(asyncio.get_event_loop_policy()).__name__)
import mailrunner.testing.plugin as plugin
after = (list(root.handlers), root.level, type(asyncio.get_event_loop_policy()).__name__)
print(json.dumps({
    "modules": sorted(sys.modules),
    "fixtures": [n for n in ("mailbox", "mailrunner_server") if hasattr(plugin, n)],
    "unchanged": before == after,
}))
"""

HEAVY = ("aiohttp", "aiosmtpd", "pydantic", "structlog", "orjson", "yaml", "mailrunner.app")


def test_importing_the_plugin_loads_no_server_library_and_changes_no_global_setup() -> None:
    run = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    probe = json.loads(run.stdout)

    assert probe["fixtures"] == ["mailbox", "mailrunner_server"], "the probe saw the plugin"
    loaded = [
        name
        for name in probe["modules"]
        if any(name == heavy or name.startswith(f"{heavy}.") for heavy in HEAVY)
    ]
    assert loaded == [], f"importing the plugin loaded {loaded}"
    assert probe["unchanged"], "importing the plugin changed logging or the event-loop policy"
