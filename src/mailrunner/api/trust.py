"""Who may call the management API, and what a pipeline declared through it may reach.

The API runs on a developer's machine next to their browser, and without `rpc.token` (the
zero-config default on loopback) nothing else stands between it and any web page they open.
A page can make the browser send requests to 127.0.0.1 (a form, a `no-cors` fetch) and, after
pointing its own DNS name at 127.0.0.1, read the answers too. So without a token:

- `Host` must name this API — the listen address or a loopback name, with or without the
  port it listens on — or one of `rpc.allowed_hosts`: a rebound page sends its own name;
- `Origin`, when sent, must be the API's own: browsers send it with every cross-site POST,
  while scripts and the CLI send none.

Always, a request that changes something must be `Content-Type: application/json`: a page
can send that type to another site only after a CORS preflight, which this API never grants.

With a token, the token is the check, for the same reason: a page cannot put an
Authorization header on a cross-site request without that preflight. Host and Origin are not
checked then, because a tokened API may sit behind names and proxies it cannot know.

The web UI's session cookie is different: the browser sends it by itself. So a request that
relies on it, and the login form that sets it, pass the Host and Origin checks whether or
not a token is set (behind a proxy, list its name in `rpc.allowed_hosts`). The cookie holds
an HMAC of its expiry under a key made at start-up, never the token: a restart or a new
token ends every session.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import hdrs, web

from mailrunner.api.routes import JSON
from mailrunner.config import (
    LOOPBACK_HOSTS,
    AmqpPipelineConfig,
    Config,
    NatsPipelineConfig,
    PipelineConfig,
    RedisPipelineConfig,
    RpcConfig,
    SqlitePipelineConfig,
    mask_url,
    split_host_port,
)
from mailrunner.errors import Forbidden, UnsupportedMediaType

LOOPBACK_NAMES = frozenset(f"[{host}]" if ":" in host else host for host in LOOPBACK_HOSTS)
"""The loopback names as a `Host` header writes them (IPv6 in brackets)."""
_READING_METHODS = frozenset({hdrs.METH_GET, hdrs.METH_HEAD, hdrs.METH_OPTIONS})
_WEB_SCHEMES = frozenset({"http", "https"})
BrokerPipeline = RedisPipelineConfig | AmqpPipelineConfig | NatsPipelineConfig
_BROKER_PIPELINES = (RedisPipelineConfig, AmqpPipelineConfig, NatsPipelineConfig)
_LIFT = "rpc.allow_any_declare: true lifts this"


def _split_authority(authority: str) -> tuple[str, str | None]:
    """`name` and `port` (None when absent) of a Host value, lower-cased; IPv6 in brackets."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        name, _, rest = authority.partition("]")
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return authority, None  # `[::1]evil.example` names no address of ours
        return name + "]", rest[1:] or None
    name, sep, port = authority.rpartition(":")
    return (name, port) if sep else (authority, None)


class RequestGuard:
    """Refuses requests that a web page could have sent on the user's behalf."""

    def __init__(self, config: RpcConfig) -> None:
        host, _ = split_host_port(config.listen)
        listen_name = f"[{host}]" if ":" in host else host
        self._token_set = config.token is not None
        self._own_names = LOOPBACK_NAMES | {listen_name.lower()}
        self._allowed_hosts = frozenset(name.strip().lower() for name in config.allowed_hosts)

    def check_sender(self, request: web.Request) -> None:
        """Without a token, raise Forbidden for a request a web page may have sent."""
        if not self._token_set:
            self.check_page_sender(request)

    def check_page_sender(self, request: web.Request) -> None:
        """Raise Forbidden unless the request names this API (Host) and, if it comes from a
        page, from one of this API's own (Origin): what a cookie's request must show."""
        port = _local_port(request)
        host = request.headers.get(hdrs.HOST, "")
        if not self._addressed_here(host, port):
            raise Forbidden(
                f"Host {host!r} does not name this API: without rpc.token only its listen"
                " address, localhost, 127.0.0.1, [::1] and rpc.allowed_hosts are served"
                " (a page on another site may have pointed its name here)"
            )
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None and not self._own_origin(origin, host, port):
            raise Forbidden(
                f"Origin {origin!r} is another site: without rpc.token the API refuses"
                " requests a web page sends (set rpc.token to call it from elsewhere)"
            )

    @staticmethod
    def check_media_type(request: web.Request, accepts: str = JSON) -> None:
        """Raise UnsupportedMediaType for a change not sent as `accepts` (JSON for all but
        the login form)."""
        if request.method in _READING_METHODS or request.content_type == accepts:
            return
        sent = request.headers.get(hdrs.CONTENT_TYPE)
        detail = f"got {sent!r}" if sent else "none was sent"
        raise UnsupportedMediaType(
            f"a {request.method} must be sent as Content-Type: {accepts} ({detail})"
        )

    def _addressed_here(self, host: str, port: str | None) -> bool:
        name, sent_port = _split_authority(host)
        if name in self._own_names and sent_port in (None, port):
            return True
        return name in self._allowed_hosts or host.strip().lower() in self._allowed_hosts

    def _own_origin(self, origin: str, host: str, port: str | None) -> bool:
        """The page was served by this API: its origin is the address the request went to,
        or one of the API's own names with the port it listens on."""
        parts = urlsplit(origin.strip().lower())
        if parts.scheme not in _WEB_SCHEMES or not parts.netloc:
            return False
        if parts.netloc == host.strip().lower():
            return True
        name, sent_port = _split_authority(parts.netloc)
        return name in self._own_names and sent_port == port


