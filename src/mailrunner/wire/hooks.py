"""SMTP hook payloads: the session so far goes out, a verdict on the command comes back.

At each stage listed in `smtp.hooks` the server sends a worker of the SMTP pool a frame whose
context is `HookContext` as JSON (always beginning `{"hook":`, which is how a worker tells it
from an email, whose context is the event); at `data` the body is the whole event JSON, else
it is empty. The worker answers with an empty body and the context `ACCEPT`, or a reply as
JSON `{"code": 550, "enhanced": "5.1.1", "text": "No such user"}` (4xx or 5xx only: a hook
refuses, it never decides what success says). The SMTP pool's delivery worker may answer the
same reply JSON instead of CONTINUE / CLOSE (`wire/smtp.py`).

With `smtp.auth.mode: hook` the `auth` stage decides on AUTH: its context also carries the
client's `password` (the one context that does; none is logged, `repr` leaves it out) and its
`auth` is `{"username", "verified": false}`. A refusal (535 5.7.8 for wrong credentials) is
sent as it is; `ACCEPT` authenticates the session.

Both directions are coded here once: the server encodes contexts and decodes verdicts, the SDK
(`worker/hooks.py`) decodes contexts and encodes verdicts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

from mailrunner.wire.context import ContextObject
from mailrunner.wire.errors import BadContext, BadVerdict

__all__ = [
    "ACCEPT",
    "AUTH_STAGE",
    "HOOK_STAGES",
    "MAX_VERDICT_BYTES",
    "WRONG_CREDENTIALS",
    "HookAuth",
    "HookContext",
    "HookName",
    "HookStage",
    "Reply",
    "decode_context",
    "decode_reply",
    "decode_verdict",
    "encode_context",
    "encode_reply",
    "encode_verdict",
    "is_hook_context",
]

HookStage = Literal["connect", "helo", "mail", "rcpt", "data"]
"""The stages `smtp.hooks` lists."""
HOOK_STAGES: Final[tuple[HookStage, ...]] = get_args(HookStage)
"""In the order a session meets them."""
AuthStage = Literal["auth"]
AUTH_STAGE: Final[AuthStage] = "auth"
"""Asked at AUTH with `smtp.auth.mode: hook` (not listed in `smtp.hooks`)."""
HookName = HookStage | AuthStage
"""Every stage a hook context may name."""
_HOOK_NAMES: Final[tuple[HookName, ...]] = (*HOOK_STAGES, AUTH_STAGE)

ACCEPT: Final = "ACCEPT"
"""The verdict context that lets the command go on as if no hook had run."""

MAX_REPLY_LINE: Final = 510
"""RFC 5321 4.5.3.1.5: a reply line is at most 512 octets, CRLF included."""
MAX_VERDICT_BYTES: Final = 2048
"""Longest verdict read: a reply line, JSON-escaped twice over, fits; more is garbage, refused
before it is parsed."""

_HOOK_PREFIX: Final = b'{"hook":'
_ENHANCED = re.compile(r"[45]\.[0-9]{1,3}\.[0-9]{1,3}")
_REPLY_KEYS: Final = frozenset({"code", "enhanced", "text"})


@dataclass(frozen=True, slots=True)
class Reply:
    """A refusal: `Reply(550, "5.1.1", "No such user")` is sent as `550 5.1.1 No such user`.

    Checked when built (TypeError, ValueError), so a worker's mistake raises in the worker
    (its traceback in the server log) rather than reaching a client: `code` 400-599,
    `enhanced` of the same class (RFC 3463), `text` one line of printable ASCII.
    """

    code: int
    enhanced: str
    text: str

    def __post_init__(self) -> None:
        if isinstance(self.code, bool) or not isinstance(self.code, int):
            raise TypeError(f"reply code must be an integer, got {self.code!r}")
        if not 400 <= self.code <= 599:
            raise ValueError(f"reply code must be 4xx or 5xx, got {self.code}")
        if not isinstance(self.enhanced, str) or not isinstance(self.text, str):
            raise TypeError(f"enhanced code and text must be strings: {self!r}")
        if not _ENHANCED.fullmatch(self.enhanced):
            raise ValueError(f"enhanced code must look like 5.1.1, got {self.enhanced!r}")
        if self.enhanced[0] != str(self.code)[0]:
            raise ValueError(f"enhanced code {self.enhanced} is not of the class of {self.code}")
        if not self.text:
            raise ValueError("reply text must not be empty")
        if not (self.text.isascii() and self.text.isprintable()):
            raise ValueError(f"reply text must be one line of printable ASCII: {self.text[:80]!r}")
        if len(self.line) > MAX_REPLY_LINE:
            raise ValueError(f"reply line is {len(self.line)} characters, at most {MAX_REPLY_LINE}")

    @property
    def line(self) -> str:
        """The reply as the SMTP client reads it."""
        return f"{self.code} {self.enhanced} {self.text}"


WRONG_CREDENTIALS: Final = Reply(535, "5.7.8", "Authentication credentials invalid")
"""RFC 4954's refusal of credentials: what the server answers wrong ones in `smtp.auth.mode:
verify`, and the SDK's `on_auth` unless overridden."""


@dataclass(frozen=True, slots=True)
class HookAuth:
    """Who the client authenticated as (at `auth`: who it claims to be, `verified` False); the
    password is no part of it (only the `auth` stage's context carries one)."""

    username: str | None
    verified: bool


@dataclass(frozen=True, slots=True)
class HookContext:
    """The session as far as the stage `hook`; a field not yet known is None (or empty)."""

    hook: HookName
    uuid: str
    """Connection UUID, the same as the event's `uuid`."""
    remote_addr: str
    helo: str | None = None
    auth: HookAuth | None = None
    mail_from: str | None = None
    """"" for the null sender <>."""
    mail_options: tuple[str, ...] = ()
    rcpt: str | None = None
    """The recipient being decided on: at `rcpt` only."""
    recipients: tuple[str, ...] = ()
    """Recipients accepted so far (at `data`: every one the message goes to)."""
    password: str | None = field(default=None, repr=False)
    """The password the client sent: at `auth` only (the worker checks it), never logged.
    Decoded as UTF-8, bytes that are not replaced by U+FFFD."""


# --- context: server -> worker --------------------------------------------------------------


def encode_context(context: HookContext) -> bytes:
    auth = context.auth
    return json.dumps(
        {
            "hook": context.hook,  # first: `is_hook_context` reads the prefix
            "uuid": context.uuid,
            "remote_addr": context.remote_addr,
            "helo": context.helo,
            "auth": None
            if auth is None
            else {"username": auth.username, "verified": auth.verified},
            "mail_from": context.mail_from,
            "mail_options": list(context.mail_options),
            "rcpt": context.rcpt,
            "recipients": list(context.recipients),
            **({"password": context.password} if context.hook == AUTH_STAGE else {}),
        },
        separators=(",", ":"),
    ).encode()


def is_hook_context(context: bytes) -> bool:
    """True for a hook frame's context; an email's context is the event, `{"event":…`."""
    return context.startswith(_HOOK_PREFIX)


def decode_context(data: bytes) -> HookContext:
    """Read a hook context; `BadContext` names the field that is missing or mistyped."""
    meta = ContextObject.read("hook context", data)
    stage = meta.get("hook")
    if stage not in _HOOK_NAMES:
        raise meta.error("hook", f"one of {_HOOK_NAMES}", stage)
    return HookContext(
        hook=stage,
        uuid=meta.text("uuid"),
        remote_addr=meta.text("remote_addr"),
        helo=_optional_text(meta, "helo"),
        auth=_auth(meta.get("auth")),
        mail_from=_optional_text(meta, "mail_from"),
        mail_options=_texts(meta, "mail_options"),
        rcpt=_optional_text(meta, "rcpt"),
        recipients=_texts(meta, "recipients"),
        password=_optional_text(meta, "password") if stage == AUTH_STAGE else None,
    )


def _optional_text(meta: ContextObject, key: str) -> str | None:
    return None if meta.get(key) is None else meta.text(key)


def _texts(meta: ContextObject, key: str) -> tuple[str, ...]:
    value = meta.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise meta.error(key, "a list of strings", value)
    return tuple(value)


def _auth(value: object) -> HookAuth | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadContext(f"hook context: 'auth' must be an object or null, got {value!r}")
    username = value.get("username")
    verified = value.get("verified")
    if (username is not None and not isinstance(username, str)) or not isinstance(verified, bool):
        raise BadContext(f"hook context: 'auth' must be {{username, verified}}, got {value!r}")
    return HookAuth(username=username, verified=verified)


# --- verdict: worker -> server --------------------------------------------------------------


def encode_reply(reply: Reply) -> bytes:
    return json.dumps(
        {"code": reply.code, "enhanced": reply.enhanced, "text": reply.text},
        separators=(",", ":"),
    ).encode()


def encode_verdict(reply: Reply | None) -> bytes:
    """The answer context of a hook: `ACCEPT` for None, else the reply."""
    return ACCEPT.encode("ascii") if reply is None else encode_reply(reply)


def decode_verdict(context: bytes, body: bytes) -> Reply | None:
    """None for `ACCEPT`, else the reply; `BadVerdict` for anything else (a 2xx included,
    and CONTINUE / CLOSE, which answer an email, not a hook)."""
    if body:
        raise BadVerdict(f"a hook verdict has an empty body, got {len(body)} bytes")
    if context == ACCEPT.encode("ascii"):
        return None
    return decode_reply(context)


def decode_reply(context: bytes) -> Reply:
    """Read a reply JSON; `BadVerdict` says what is wrong with it."""
    if len(context) > MAX_VERDICT_BYTES:
        raise BadVerdict(f"an answer of {len(context)} bytes; at most {MAX_VERDICT_BYTES}")
    try:
        data: object = json.loads(context)
    except ValueError:
        raise BadVerdict(f"neither ACCEPT nor a reply: {_shown(context)}") from None
    if not isinstance(data, dict) or set(data) != _REPLY_KEYS:
        raise BadVerdict(f"a reply is exactly {{code, enhanced, text}}, got {_shown(context)}")
    try:
        return Reply(data["code"], data["enhanced"], data["text"])
    except (TypeError, ValueError) as exc:
        raise BadVerdict(f"not a refusal: {exc}") from None


def _shown(context: bytes) -> str:
    return repr(context[:80])
