"""Failed AUTHs counted per client address, so guessing passwords costs a guesser its
connection: more than `smtp.auth.max_failures` failures within `FAILURE_WINDOW` seconds from
one address and AUTH answers 421 and closes, on that connection and any other from there,
until the oldest failure leaves the window.

The address is the session's `remote_host` (the PROXY protocol's client when that is on).
Loopback is exempt unless `smtp.limit_loopback` (a local test suite fails on purpose); an
IPv6 client counts by its /64, as for `smtp.max_connections_per_ip`: every site gets at
least one, so single addresses would give one guesser billions of fresh counters.
"""

from __future__ import annotations

import collections
import ipaddress
import time
from collections.abc import Callable
from typing import Final

FAILURE_WINDOW: Final = 60.0
"""Seconds a failed AUTH counts against its address."""
IPV6_CLIENT_PREFIX: Final = 64
"""An IPv6 client is one /64 (RFC 6177: the least a site gets), for AUTH failures and
`max_connections_per_ip` alike."""
_SWEEP_AT: Final = 10_000
"""Addresses remembered before the ones without a recent failure are forgotten."""


def client_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """`host` as an IP address, an IPv4-mapped IPv6 address as its IPv4; None if it is none."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_key(host: str, limit_loopback: bool) -> str | None:
    """The address failures count under, None when exempt (loopback) or unknown."""
    address = client_address(host)
    if address is None:
        return None
    if address.is_loopback and not limit_loopback:
        return None
    if isinstance(address, ipaddress.IPv6Address) and not address.is_loopback:
        return str(ipaddress.IPv6Network((address, IPV6_CLIENT_PREFIX), strict=False))
    return str(address)


class FailureLimiter:
    """Counts failures per address within the window; memory stays bounded by forgetting
    addresses whose failures have all aged out."""

    def __init__(
        self,
        max_failures: int,
        *,
        limit_loopback: bool = False,
        window: float = FAILURE_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max_failures
        self._limit_loopback = limit_loopback
        self._window = window
        self._clock = clock
        self._failures: dict[str, collections.deque[float]] = {}

    def locked(self, host: str) -> bool:
        """Whether `host` has failed more than `max_failures` times within the window."""
        key = client_key(host, self._limit_loopback)
        return key is not None and self._recent(key) > self._max

    def failed(self, host: str) -> bool:
        """Count a failure; True when it is one too many (the connection is to close)."""
        key = client_key(host, self._limit_loopback)
        if key is None:
            return False
        if len(self._failures) >= _SWEEP_AT:
            self._sweep()
        times = self._failures.setdefault(key, collections.deque(maxlen=self._max + 1))
        times.append(self._clock())
        return self._recent(key) > self._max

    def _recent(self, key: str) -> int:
        times = self._failures.get(key)
        if times is None:
            return 0
        horizon = self._clock() - self._window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[key]
            return 0
        return len(times)

    def _sweep(self) -> None:
        for key in list(self._failures):
            self._recent(key)
