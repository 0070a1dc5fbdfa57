"""The fault rules' vocabulary, shared by the configuration (`smtp.faults`), the SMTP side
that applies them (smtp/faults.py) and the API that adds them (`POST /faults`).

Its own small module, so the API's schemas and the CLI can name a rule without loading the
whole configuration.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from mailrunner.durations import parse_duration


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


FaultStage = Literal["connect", "helo", "mail", "rcpt", "data"]
"""Where a fault rule acts: before the greeting, at HELO/EHLO, MAIL, RCPT, or after DATA's
final dot (before the reply)."""
FaultAction = Literal["reply", "disconnect", "delay"]
MAX_FAULT_DELAY = 300.0
MAX_FAULT_RULES = 1000
"""Rules one server holds at most, configured and added through the API together."""
FaultDelay = Annotated[float, Field(gt=0, le=MAX_FAULT_DELAY), BeforeValidator(parse_duration)]
"""Seconds, or a duration as `2s`. Not `Duration` with Field bounds: the bounds must come
before the parsing validator, or /openapi.json shows them as `gt`/`le`, which no JSON Schema
reader knows."""
_FAULT_REPLY = re.compile(r"^\s*([45]\d\d)(?:\s+([45]\.\d{1,3}\.\d{1,3}))?(?:\s+(.*?))?\s*$", re.S)


def _no_bool(value: object) -> object:
    """`times: true` reads as "always", which is `null`: refused, not taken as 1 time."""
    if value is True or value is False:
        raise ValueError("must be a number of matches, or null for until removed")
    return value


class FaultReply(_Rule):
    """The reply a fault rule sends: a 4xx or 5xx code, an optional RFC 3463 enhanced code of
    the same class, and a line of printable ASCII text. Written as an object or as one
    string, `"550 5.1.1 No such user"` (the CLI's and the pytest fixture's form)."""

    code: int = Field(ge=400, le=599)
    enhanced: str | None = Field(default=None, pattern=r"^[45]\.\d{1,3}\.\d{1,3}$")
    text: str = Field(default="Injected fault", min_length=1, max_length=400, pattern=r"^[ -~]+$")

    @model_validator(mode="before")
    @classmethod
    def _from_line(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        found = _FAULT_REPLY.match(value)
        if found is None:
            raise ValueError(
                f"{value!r} is not a reply: write a 4xx or 5xx code, an optional enhanced"
                " code and a text, e.g. '550 5.1.1 No such user'"
            )
        code, enhanced, text = found.groups()
        return {"code": int(code), "enhanced": enhanced, **({"text": text} if text else {})}

    @model_validator(mode="after")
    def _same_class(self) -> FaultReply:
        if self.enhanced is not None and self.enhanced[0] != str(self.code)[0]:
            raise ValueError(f"enhanced code {self.enhanced} is not of the class of {self.code}")
        return self

    @property
    def line(self) -> str:
        """The reply as sent: `550 5.1.1 No such user`."""
        return " ".join(part for part in (str(self.code), self.enhanced, self.text) if part)


class FaultRule(_Rule):
    """One deterministic fault: at `stage`, when `match` (`fnmatchcase` on the lowercased
    client IP, HELO name, address, or any recipient at `data`) fits, `action` happens, for
    `times` matching commands (None: until removed). `reply` is required for `reply`,
    `delay` (seconds, at most 300) for `delay`; neither is allowed for another action."""

    stage: FaultStage
    match: Annotated[str, AfterValidator(str.lower)] = Field(
        default="*", min_length=1, max_length=400
    )
    """Lowercased as given, like the values it is compared with: `Bounce@*` cannot be a
    rule that silently never fits."""
    action: FaultAction = "reply"
    reply: FaultReply | None = None
    delay: FaultDelay | None = None
    times: Annotated[int, Field(ge=1), BeforeValidator(_no_bool)] | None = 1

    @model_validator(mode="after")
    def _action_fields(self) -> FaultRule:
        for field in ("reply", "delay"):
            given = getattr(self, field) is not None
            if self.action == field and not given:
                raise ValueError(f"{field} is required with action {field!r}")
            if self.action != field and given:
                raise ValueError(f"{field} is not allowed with action {self.action!r}")
        return self

    @model_serializer(mode="wrap")
    def _keep_unlimited(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """`times: null` means until removed, not "not given" (that is 1 time): it stays in
        the JSON even for a client that leaves out empty fields, as ApiClient does."""
        data: dict[str, Any] = handler(self)
        if self.times is None:
            data["times"] = None
        return data
