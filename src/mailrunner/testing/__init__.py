"""Testing an application's email with mailrunner: the pytest plugin's fixtures
(`mailrunner_server`, `mailbox`, `mailrunner_config`), and for any other runner::

    with mailrunner.testing.server() as srv:
        send_signup_mail(smtp_port=srv.smtp_port)
        email = srv.mailbox.wait_for(to="ada@example.com")

pytest loads this package with its plugin in every run of a project that has mailrunner
installed, so nothing is imported until a name is used: a run that never touches the
fixtures pays for no server, model or logging library (`__getattr__` below).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mailrunner.testing.email import Email
    from mailrunner.testing.inprocess import InProcessServer, aserver, server
    from mailrunner.testing.mailbox import Mailbox

__all__ = ["Email", "InProcessServer", "Mailbox", "aserver", "server"]

_HOMES = {
    "Email": "mailrunner.testing.email",
    "Mailbox": "mailrunner.testing.mailbox",
    "InProcessServer": "mailrunner.testing.inprocess",
    "aserver": "mailrunner.testing.inprocess",
    "server": "mailrunner.testing.inprocess",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