SESSION_LIFETIME = 7 * 24 * 3600.0
"""Seconds a UI session lasts before the token is asked for again."""


class Sessions:
    """The web UI's sessions: a cookie value is `expiry.hmac(key, expiry)`, checked without
    any state kept; the key is random per process (see the module docstring)."""

    def __init__(self, lifetime: float = SESSION_LIFETIME) -> None:
        self._key = os.urandom(32)
        self._lifetime = lifetime

    @staticmethod
    def cookie_name(request: web.Request) -> str:
        """`mailrunner_<port>`: one session per server on the same host name."""
        return f"mailrunner_{_local_port(request)}"

    def issue(self) -> str:
        expiry = str(int(time.time() + self._lifetime))
        return f"{expiry}.{self._mac(expiry)}"

    def valid(self, value: str) -> bool:
        expiry, _, mac = value.partition(".")
        if not (expiry.isascii() and expiry.isdigit()):
            return False
        if not hmac.compare_digest(mac.encode("utf-8", "replace"), self._mac(expiry).encode()):
            return False
        return time.time() < int(expiry)

    def _mac(self, expiry: str) -> str:
        return hmac.new(self._key, expiry.encode(), hashlib.sha256).hexdigest()


def _local_port(request: web.Request) -> str | None:
    """The port the request arrived on (the listen port; its real value when that is 0)."""
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    return str(sockname[1]) if isinstance(sockname, tuple) and len(sockname) >= 2 else None


class DeclarePolicy:
    """What a pipeline declared at run time may reach, unless `rpc.allow_any_declare`: memory;
    sqlite under `data_dir`; a broker only at an address the configuration file already uses.

    A Declare is a connection or a file the server opens on the caller's word: without this,
    one request could make the server write a database anywhere it may write, or connect to
    any address it can reach (and tell the caller what answered)."""

    def __init__(self, config: Config) -> None:
        self._allow_any = config.rpc.allow_any_declare
        self._data_dir = config.data_dir
        self._brokers = frozenset(
            (pipeline.driver, pipeline.config.addr)
            for pipeline in config.jobs.pipelines.values()
            if isinstance(pipeline, _BROKER_PIPELINES)
        )

    def check(self, name: str, settings: PipelineConfig) -> None:
        """Raise Forbidden when the pipeline would reach beyond the configuration. Resolves
        paths on disk: call it on a thread."""
        if self._allow_any:
            return
        if isinstance(settings, SqlitePipelineConfig) and settings.config.path is not None:
            self._check_path(name, settings.config.path)
        elif isinstance(settings, _BROKER_PIPELINES):
            self._check_broker(name, settings)

    def _check_path(self, name: str, path: Path) -> None:
        """The path as the driver opens it, `..` and symlinks resolved, lies under data_dir."""
        data_dir = self._data_dir.resolve()
        resolved = path.resolve()
        if resolved == data_dir or not resolved.is_relative_to(data_dir):
            raise Forbidden(
                f"pipeline {name!r}: a sqlite path declared through the API must lie under"
                f" data_dir ({data_dir}), not {resolved} ({_LIFT})"
            )

    def _check_broker(self, name: str, settings: BrokerPipeline) -> None:
        if (settings.driver, settings.config.addr) in self._brokers:
            return
        known = sorted(
            mask_url(addr) for driver, addr in self._brokers if driver == settings.driver
        )
        listed = ", ".join(known) if known else f"none: no {settings.driver} pipeline is configured"
        raise Forbidden(
            f"pipeline {name!r}: a {settings.driver} pipeline declared through the API must use"
            f" a broker address of the configuration file ({listed}), not"
            f" {mask_url(settings.config.addr)} ({_LIFT})"
        )
