"""Who decides on AUTH credentials: the credentials file (`smtp.auth.mode: verify`) or a
worker of the SMTP pool (`hook`). `auth_checks` builds the server's one set from the
configuration; every connection shares it, failures counted per client address included."""

from __future__ import annotations

import structlog

from mailrunner.config import SmtpConfig
from mailrunner.errors import ConfigError
from mailrunner.smtp import replies
from mailrunner.smtp.auth_limiter import FailureLimiter
from mailrunner.smtp.credentials import MAX_QUEUED_CHECKS, ChecksBusy, CredentialsFile
from mailrunner.smtp.hooks import SessionHooks
from mailrunner.smtp.session import AuthChecks, Authenticator, MailSession

log = structlog.get_logger("mailrunner.auth")


def _username(login: bytes) -> str | None:
    """A username is UTF-8 text; anything else matches no user."""
    try:
        return login.decode("utf-8")
    except UnicodeDecodeError:
        return None


class FileAuthenticator:
    """`mode: verify`: the password must be the user's in the credentials file."""

    def __init__(self, credentials: CredentialsFile) -> None:
        self.credentials = credentials

    async def check(
        self, session: MailSession, mechanism: str, username: bytes, password: bytes
    ) -> str | None:
        user = _username(username)
        # an empty or undecodable name still costs a check: no reply comes sooner than another
        try:
            good = await self.credentials.check(user or "", password)
        except ChecksBusy:
            log.warning("credentials checks busy, answering try later", queued=MAX_QUEUED_CHECKS)
            return replies.R454_AUTH_BUSY
        return None if good and user else replies.R535_AUTH_INVALID


class HookAuthenticator:
    """`mode: hook`: a worker's `on_auth` decides (ACCEPT or its reply)."""

    def __init__(self, hooks: SessionHooks) -> None:
        self._hooks = hooks

    async def check(
        self, session: MailSession, mechanism: str, username: bytes, password: bytes
    ) -> str | None:
        user = _username(username)
        if not user:
            return replies.R535_AUTH_INVALID
        return await self._hooks.at_auth(session, user, password.decode("utf-8", "replace"))


def auth_checks(config: SmtpConfig, hooks: SessionHooks | None = None) -> AuthChecks | None:
    """The checks `config.auth` asks for (None in modes capture and off); reads the
    credentials file now, so a missing one is a ConfigError at start."""
    auth = config.auth
    authenticator: Authenticator
    if auth.mode == "verify":
        assert auth.credentials_file is not None  # AuthConfig's validator
        authenticator = FileAuthenticator(CredentialsFile(auth.credentials_file))
    elif auth.mode == "hook":
        if hooks is None:
            raise ConfigError(["smtp.auth.mode: hook needs the SMTP pool (smtp.pool.command)"])
        authenticator = HookAuthenticator(hooks)
    else:
        return None
    if not auth.allow_insecure and config.tls.cert_file is None:
        # a valid configuration, but one where every AUTH gets 538 (and, if required, every
        # MAIL 530): said once at start rather than found out from clients' failures
        log.warning(
            "smtp.auth: credentials are checked only over TLS and no certificate is set: "
            "no client can authenticate (set smtp.tls or smtp.auth.allow_insecure)",
            mode=auth.mode,
        )
    failures = FailureLimiter(auth.max_failures, limit_loopback=config.limit_loopback)
    return AuthChecks(authenticator, failures)
