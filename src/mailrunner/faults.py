"""The fault rules' vocabulary, shared by the configuration (`smtp.faults`), the SMTP side
that applies them (smtp/faults.py) and the API that adds them (`POST /faults`).

Its own small module, so the API's schemas and the CLI can name a rule without loading the
whole configuration.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mailrunner.durations import Duration


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


FaultStage = Literal["connect", "helo", "mail", "rcpt", "data"]
"""Where a fault rule acts: before the greeting, at HELO/EHLO, MAIL, RCPT, or after DATA's
final dot (before the reply)."""
FaultAction = Literal["reply", "disconnect", "delay"]
MAX_FAULT_DELAY = 300.0
MAX_FAULT_RULES = 1000
"""Rules one server holds at most, configured and added through the API together."""
_FAULT_REPLY = re.compile(r"^\s*([45]\d\d)(?:\s+([45]\.\d{1,3}\.\d{1,3}))?(?:\s+(.*?))?\s*$", re.S)


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
    match: str = Field(default="*", min_length=1, max_length=400)
    action: FaultAction = "reply"
    reply: FaultReply | None = None
    delay: Duration | None = Field(default=None, gt=0, le=MAX_FAULT_DELAY)
    times: int | None = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _action_fields(self) -> FaultRule:
        if (self.action == "reply") != (self.reply is not None):
            raise ValueError("reply is required with action 'reply', and only with it")
        if (self.action == "delay") != (self.delay is not None):
            raise ValueError("delay is required with action 'delay', and only with it")
        return self
