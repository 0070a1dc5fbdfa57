"""A context that is a JSON object (a job's, a hook's), read field by field.

The frame kinds whose context is JSON check it alike: an object, then each field of the type
it must have, a `BadContext` naming the kind of context and the field at fault otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from mailrunner.wire.errors import BadContext

__all__ = ["ContextObject"]


@dataclass(frozen=True, slots=True)
class ContextObject:
    """The fields of one context; `kind` ("job context", "hook context") starts each error."""

    kind: str
    fields: dict[str, object]

    @classmethod
    def read(cls, kind: str, data: bytes) -> ContextObject:
        try:
            fields: object = json.loads(data)
        except ValueError as exc:
            raise BadContext(f"{kind} is not JSON: {exc}") from exc
        if not isinstance(fields, dict):
            raise BadContext(f"{kind} must be a JSON object, got {type(fields).__name__}")
        return cls(kind, fields)

    def get(self, key: str) -> object:
        return self.fields.get(key)

    def error(self, key: str, expected: str, value: object) -> BadContext:
        return BadContext(f"{self.kind}: {key!r} must be {expected}, got {value!r}")

    def text(self, key: str) -> str:
        value = self.get(key)
        if not isinstance(value, str):
            raise self.error(key, "a string", value)
        return value
