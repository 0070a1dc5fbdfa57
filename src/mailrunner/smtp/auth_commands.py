"""AUTH PLAIN and LOGIN as mailrunner answers them, a part of the SMTP protocol class
(`MailrunnerSMTP` inherits it) kept apart because it is one concern: what a client's
credentials are taken to be. aiosmtpd parses the AUTH command and calls `auth_<MECHANISM>`.

`smtp.auth.mode: capture` accepts any credentials and keeps them for the event; `verify` and
`hook` check them (`ProtocolSettings.auth_checks`) and keep only the username. Where they are
checked, AUTH is neither offered nor accepted (538) on a session without TLS unless
`allow_insecure`: a client told about AUTH in the clear would send its password in the clear.
"""

from __future__ import annotations

import asyncio
import binascii
from base64 import b64decode, b64encode
from typing import Any

import structlog
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword, _Missing

from mailrunner.events import Authentication
from mailrunner.smtp import replies
from mailrunner.smtp.session import AuthChecks, MailSession, ProtocolSettings

log = structlog.get_logger("mailrunner.auth")

_AUTH_KEYWORD = "250-AUTH "
"""The EHLO line that offers AUTH (aiosmtpd's, never the last line: `250 HELP` is)."""


class _TooLong(Exception):
    """A client's answer to a challenge was longer than a command line may be."""


