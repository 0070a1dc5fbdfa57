"""A test's view of one mailrunner's inbox: what arrived since the test began, waited for
without polling, and the faults the server is to answer with next.

Only the HTTP API is used (the route table in `mailrunner.api.routes`), so a Mailbox works
against any server — in this process, another process or another machine — exactly as a
test written in another language does with `GET /messages/wait`. The calls block; a test
running on an event loop awaits `await_for`, which blocks a worker thread instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

from pydantic import BaseModel

from mailrunner.api import routes
from mailrunner.api.client import call_once
from mailrunner.api.routes import Route
from mailrunner.api.schemas import (
    MAX_LIST_LIMIT,
    MAX_WAIT_TIMEOUT,
    WAIT_REPLY_GRACE,
    MessageSummaryWire,
)
from mailrunner.config import DEFAULT_INBOX_PIPELINE
from mailrunner.errors import NotFound
from mailrunner.faults import FaultRule, FaultStage
from mailrunner.testing.email import Email

DEFAULT_TIMEOUT = 5.0
"""How long `wait_for` waits when the test does not say."""
CALL_TIMEOUT = 10.0
"""Longest one API call other than a wait may take."""
SETTLE_POLL = 0.01
"""How often `assert_no_messages` asks whether the inbox has stored every accepted message."""
R = TypeVar("R")


def _assertion_failed(message: str) -> NoReturn:
    raise AssertionError(message)


def utc_now() -> str:
    """Now as the inbox writes `received_at` (UTC, milliseconds, `Z`), cut to the
    millisecond so that a message accepted in this very millisecond still counts as later."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    return now.replace("+00:00", "Z")


def query_of(query: str | None, *, to: str | None = None, subject: str | None = None) -> str:
    """The search query with `to:` and `subject:` terms for `to` and `subject`, quoted so
    that any text is matched as written."""
    terms = [query or ""]
    terms += [
        f"{key}:{_quoted(value)}"
        for key, value in (("to", to), ("subject", subject))
        if value is not None
    ]
    return " ".join(term for term in terms if term)


