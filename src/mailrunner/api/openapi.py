"""/openapi.json, generated from the route table the server serves and the client calls, so
the document cannot drift from either."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import is_dataclass
from typing import Any

from pydantic import BaseModel, TypeAdapter

from mailrunner import __version__
from mailrunner.api.routes import JSON, Route
from mailrunner.api.schemas import (
    DEFAULT_WAIT_TIMEOUT,
    MAX_LIST_LIMIT,
    MAX_WAIT_TIMEOUT,
    ErrorResponse,
)

_ERROR_STATUSES = {
    401: "rpc.token is set and the bearer token is missing or wrong",
    403: "without rpc.token, the Host is not this API's address, a loopback name or one of"
    " rpc.allowed_hosts, or the Origin is another site; or a Declare reaches beyond the"
    " configuration file (rpc.allow_any_declare)",
    404: "unknown pipeline, pool, connection, message (an id that is not a UUID too) or"
    " attachment; or the inbox is off",
    409: "a pipeline of that name exists with other settings, or the pool is at max_workers"
    " or down to its last worker",
    422: "the request is malformed, or q is not a valid search query (position says where),"
    " or since names no message in the inbox",
    503: "the driver or pool is unavailable, or timed out; or the inbox closed during a wait"
    " (the server is stopping)",
}
_QUERY_SCHEMAS: dict[str, dict[str, Any]] = {
    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIST_LIMIT},
    "offset": {"type": "integer", "minimum": 0},
    "q": {"type": "string", "description": "A search query, as in the web UI's search box"},
    "remote": {"type": "string", "enum": ["1"], "description": "Let remote images load"},
    "since": {
        "type": "string",
        "description": "Only messages received after this inbox message id, or at or after"
        " this ISO 8601 time (UTC unless it has an offset; to the millisecond)."
        " A wait's default is the request's arrival",
    },
    "timeout": {
        "type": "number",
        "minimum": 0,
        "maximum": MAX_WAIT_TIMEOUT,
        "default": DEFAULT_WAIT_TIMEOUT,
        "description": "Seconds to wait (10s, 1m are read too)",
    },
}
"""Every query parameter a route names, by name."""
_BODY_STATUSES = {
    413: "the body is over the request limit, which follows smtp.max_message_size",
    415: "the body is not sent as Content-Type: application/json",
}


def openapi_document(routes: Iterable[Route[Any]]) -> dict[str, Any]:
    """OpenAPI 3.1 for the route table: every route with its request and response schemas."""
    components: dict[str, Any] = {}
    paths: dict[str, Any] = {}

    def ref(model: type[Any]) -> dict[str, str]:
        """A model's or a dataclass's (PipelineStat) schema, once, among the components."""
        template = "#/components/schemas/{model}"
        if issubclass(model, BaseModel):
            schema = model.model_json_schema(ref_template=template)
        else:
            schema = TypeAdapter(model).json_schema(ref_template=template)
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    error = {"content": {JSON: {"schema": ref(ErrorResponse)}}}
    for route in routes:
        operation: dict[str, Any] = {"summary": route.summary, "operationId": route.name}
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in route.parameters
        ]
        parameters += [
            {
                "name": name,
                "in": "query",
                "required": False,
                "schema": _QUERY_SCHEMAS[name],
            }
            for name in route.query
        ]
        if parameters:
            operation["parameters"] = parameters
        if route.request is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {route.accepts: {"schema": ref(route.request)}},
            }
        operation["responses"] = {
            "200": {"description": "OK", "content": _ok_content(route, ref)},
            **{
                str(status): {"description": description, **error}
                for status, description in sorted(_statuses(route).items())
            },
        }
        if not route.public:
            operation["security"] = [{"bearer": []}]
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "mailrunner management API", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _ok_content(route: Route[Any], ref: Any) -> dict[str, Any]:
    """A model's schema; an untyped answer is any object in JSON, else text."""
    response = route.response
    if isinstance(response, type) and (issubclass(response, BaseModel) or is_dataclass(response)):
        return {JSON: {"schema": ref(response)}}
    untyped = {"type": "object"} if route.content_type == JSON else {"type": "string"}
    return {route.content_type: {"schema": untyped}}


def _statuses(route: Route[Any]) -> dict[int, str]:
    return _ERROR_STATUSES | (_BODY_STATUSES if route.request is not None else {})
