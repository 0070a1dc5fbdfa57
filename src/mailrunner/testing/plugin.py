"""The pytest plugin (entry point `pytest11: mailrunner`): a mailrunner per test session,
and a `mailbox` per test.

pytest imports this module in every run of every project that has mailrunner installed, so
at import it loads pytest and the standard library only, and changes nothing global (no
logging setup, no event-loop policy): the server and its dependencies load when a test first
asks for a fixture. Under pytest-xdist each worker process has its own session, so its own
server.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from mailrunner.testing.inprocess import InProcessServer
    from mailrunner.testing.mailbox import Mailbox


@pytest.fixture(scope="session")
def mailrunner_config() -> dict[str, Any]:
    """Configuration overrides for the session's server, nested like mailrunner.yaml
    (e.g. `{"smtp": {"max_message_size": 10_000}}`); override this fixture in a conftest."""
    return {}


@pytest.fixture(scope="session")
def mailrunner_server(mailrunner_config: dict[str, Any]) -> Iterator[InProcessServer]:
    """A mailrunner started in this process for the session: SMTP at `smtp_host`:`smtp_port`,
    the API at `api_url`, the inbox on, the faults API on, a temporary data_dir."""
    from mailrunner.testing.inprocess import server  # noqa: PLC0415

    with server(**mailrunner_config) as running:
        yield running


@pytest.fixture
def mailbox(mailrunner_server: InProcessServer) -> Iterator[Mailbox]:
    """The messages the server accepts during this test; fault rules added through it are
    removed when the test ends."""
    from mailrunner.testing.mailbox import Mailbox  # noqa: PLC0415

    box = Mailbox(
        mailrunner_server.api_url,
        mailrunner_server.token,
        inbox_pipeline=mailrunner_server.config.inbox.pipeline,
        fail=pytest.fail,
    )
    yield box
    box.close()
