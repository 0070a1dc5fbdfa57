"""The inbox's part of the management API: list, search, open, mark, delete, and /events.

Handlers are named as their routes in api/routes.py; ApiServer mounts them beside its own,
behind the same middlewares (trust, token or session, JSON-only changes, error statuses).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from datetime import UTC, datetime
from urllib.parse import quote

from aiohttp import hdrs, web

from mailrunner.api.bodies import read_body
from mailrunner.api.feature import enabled
from mailrunner.api.routes import BINARY, EVENT_STREAM, RFC822
from mailrunner.api.schemas import (
    DEFAULT_WAIT_TIMEOUT,
    MAX_LIST_LIMIT,
    MAX_OPEN_WAITS,
    MAX_WAIT_TIMEOUT,
    WAIT_SEEN_LIMIT,
    CountResponse,
    EmptyRequest,
    OkResponse,
)
from mailrunner.durations import parse_duration
from mailrunner.errors import ApiError, InvalidJob, NotFound
from mailrunner.inbox.feed import Feed
from mailrunner.inbox.preview import HTML_CSP, REMOTE_HTML_CSP
from mailrunner.inbox.query import Query, Received, Term, parse
from mailrunner.inbox.service import Inbox, summary_json
from mailrunner.inbox.store import Summary

DEFAULT_PAGE = 50
"""Messages per page when the caller does not say: the UI's page."""
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_NO_SNIFF = {"X-Content-Type-Options": "nosniff"}
_SSE_HEADERS = {
    hdrs.CONTENT_TYPE: EVENT_STREAM,
    hdrs.CACHE_CONTROL: "no-cache",
    "X-Accel-Buffering": "no",
}
_SSE_OPENING = b"retry: 1000\n\n"
"""Sent first, so the client knows the stream is open; EventSource reconnects after 1 s."""
HANGUP_CHECK = 1.0
"""How often a wait looks whether its client is still there: aiohttp tells a handler nothing
when its client hangs up and runs it to its end, so an abandoned wait would hold its waiter
(and a query at every store) for all of its `timeout`."""


def _ok() -> web.Response:
    return web.json_response(OkResponse().model_dump(mode="json"))


def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name, str(default))
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise InvalidJob(f"{name} must be an integer from {low} to {high}")
    return int(text)


def _query(request: web.Request) -> Query:
    """The `q` parameter parsed; QueryError (422 with its position) when it is not valid."""
    return parse(request.query.get("q", ""))


