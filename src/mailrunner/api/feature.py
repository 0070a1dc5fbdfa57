"""A part of the server that a setting may turn off (the inbox, the faults API), as the
handlers that serve it reach it."""

from __future__ import annotations

from typing import TypeVar

from mailrunner.errors import NotFound

T = TypeVar("T")


def enabled(part: T | None, off: str) -> T:
    """`part`, or NotFound (404) whose message `off` names the setting that turned it off,
    so that a client learns why, not only that it is missing."""
    if part is None:
        raise NotFound(off)
    return part