class AuthCommands(SMTP):
    """The AUTH commands of `MailrunnerSMTP`, which sets `settings` and `_mail_session`."""

    settings: ProtocolSettings
    _mail_session: MailSession
    _owes_reply: bool
    """While set the read timer waits (`MailrunnerSMTP`): the client is waiting for us."""
    _receiving: bool
    """While set the session timeout closes at once (`MailrunnerSMTP`): the client owes us."""

    def request_close(self, reply: str) -> None:
        """`MailrunnerSMTP`'s: close with `reply` once the command in progress has answered."""
        raise NotImplementedError

    # --- whether AUTH is on offer ----------------------------------------------------------

    @property
    def _needs_tls_for_auth(self) -> bool:
        """Credentials are checked and this session is not TLS (neither after STARTTLS nor
        on the implicit listener: both set `session.ssl`), and clear text is not allowed."""
        auth = self.settings.auth
        return auth.checks and not auth.allow_insecure and self._mail_session.ssl is None

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        """EHLO leaves out AUTH where it would be refused with 538."""
        result = await super()._call_handler_hook(command, *args)
        if command == "EHLO" and isinstance(result, list) and self._needs_tls_for_auth:
            result = [line for line in result if not line.startswith(_AUTH_KEYWORD)]
        return result

    async def check_auth_needed(self, caller_method: str) -> bool:
        """`smtp.auth.required`: MAIL, RCPT and DATA (and HELP, VRFY) before a successful
        AUTH get 530 (aiosmtpd asks this before each)."""
        if self.settings.auth.required and not self._mail_session.authenticated:
            log.info("authentication required", uuid=self._mail_session.connection_id)
            await self.push(replies.R530_AUTH_REQUIRED)
            return True
        return False

    async def smtp_AUTH(self, arg: str) -> None:
        """AUTH within a mail transaction (after MAIL, between BDAT chunks too) gets 503
        (RFC 4954 4): aiosmtpd would accept it, and the event and later hooks would call
        verified a sender whose MAIL and RCPT were accepted before it was."""
        if self.settings.auth.mode == "off":
            await self.push(replies.R502_AUTH_OFF)
            return
        if self.envelope is not None and self.envelope.mail_from is not None:
            await self.push(replies.R503_AUTH_IN_TRANSACTION)
            return
        checks = self.settings.auth_checks
        if checks is not None:
            if self._needs_tls_for_auth:
                await self.push(replies.R538_AUTH_NEEDS_TLS)
                return
            if checks.failures.locked(self._mail_session.remote_host):
                self._lock_out()
                return
        await super().smtp_AUTH(arg)

    # --- mechanisms ------------------------------------------------------------------------

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        """A cancelled or malformed exchange is still an attempt (recorded). Where
        credentials are checked, an authorization identity other than the user's own fails
        (RFC 4616 2: nobody may act as another user here)."""
        self._record_auth("PLAIN", None, None)
        try:
            blob = await self._decoded_argument(args, "")
        except _TooLong:
            return await self._decide("PLAIN", b"", None)
        if blob is None:
            return AuthResult(success=False, handled=True)
        pieces = blob.split(b"\x00")
        if len(pieces) != 3:
            await self.push(replies.R501_AUTH_SPLIT)
            return AuthResult(success=False, handled=True)
        authzid, login, password = pieces
        if authzid not in (b"", login) and self.settings.auth_checks is not None:
            return await self._decide("PLAIN", login, None)
        return await self._decide("PLAIN", login, password)

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        """Keeps the username if the password never comes."""
        self._record_auth("LOGIN", None, None)
        try:
            login = await self._decoded_argument(args, "Username:")
        except _TooLong:
            return await self._decide("LOGIN", b"", None)
        if login is None:
            return AuthResult(success=False, handled=True)
        self._record_auth("LOGIN", login, None)
        try:
            password = await self.challenge_auth("Password:")
        except _TooLong:
            return await self._decide("LOGIN", login, None)
        if isinstance(password, _Missing):
            return AuthResult(success=False, handled=True)
        return await self._decide("LOGIN", login, password)

    async def _decide(self, mechanism: str, login: bytes, password: bytes | None) -> AuthResult:
        """Capture the credentials, or check them; `password` None: wrong credentials without
        a check (the answer was too long to read, or PLAIN asked to act as another user)."""
        checks = self.settings.auth_checks
        if checks is None:
            if password is None:
                await self.push(replies.R501_AUTH_TOO_LONG)
                return AuthResult(success=False, handled=True)
            self._record_auth(mechanism, login, password)
            return AuthResult(success=True, auth_data=LoginPassword(login, password))
        refusal: str | None = replies.R535_AUTH_INVALID
        if password is not None:
            # bcrypt checks wait their turn and a hook its worker: the client waits for us
            self._owes_reply = True
            try:
                refusal = await checks.authenticator.check(
                    self._mail_session, mechanism, login, password
                )
            finally:
                self._owes_reply = False
            if checks.failures.locked(self._mail_session.remote_host):
                # failures counted while this check waited its turn: a guess sent alongside
                # many others is not let in past the lock-out
                self._mail_session.auth = Authentication(mechanism, _text(login), verified=False)
                self._lock_out()
                return AuthResult(success=False, handled=True)
        username = _text(login)
        if refusal is None:
            self._mail_session.auth = Authentication(mechanism, username, verified=True)
            log.info("authenticated", uuid=self._mail_session.connection_id, username=username)
            return AuthResult(success=True, auth_data=username)
        return self._refused(checks, mechanism, username, refusal)

    def _refused(
        self, checks: AuthChecks, mechanism: str, username: str | None, refusal: str
    ) -> AuthResult:
        """A refusal of credentials (5xx) counts against the client's address; one too many
        closes the connection with 421 instead. A 4xx (a failed hook) is no guess: not
        counted."""
        self._mail_session.auth = Authentication(mechanism, username, verified=False)
        host = self._mail_session.remote_host
        log.info(
            "authentication failed",
            uuid=self._mail_session.connection_id,
            username=username,
            remote_host=host,
        )
        if refusal.startswith("5") and checks.failures.failed(host):
            self._lock_out()
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False, message=refusal)

    def _lock_out(self) -> None:
        log.warning(
            "too many failed authentications, closing",
            uuid=self._mail_session.connection_id,
            remote_host=self._mail_session.remote_host,
            max_failures=self.settings.auth.max_failures,
        )
        self.request_close(replies.R421_AUTH_FAILURES)

    # --- reading the exchange --------------------------------------------------------------

    def _record_auth(self, mechanism: str, username: bytes | None, password: bytes | None) -> None:
        """What the event says of the attempt so far; the password only when captured."""
        capture = self.settings.auth.capture
        self._mail_session.auth = Authentication(
            mechanism=mechanism,
            username=_text(username),
            password=_text(password) if capture else None,
            verified=None if capture else False,
        )

    async def _decoded_argument(self, args: list[str], challenge: str) -> bytes | None:
        """The initial response if the client sent one, else the answer to a challenge."""
        if len(args) > 1:
            try:
                return b64decode(args[1].encode(), validate=True)
            except (binascii.Error, ValueError):
                await self.push(replies.R501_AUTH_BASE64)
                return None
        answer = await self.challenge_auth(challenge)
        return None if isinstance(answer, _Missing) else answer

    async def challenge_auth(
        self,
        challenge: str | bytes,
        encode_to_b64: bool = True,
        log_client_response: bool = False,
    ) -> _Missing | bytes:
        """aiosmtpd's, but the answer is read within the command line limit: a longer one (a
        10 KB password) is read to its end in bounded pieces and raises `_TooLong`, where
        aiosmtpd's readline would fail and leave the rest of it to be read as commands. The
        answer is never logged (`log_client_response` is ignored)."""
        data = challenge.encode() if isinstance(challenge, str) else challenge
        await self.push(b"334 " + (b64encode(data) if encode_to_b64 else data))
        self._receiving = True  # a line without end is only the client's to end
        try:
            blob = (await self._answer_line()).strip()
        finally:
            self._receiving = False
        if blob == b"*":
            await self.push(replies.R501_AUTH_ABORTED)
            return MISSING
        try:
            return b64decode(blob, validate=True)
        except (binascii.Error, ValueError):
            await self.push(replies.R501_AUTH_BASE64)
            return MISSING

    async def _answer_line(self) -> bytes:
        reader: asyncio.StreamReader = self._reader
        try:
            return await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as error:  # the client left mid-line
            return error.partial
        except asyncio.LimitOverrunError as error:
            consumed = error.consumed
        while True:
            await reader.read(consumed)
            try:
                await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as error:
                consumed = error.consumed
                continue
            except asyncio.IncompleteReadError:
                pass
            raise _TooLong


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", "replace")
