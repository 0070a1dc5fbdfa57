"""What one SMTP connection knows besides aiosmtpd's state: its settings, its session and its
envelope, shared by the protocol (`smtp/protocol.py`), its AUTH commands
(`smtp/auth_commands.py`) and the handler, none of which owns another's."""

from __future__ import annotations

import asyncio
import ssl
import uuid
from dataclasses import dataclass, field
from typing import Protocol

from aiosmtpd.smtp import Envelope, Session

from mailrunner.config import AuthConfig, ProxyProtocolConfig
from mailrunner.events import Authentication
from mailrunner.smtp.auth_limiter import FailureLimiter
from mailrunner.smtp.spool import MessageContent, Spool


class Authenticator(Protocol):
    """Decides on credentials in `smtp.auth.mode` verify (the credentials file) or hook (a
    worker); `smtp/authenticators.py` has both."""

    async def check(
        self, session: MailSession, mechanism: str, username: bytes, password: bytes
    ) -> str | None:
        """None when the credentials are good, else the reply that refuses them."""


@dataclass(frozen=True, slots=True)
class AuthChecks:
    """What checks AUTH, shared by every connection of a server: who decides on credentials,
    and the failures counted per client address."""

    authenticator: Authenticator
    failures: FailureLimiter


@dataclass(frozen=True, slots=True)
class ProtocolSettings:
    hostname: str
    read_timeout: float
    session_timeout: float
    max_message_size: int
    auth: AuthConfig
    tls_context: ssl.SSLContext | None = None
    require_tls: bool = False
    spool: Spool | None = None
    """Where DATA beyond `smtp.spool_bytes` goes; None keeps every message in memory."""
    proxy: ProxyProtocolConfig = field(default_factory=ProxyProtocolConfig)
    auth_checks: AuthChecks | None = None
    """Set exactly when `auth.checks` (modes verify and hook)."""


class MailSession(Session):
    """aiosmtpd's session plus what the event needs: connection id and captured AUTH."""

    def __init__(self, loop: asyncio.AbstractEventLoop, connection_id: str | None = None) -> None:
        super().__init__(loop)
        self.connection_id = connection_id or str(uuid.uuid4())
        self.auth: Authentication | None = None
        self.close_after_reply = False
        self.messages = 0

    @property
    def remote_host(self) -> str:
        return str(self.peer[0]) if isinstance(self.peer, tuple) else "unknown"

    @property
    def remote_addr(self) -> str:
        if isinstance(self.peer, tuple):
            host, port = self.peer[0], self.peer[1]
            return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
        return "unknown"


class MailEnvelope(Envelope):
    """aiosmtpd's envelope plus the message as DATA left it: `content` and `original_content`
    are its bytes only when it stayed in memory (None when spooled), `message` always."""

    def __init__(self) -> None:
        super().__init__()
        self.message: MessageContent | None = None
