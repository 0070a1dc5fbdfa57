"""The SMTP listeners: accept connections on our loop (plain with STARTTLS, and implicit TLS
when configured), cap them (in all and per address, both listeners together), own the DATA
memory budget they share, and drain them on stop."""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import cast

import structlog

from mailrunner.config import ProxyProtocolConfig, SmtpConfig, TlsConfig, split_host_port
from mailrunner.errors import ConfigError
from mailrunner.metrics import Metrics
from mailrunner.smtp import replies
from mailrunner.smtp.auth_limiter import client_key
from mailrunner.smtp.authenticators import auth_checks
from mailrunner.smtp.data_reader import InflightBudget
from mailrunner.smtp.faults import FaultBook
from mailrunner.smtp.handler import SmtpHandler
from mailrunner.smtp.protocol import MailrunnerSMTP
from mailrunner.smtp.session import AuthChecks, ProtocolSettings
from mailrunner.smtp.spool import Spool

log = structlog.get_logger("mailrunner.smtp")


def tls_context(config: TlsConfig) -> ssl.SSLContext | None:
    """The server side of STARTTLS and implicit TLS, or None when no certificate is
    configured."""
    if config.cert_file is None or config.key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.cert_file, config.key_file)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(
            [f"smtp.tls: cannot load {config.cert_file} and {config.key_file}: {error}"]
        ) from None
    return context


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """What the management API shows about one open SMTP connection."""

    uuid: str
    remote_addr: str
    helo: str | None
    mail_from: str | None
    recipients: tuple[str, ...]
    auth_user: str | None
    """The AUTH username: captured, or verified (a refused one is not shown)."""
    tls: bool
    """STARTTLS done, or a connection to the implicit-TLS listener."""
    messages: int


def _info(connection: MailrunnerSMTP) -> ConnectionInfo:
    session = connection.mail_session
    envelope = connection.envelope
    return ConnectionInfo(
        uuid=session.connection_id,
        remote_addr=session.remote_addr,
        helo=session.host_name,
        mail_from=envelope.mail_from if envelope is not None else None,
        recipients=tuple(envelope.rcpt_tos) if envelope is not None else (),
        auth_user=(
            session.auth.username
            if session.auth is not None and session.auth.verified is not False
            else None
        ),
        tls=session.ssl is not None,
        messages=session.messages,
    )


