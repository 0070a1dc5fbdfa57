"""Request bodies: validated against their wire model, the large ones parsed on a thread."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from mailrunner.errors import InvalidJob

PARSE_ON_THREAD = 256 * 1024
"""Bodies larger than this (a pushed email) are parsed off the event loop."""


async def read_body(request: web.Request, model: type[BaseModel]) -> Any:
    """The validated request body (`{}` when none was sent); InvalidJob (422) names what is
    wrong with it."""
    try:
        raw = await request.read()
        if len(raw) > PARSE_ON_THREAD:
            return await asyncio.to_thread(model.model_validate_json, raw)
        return model.model_validate_json(raw or b"{}")
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in error.errors()
        )
        raise InvalidJob(f"bad request: {problems}") from None
