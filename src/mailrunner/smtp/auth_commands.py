"""AUTH PLAIN and LOGIN as mailrunner answers them, a part of the SMTP protocol class
(`MailrunnerSMTP` inherits it) kept apart because it is one concern: what a client's
credentials are taken to be. aiosmtpd parses the AUTH command and calls `auth_<MECHANISM>`."""

from __future__ import annotations

import binascii
from base64 import b64decode

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword

from mailrunner.events import Authentication
from mailrunner.smtp import replies
from mailrunner.smtp.session import MailSession, ProtocolSettings


class AuthCommands(SMTP):
    """The AUTH commands of `MailrunnerSMTP`, which sets `settings` and `_mail_session`."""

    settings: ProtocolSettings
    _mail_session: MailSession

    async def smtp_AUTH(self, arg: str) -> None:
        if not self.settings.auth.capture:
            await self.push(replies.R502_AUTH_OFF)
            return
        await super().smtp_AUTH(arg)

    def _record_auth(self, mechanism: str, username: bytes | None, password: bytes | None) -> None:
        self._mail_session.auth = Authentication(
            mechanism=mechanism, username=_text(username), password=_text(password)
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
        return None if answer is MISSING else bytes(answer)

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        """Capture any PLAIN credentials; a cancelled exchange is still an attempt."""
        self._record_auth("PLAIN", None, None)
        blob = await self._decoded_argument(args, "")
        if blob is None:
            return AuthResult(success=False, handled=True)
        pieces = blob.split(b"\x00")
        if len(pieces) != 3:
            await self.push(replies.R501_AUTH_SPLIT)
            return AuthResult(success=False, handled=True)
        _, login, password = pieces
        self._record_auth("PLAIN", login, password)
        return AuthResult(success=True, auth_data=LoginPassword(login, password))

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        """Capture any LOGIN credentials, keeping the username if the password never comes."""
        self._record_auth("LOGIN", None, None)
        login = await self._decoded_argument(args, "Username:")
        if login is None:
            return AuthResult(success=False, handled=True)
        self._record_auth("LOGIN", login, None)
        password = await self.challenge_auth("Password:")
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        self._record_auth("LOGIN", login, bytes(password))
        return AuthResult(success=True, auth_data=LoginPassword(login, bytes(password)))


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", "replace")