class SmtpServer:
    """Owns the listening socket and the set of live connections."""

    def __init__(
        self,
        config: SmtpConfig,
        handler: SmtpHandler,
        metrics: Metrics,
        faults: FaultBook | None = None,
        *,
        spool: Spool | None = None,
        auth: AuthChecks | None = None,
        on_idle: Callable[[], object] | None = None,
    ) -> None:
        """`faults`: the book the API adds rules to (the App's); a server of its own has none.
        `spool`: where messages beyond its threshold go; without one all stay in memory.
        `auth`: AUTH's checks (the App's, which has the hooks); else from `config.auth`.
        `on_idle`: called whenever the last open connection closes."""
        self._config = config
        self._handler = handler
        self._metrics = metrics
        self._faults = faults if faults is not None else FaultBook()
        self._tls_context = tls_context(config.tls)
        self._settings = ProtocolSettings(
            hostname=config.hostname,
            read_timeout=config.read_timeout,
            session_timeout=config.session_timeout,
            max_message_size=config.max_message_size,
            auth=config.auth,
            tls_context=self._tls_context,
            require_tls=config.tls.required,
            spool=spool,
            proxy=config.proxy_protocol,
            auth_checks=auth if auth is not None else auth_checks(config),
        )
        self._budget = InflightBudget(config.max_inflight_bytes)
        self._on_idle = on_idle
        self._connections: set[MailrunnerSMTP] = set()
        self._opened: dict[MailrunnerSMTP, float] = {}
        self._addresses: dict[MailrunnerSMTP, str] = {}
        self._per_address: collections.Counter[str] = collections.Counter()
        self._server: asyncio.Server | None = None
        self._implicit: asyncio.Server | None = None
        self._drained = asyncio.Event()
        self._stopping = False

    @property
    def connections(self) -> list[ConnectionInfo]:
        """The open connections, oldest first."""
        return [_info(connection) for connection in self._opened]

    @property
    def max_message_size(self) -> int:
        return self._settings.max_message_size

    def limit_message_size(self, limit: int) -> None:
        """Advertise and enforce a smaller SIZE (before start), e.g. what a broker can carry."""
        self._settings = replace(self._settings, max_message_size=limit)

    @property
    def listening(self) -> bool:
        return self._server is not None and self._server.is_serving()

    def close_connection(self, connection_id: str) -> bool:
        """Close one connection with 421 once its command in progress has answered; False
        when no open connection has that id."""
        for connection in self._connections:
            if connection.mail_session.connection_id == connection_id:
                connection.request_close(replies.R421_CLOSED_BY_ADMIN)
                return True
        return False

    @property
    def address(self) -> tuple[str, int]:
        """Where the listener is bound (the real port when the config said 0)."""
        assert self._server is not None
        return _bound(self._server)

    @property
    def implicit_address(self) -> tuple[str, int] | None:
        """Where the implicit-TLS listener is bound; None when `tls.implicit_addr` is unset."""
        return _bound(self._implicit) if self._implicit is not None else None

    def admit(self, connection: MailrunnerSMTP) -> str | None:
        """None to admit, else the reply that refuses. Called once the client's address is
        known, after a PROXY header: that may be after `stop` has asked the others to go."""
        if self._stopping:
            return replies.R421_SHUTTING_DOWN
        if len(self._connections) >= self._config.max_connections:
            log.warning("connection refused: too many connections", limit=len(self._connections))
            return replies.R421_TOO_MANY_CONNECTIONS
        address = self._limited_address(connection)
        if address is not None:
            if self._per_address[address] >= self._config.max_connections_per_ip:
                log.warning(
                    "connection refused: too many connections from one address",
                    remote_host=address,
                    limit=self._config.max_connections_per_ip,
                )
                return replies.R421_TOO_MANY_FROM_ADDRESS
            self._per_address[address] += 1
            self._addresses[connection] = address
        self._connections.add(connection)
        self._opened[connection] = time.monotonic()
        self._drained.clear()
        return None

    def _limited_address(self, connection: MailrunnerSMTP) -> str | None:
        """The address `max_connections_per_ip` counts this connection under, or None when
        it is exempt: loopback (a local test suite opens many) unless `limit_loopback`. An
        IPv6 client counts by its /64, as for AUTH failures (`client_key`)."""
        return client_key(connection.mail_session.remote_host, self._config.limit_loopback)

    def forget(self, connection: MailrunnerSMTP) -> None:
        address = self._addresses.pop(connection, None)
        if address is not None:
            self._per_address[address] -= 1
            if not self._per_address[address]:
                del self._per_address[address]
        opened = self._opened.pop(connection, None)
        if connection in self._connections:
            self._connections.discard(connection)
            session = connection.mail_session
            log.info(
                "connection closed",
                uuid=session.connection_id,
                remote_addr=session.remote_addr,
                helo=session.host_name,
                messages=session.messages,
                seconds=round(time.monotonic() - (opened or time.monotonic()), 3),
            )
        if not self._connections:
            self._drained.set()
            if self._on_idle is not None:
                self._on_idle()

    def _new_connection(self) -> MailrunnerSMTP:
        return MailrunnerSMTP(
            self._handler, self._settings, self, self._metrics, self._budget, faults=self._faults
        )

    def _new_implicit_connection(self) -> MailrunnerSMTP:
        """A session on the implicit-TLS listener: TLS already, so no STARTTLS to offer or
        demand (the transport's TLS makes the session count as TLS, see `MailrunnerSMTP`).
        No PROXY header either: a balancer sends it before the TLS handshake, which asyncio's
        TLS listener has begun with the first byte."""
        settings = replace(
            self._settings, tls_context=None, require_tls=False, proxy=ProxyProtocolConfig()
        )
        return MailrunnerSMTP(
            self._handler, settings, self, self._metrics, self._budget, faults=self._faults
        )

    async def start(self) -> None:
        host, port = split_host_port(self._config.addr)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._new_connection, host, port)
        log.info("smtp listening", addr="{}:{}".format(*self.address))
        if self._config.tls.implicit_addr is None:
            return
        host, port = split_host_port(self._config.tls.implicit_addr)
        try:
            # a client that never finishes the handshake holds no more than an idle one
            self._implicit = await loop.create_server(
                self._new_implicit_connection,
                host,
                port,
                ssl=self._tls_context,
                ssl_handshake_timeout=self._config.read_timeout,
            )
        except BaseException:
            self._server.close()
            self._server = None
            raise
        log.info("smtp listening", addr="{}:{}".format(*_bound(self._implicit)), tls="implicit")

    async def stop(self, grace: float) -> None:
        """Stop accepting; sessions inside a command may finish it, the rest get 421."""
        if self._server is None:
            return
        self._stopping = True
        self._server.close()
        if self._implicit is not None:
            self._implicit.close()
        for connection in list(self._connections):
            connection.request_close(replies.R421_SHUTTING_DOWN)
        if self._connections:
            try:
                async with asyncio.timeout(grace):
                    await self._drained.wait()
            except TimeoutError:
                log.warning(
                    "connections still open after grace, aborting", count=len(self._connections)
                )
                for connection in list(self._connections):
                    # uvloop's transports have abort() but are no asyncio.Transport subclass
                    if connection.transport is not None:
                        cast("asyncio.Transport", connection.transport).abort()
        await self._server.wait_closed()
        self._server = None
        if self._implicit is not None:
            await self._implicit.wait_closed()
            self._implicit = None


def _bound(server: asyncio.Server) -> tuple[str, int]:
    """Where `server` listens (the real port when the config said 0)."""
    host, port = server.sockets[0].getsockname()[:2]
    return str(host), int(port)