def _timeout(request: web.Request) -> float:
    """The `timeout` parameter: seconds (or `10s`, `1m`), up to MAX_WAIT_TIMEOUT."""
    text = request.query.get("timeout")
    if text is None:
        return DEFAULT_WAIT_TIMEOUT
    try:
        seconds = parse_duration(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_WAIT_TIMEOUT:
        raise InvalidJob(f"timeout must be seconds from 0 to {MAX_WAIT_TIMEOUT:g}, not {text!r}")
    return seconds


def _instant(text: str) -> datetime:
    """An ISO 8601 time, UTC unless it carries an offset; InvalidJob naming `since`."""
    try:
        instant = datetime.fromisoformat(text)
        return instant.replace(tzinfo=UTC) if instant.tzinfo is None else instant.astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidJob(
            f"since must be an inbox message id or an ISO 8601 time, not {text!r}"
        ) from None


def _message_id(request: web.Request) -> str:
    """The `{id}` of the path: an event UUID as events write it, else 404."""
    message_id = request.match_info["id"]
    if not _UUID.fullmatch(message_id):
        raise NotFound(f"no message {message_id!r}: a message id is an event's UUID")
    return message_id


def _missing(message_id: str) -> NotFound:
    return NotFound(f"no message {message_id} in the inbox")


class InboxApi:
    """The inbox routes' handlers; `inbox` None answers 404 (the inbox is off), while
    /events still streams the pipelines' stats from `feed`."""

    def __init__(self, inbox: Inbox | None, feed: Feed) -> None:
        self._inbox_or_none = inbox
        self._feed = feed

    @property
    def _inbox(self) -> Inbox:
        return enabled(self._inbox_or_none, "the inbox is off on this server (inbox.enabled, jobs)")

    async def _since(self, request: web.Request) -> Term | None:
        """The `since` parameter as a term: after a message (by id) or at or after a time.
        A message not in the inbox is 422: "after it" cannot be told without its place
        (deleted, or not stored yet: give a time instead)."""
        text = request.query.get("since")
        if text is None:
            return None
        if not _UUID.fullmatch(text):
            return Received(_instant(text), before=False)
        after = await self._inbox.position(text)
        if after is None:
            raise InvalidJob(f"since: no message {text} in the inbox")
        return after

    async def list_messages(self, request: web.Request) -> web.Response:
        query = _query(request)
        since = await self._since(request)
        if since is not None:
            query = Query((*query.terms, since))
        limit = _int_query(request, "limit", DEFAULT_PAGE, 1, MAX_LIST_LIMIT)
        offset = _int_query(request, "offset", 0, 0, 2**62)
        page = await self._inbox.list(query, limit, offset)
        messages = [summary_json(summary) for summary in page.messages]
        return web.json_response({"total": page.total, "messages": messages})

    async def wait_messages(self, request: web.Request) -> web.Response:
        """The first match since `since` (default: now), once it is stored; on a timeout,
        `seen`: what did arrive since then, whatever `q` says, for the caller to report."""
        arrived = datetime.now(UTC)
        inbox = self._inbox
        query = _query(request)
        timeout = _timeout(request)
        if inbox.waiting >= MAX_OPEN_WAITS:
            raise ApiError(f"{MAX_OPEN_WAITS} waits are open already: try again later", 429)
        since = await self._since(request) or Received(arrived, before=False)
        try:
            async with asyncio.timeout(timeout):
                found = await _unless_hung_up(request, inbox.wait(Query((*query.terms, since))))
        except TimeoutError:
            pass
        else:
            if found is None:
                return web.Response()  # the client hung up: nobody reads an answer
            return web.json_response({"message": summary_json(found), "timed_out": False})
        seen = await inbox.oldest(Query((since,)), WAIT_SEEN_LIMIT)
        answer = {"message": None, "timed_out": True, "seen": [summary_json(s) for s in seen]}
        return web.json_response(answer)

    async def clear_messages(self, request: web.Request) -> web.Response:
        await _read_empty(request)
        deleted = await self._inbox.delete_matching(_query(request))
        return web.json_response(CountResponse(count=len(deleted)).model_dump(mode="json"))

    async def get_message(self, request: web.Request) -> web.Response:
        message_id = _message_id(request)
        found = await self._inbox.get(message_id)
        if found is None:
            raise _missing(message_id)
        event, read = found
        # the stored event is one JSON object: `read` joins it without parsing megabytes
        body = event[:-1] + (b',"read":true}' if read else b',"read":false}')
        return web.Response(body=body, content_type="application/json")

    async def delete_message(self, request: web.Request) -> web.Response:
        await _read_empty(request)
        message_id = _message_id(request)
        if not await self._inbox.delete(message_id):
            raise _missing(message_id)
        return _ok()

    async def mark_read(self, request: web.Request) -> web.Response:
        return await self._mark(request, read=True)

    async def mark_unread(self, request: web.Request) -> web.Response:
        return await self._mark(request, read=False)

    async def _mark(self, request: web.Request, *, read: bool) -> web.Response:
        await _read_empty(request)
        message_id = _message_id(request)
        if not await self._inbox.set_read(message_id, read):
            raise _missing(message_id)
        return _ok()

    async def raw_message(self, request: web.Request) -> web.Response:
        message_id = _message_id(request)
        raw = await self._inbox.raw(message_id)
        if raw is None:
            raise _missing(message_id)
        disposition = f'attachment; filename="{message_id}.eml"'
        headers = {hdrs.CONTENT_DISPOSITION: disposition, **_NO_SNIFF}
        return web.Response(body=raw, content_type=RFC822, headers=headers)

    async def message_html(self, request: web.Request) -> web.Response:
        message_id = _message_id(request)
        html = await self._inbox.html(message_id)
        if html is None:
            raise _missing(message_id)
        remote = request.query.get("remote") == "1"
        headers = {"Content-Security-Policy": REMOTE_HTML_CSP if remote else HTML_CSP}
        return web.Response(
            text=html, content_type="text/html", charset="utf-8", headers=headers | _NO_SNIFF
        )

    async def attachment(self, request: web.Request) -> web.Response:
        message_id = _message_id(request)
        index_text = request.match_info["index"]
        found = None
        if index_text.isascii() and index_text.isdigit():
            found = await self._inbox.attachment(message_id, int(index_text))
        if found is None:
            raise NotFound(f"message {message_id} has no attachment {index_text!r}")
        headers = {hdrs.CONTENT_DISPOSITION: _disposition(found.filename), **_NO_SNIFF}
        # served as bytes to save: the sender chose the type, and it is not ours to render
        return web.Response(body=found.content, content_type=BINARY, headers=headers)

    async def events(self, request: web.Request) -> web.StreamResponse:
        """The live feed until the client goes or the server stops (the stream then ends at
        once). Subscribed before the answer starts, so nothing after it is missed."""
        response = web.StreamResponse(headers=_SSE_HEADERS)
        async with self._feed.subscribe() as subscription:
            try:
                await response.prepare(request)
                await response.write(_SSE_OPENING)
                async for event in subscription:
                    await response.write(event.encode())
            except ConnectionResetError:
                pass  # the client went away
        return response


async def _unless_hung_up(request: web.Request, waiting: Awaitable[Summary]) -> Summary | None:
    """What `waiting` gives; None, and `waiting` cancelled, once the client has hung up."""
    task = asyncio.ensure_future(waiting)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=HANGUP_CHECK)
            if done:
                return task.result()
            if request.transport is None or request.transport.is_closing():
                return None
    finally:
        task.cancel()


async def _read_empty(request: web.Request) -> None:
    """Take the `{}` a deletion or a mark carries (refused if it holds anything)."""
    await read_body(request, EmptyRequest)


def _disposition(filename: str | None) -> str:
    """`attachment`, with the file's name when it has one (RFC 6266: an ASCII fallback and
    the UTF-8 name)."""
    if not filename:
        return "attachment"
    ascii_name = "".join(
        char if char.isascii() and char.isprintable() and char not in '"\\' else "_"
        for char in filename
    )
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"