def _quoted(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


class Mailbox:
    """The messages a server accepted from `since` on (by their `received_at`; default: when
    the Mailbox was made), and the fault rules added through it, which `close` removes.

    A failed expectation calls `fail` with its explanation: AssertionError by default, the
    pytest fixture passes `pytest.fail`.
    """

    def __init__(
        self,
        api_url: str,
        token: str | None = None,
        *,
        inbox_pipeline: str = DEFAULT_INBOX_PIPELINE,
        fail: Callable[[str], NoReturn] = _assertion_failed,
        since: str | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.since = since or utc_now()
        self._token = token
        self._inbox_pipeline = inbox_pipeline
        self._fail = fail
        self._faults: list[str] = []

    def _call(self, route: Route[R], body: BaseModel | None = None, **request: Any) -> R:
        """One call of `route` on this mailbox's server; `request` as `call_once` takes it
        (`params`, `query`, `timeout`: CALL_TIMEOUT unless given)."""
        request.setdefault("timeout", CALL_TIMEOUT)
        return call_once(self.api_url, self._token, route, body, **request)

    # --- messages ------------------------------------------------------------------------

    def wait_for(
        self,
        query: str | None = None,
        *,
        to: str | None = None,
        subject: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Email:
        """The first message (oldest) that matches, as soon as it is in the inbox; fails,
        listing what did arrive, when none has within `timeout` seconds."""
        __tracebackhide__ = True  # a failure points at the test's line, not at this loop
        search = query_of(query, to=to, subject=subject)
        deadline = time.monotonic() + timeout
        while True:
            # one server wait lasts MAX_WAIT_TIMEOUT at most: a longer one takes several
            left = min(max(deadline - time.monotonic(), 0.0), MAX_WAIT_TIMEOUT)
            answer = self._call(
                routes.WAIT_MESSAGES,
                query={"q": search, "since": self.since, "timeout": f"{left:.3f}"},
                timeout=left + WAIT_REPLY_GRACE,
            )
            if answer.message is not None:
                return self._email(answer.message.id)
            if time.monotonic() >= deadline:
                self._fail(_nothing_came(search, timeout, answer.seen or []))

    async def await_for(
        self,
        query: str | None = None,
        *,
        to: str | None = None,
        subject: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 (wait_for's, whose wait it runs)
    ) -> Email:
        """`wait_for` for a test on an event loop: the loop keeps running (and sending)."""
        __tracebackhide__ = True
        return await asyncio.to_thread(
            self.wait_for, query, to=to, subject=subject, timeout=timeout
        )

    def messages(self, query: str | None = None) -> list[Email]:
        """Every message in the inbox that matches, oldest first."""
        return [self._email(summary.id) for summary in self._summaries(query)]

    def assert_no_messages(self, query: str | None = None, *, within: float = 0.5) -> None:
        """Wait `within` seconds, then until the inbox holds every message accepted by then,
        and fail if any matches."""
        __tracebackhide__ = True
        time.sleep(within)
        self._settle(within + CALL_TIMEOUT)
        arrived = self._summaries(query)
        if arrived:
            where = f" matching {query!r}" if query else ""
            self._fail(f"expected no message{where}, got {len(arrived)}:\n{_listed(arrived)}")

    def clear(self) -> None:
        """Forget what arrived so far: delete it from the inbox, and see only what comes
        from now on (a message accepted before still on its way to the inbox included)."""
        since, self.since = self.since, utc_now()
        self._call(routes.CLEAR_MESSAGES, query={"q": f"after:{since}"})

    def _summaries(self, query: str | None) -> list[MessageSummaryWire]:
        found: list[MessageSummaryWire] = []
        while True:
            page = self._call(
                routes.LIST_MESSAGES,
                query={
                    "q": query or "",
                    "since": self.since,
                    "limit": MAX_LIST_LIMIT,
                    "offset": len(found),
                },
            )
            found += page.messages
            if not page.messages or len(found) >= page.total:
                return found[::-1]

    def _email(self, message_id: str) -> Email:
        event = self._call(routes.GET_MESSAGE, params={"id": message_id})
        return Email.from_json(json.dumps(event))

    def _settle(self, timeout: float) -> None:
        """Until no accepted message is still on its way to the inbox: a 250 is sent only
        once the inbox's job is stored, so its pipeline holding none means all are in."""
        __tracebackhide__ = True
        deadline = time.monotonic() + timeout
        while True:
            stat = self._call(routes.STAT, params={"name": self._inbox_pipeline})
            if stat.queued + stat.reserved + stat.delayed == 0:
                return
            if time.monotonic() > deadline:
                self._fail(f"the inbox did not store its pending messages within {timeout}s")
            time.sleep(SETTLE_POLL)

    # --- faults --------------------------------------------------------------------------

    def fail_next(
        self,
        stage: FaultStage = "rcpt",
        match: str = "*",
        reply: str = "451 4.7.1 Try later",
        times: int | None = 1,
    ) -> str:
        """Make the server answer `reply` (code, optional enhanced code, text) to the next
        `times` commands of `stage` whose value matches the glob `match` (None: every one
        until the test ends); the rule's id."""
        rule = FaultRule.model_validate(
            {"stage": stage, "match": match, "action": "reply", "reply": reply, "times": times}
        )
        return self._add_fault(rule)

    def disconnect_next(
        self, stage: FaultStage = "data", match: str = "*", times: int | None = 1
    ) -> str:
        """Make the server drop the connection at the next `times` commands of `stage` whose
        value matches `match`; the rule's id."""
        rule = FaultRule(stage=stage, match=match, action="disconnect", times=times)
        return self._add_fault(rule)

    def _add_fault(self, rule: FaultRule) -> str:
        added: str = self._call(routes.ADD_FAULT, rule).id
        self._faults.append(added)
        return added

    def close(self) -> None:
        """Remove the fault rules added through this Mailbox (used up ones are gone already)."""
        while self._faults:
            with contextlib.suppress(NotFound):
                self._call(routes.DELETE_FAULT, params={"id": self._faults.pop()})


def _nothing_came(search: str, timeout: float, seen: list[MessageSummaryWire]) -> str:
    wanted = f"no message matching {search!r}" if search else "no message"
    if not seen:
        return f"{wanted} arrived within {timeout:g}s, nor any other since the test began"
    return (
        f"{wanted} arrived within {timeout:g}s; what arrived since the test began"
        f" ({len(seen)}):\n{_listed(seen)}"
    )


def _listed(summaries: list[MessageSummaryWire]) -> str:
    return "\n".join(
        f"  {m.received_at}  from {m.from_ or '<>'} to {m.to} subject {m.subject!r}"
        for m in summaries
    )
