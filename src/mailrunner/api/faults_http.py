"""The faults part of the management API: add, list and remove the rules a test sets.

Handlers are named as their routes in api/routes.py. They answer 404 unless the server runs
with `smtp.faults_api: true` or configured rules: a production server never lets an API
client make it refuse mail.
"""

from __future__ import annotations

from aiohttp import web

from mailrunner.api.bodies import read_body
from mailrunner.api.feature import enabled
from mailrunner.api.schemas import (
    CountResponse,
    EmptyRequest,
    FaultAdded,
    FaultsResponse,
    FaultWire,
    OkResponse,
)
from mailrunner.errors import NotFound
from mailrunner.faults import FaultRule
from mailrunner.smtp.faults import FaultBook


def _json(model: OkResponse | CountResponse | FaultAdded | FaultsResponse) -> web.Response:
    return web.json_response(model.model_dump(mode="json"))


class FaultsApi:
    """The /faults handlers over the server's FaultBook (None: the faults API is off)."""

    def __init__(self, book: FaultBook | None) -> None:
        self._book_or_none = book

    @property
    def _book(self) -> FaultBook:
        return enabled(self._book_or_none, "the faults API is off on this server (smtp.faults_api)")

    async def add_fault(self, request: web.Request) -> web.Response:
        book = self._book
        rule: FaultRule = await read_body(request, FaultRule)
        return _json(FaultAdded(id=book.add(rule)))

    async def list_faults(self, request: web.Request) -> web.Response:
        faults = [
            FaultWire(id=fault.id, remaining=fault.remaining, **fault.rule.model_dump())
            for fault in self._book.active()
        ]
        return _json(FaultsResponse(faults=faults))

    async def delete_fault(self, request: web.Request) -> web.Response:
        book = self._book
        await read_body(request, EmptyRequest)
        fault_id = request.match_info["id"]
        if not book.remove(fault_id):
            raise NotFound(f"no fault rule {fault_id!r}")
        return _json(OkResponse())

    async def clear_faults(self, request: web.Request) -> web.Response:
        book = self._book
        await read_body(request, EmptyRequest)
        return _json(CountResponse(count=book.clear()))
