"""The credentials file of `smtp.auth.mode: verify`, and the check of a password against it.

One `user:hash` a line: a bcrypt hash (`$2b$…`, what `mailrunner auth hash` prints) or
`{PLAIN}secret` (warned about once per user: anyone who reads the file has the password).
Blank lines and lines starting with `#` are skipped. The file is re-read when it changes, at
most once a second and off the event loop; a file that becomes unreadable or invalid keeps
the last good set (logged once per change), so a half-written edit never locks everyone out.

bcrypt is slow on purpose (~0.25 s at cost 12): checks run on a thread, one at a time, so a
burst of AUTHs costs one core at most and never stalls the loop. An unknown user spends the
same check against a stand-in hash, so timing does not tell which users exist.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import re
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import bcrypt
import structlog

from mailrunner.errors import ConfigError

log = structlog.get_logger("mailrunner.auth")

MAX_PASSWORD_BYTES: Final = 72
"""bcrypt reads at most this many bytes of a password; a longer one never matches (it would
otherwise match any password sharing its first 72 bytes)."""
PLAIN_PREFIX: Final = "{PLAIN}"
RELOAD_INTERVAL: Final = 1.0
"""Seconds between looks at the file's metadata; a change is seen within this long."""
MAX_QUEUED_CHECKS: Final = 64
"""Checks waiting for their turn beyond which AUTH is answered "try later" at once: at cost
12 the last one in the queue waits about 16 s, and a flood of AUTHs costs no more."""
MAX_FILE_BYTES: Final = 16 * 1024 * 1024
"""A credentials file larger than this is refused (about 200,000 bcrypt lines)."""
MIN_COST: Final = 4
MAX_COST: Final = 31
"""bcrypt's range of work factors; a hash outside it cannot be checked."""
_BCRYPT_HASH: Final = re.compile(r"\$2[aby]\$([0-9]{2})\$[./A-Za-z0-9]{21}[.Oeu][./A-Za-z0-9]{31}")
"""A hash bcrypt can check: any other raises at the check (a 451 for every AUTH of that
user) or, for its cost, when the stand-in hash is made. The salt's 22nd character holds
only 2 bits of it, so it is one of four."""
_STAND_IN_PASSWORD: Final = b"mailrunner stand-in password"
DEFAULT_COST: Final = 12
"""bcrypt's own default: about a quarter second a check on a current core."""


@dataclass(frozen=True, slots=True)
class Secret:
    """A user's stored secret: a bcrypt hash, or a plain password (`plain` True)."""

    value: bytes = field(repr=False)
    plain: bool = False


@dataclass(frozen=True, slots=True)
class _Stamp:
    """What tells a changed file from the one read (chmod changes ctime, an edit mtime)."""

    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, path: Path) -> _Stamp:
        return cls.of_info(os.stat(path))

    @classmethod
    def of_info(cls, info: os.stat_result) -> _Stamp:
        return cls(info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def parse(text: str, source: str) -> dict[str, Secret]:
    """The users of a credentials file; `ValueError` names the first bad line (never its
    secret)."""
    users: dict[str, Secret] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, colon, stored = line.partition(":")
        where = f"{source} line {number}"
        if not colon or not user:
            raise ValueError(f"{where}: expected user:hash")
        if user in users:
            raise ValueError(f"{where}: user {user!r} listed twice")
        if stored.startswith(PLAIN_PREFIX):
            secret = stored.removeprefix(PLAIN_PREFIX).encode()
            if not secret:
                raise ValueError(f"{where}: empty {PLAIN_PREFIX} password for {user!r}")
            users[user] = Secret(secret, plain=True)
        elif _cost(stored) is not None:
            users[user] = Secret(stored.encode())
        else:
            raise ValueError(f"{where}: {user!r} has neither a bcrypt hash nor {PLAIN_PREFIX}")
    return users


def _cost(stored: str) -> int | None:
    """The cost of a bcrypt hash `$2b$12$<53 characters>`, None if it is not one."""
    match = _BCRYPT_HASH.fullmatch(stored)
    if match is None or not MIN_COST <= int(match[1]) <= MAX_COST:
        return None
    return int(match[1])


def hash_line(username: str | None, password: bytes, cost: int = DEFAULT_COST) -> str:
    """What `mailrunner auth hash` prints: `username:hash`, or the hash alone; ValueError for
    a username the file could not hold (empty, a colon, blanks, a leading `#`)."""
    if len(password) > MAX_PASSWORD_BYTES:
        raise ValueError(f"a password is at most {MAX_PASSWORD_BYTES} bytes for bcrypt")
    if username is not None and (
        not username
        or ":" in username
        or username.startswith("#")
        or any(c.isspace() or not c.isprintable() for c in username)
    ):
        raise ValueError(f"a username has no colon, blank or leading #: {username!r}")
    hashed = bcrypt.hashpw(password, bcrypt.gensalt(rounds=cost)).decode()
    return hashed if username is None else f"{username}:{hashed}"


def read(path: Path) -> tuple[_Stamp, dict[str, Secret]]:
    """Read and parse the file (blocking); OSError or ValueError when it cannot be used.

    Opened without blocking and read only if it is a regular file of at most
    `MAX_FILE_BYTES`: a path replaced by (a symlink to) a FIFO would otherwise hang the
    reading thread forever, and one to /dev/zero fill the memory."""
    with open(path, "rb", opener=_open_nonblocking) as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path}: not a regular file")
        data = file.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ValueError(f"{path} line {line}: not UTF-8") from None
    return _Stamp.of_info(info), parse(text, str(path))


def _open_nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK)


def read_at_start(path: Path) -> tuple[_Stamp, dict[str, Secret]]:
    """`read`, its failure a ConfigError: at start there is no last good file to keep."""
    try:
        return read(path)
    except (OSError, ValueError) as error:
        raise ConfigError([f"smtp.auth.credentials_file: {_reason(error)}"]) from None


def stand_in_hash(users: Mapping[str, Secret]) -> bytes:
    """A hash as costly as the file's costliest, for unknown users (blocking: it hashes)."""
    costs = [_cost(s.value.decode()) for s in users.values() if not s.plain]
    cost = max((c for c in costs if c is not None), default=DEFAULT_COST)
    return bcrypt.hashpw(_STAND_IN_PASSWORD, bcrypt.gensalt(rounds=cost))


def matches(secret: Secret | None, stand_in: bytes, password: bytes) -> bool:
    """The check itself (blocking): bcrypt, or a constant-time comparison for `{PLAIN}`;
    a bcrypt-costly check against `stand_in` when there is no such user."""
    if secret is None:
        bcrypt.checkpw(_STAND_IN_PASSWORD[:-1], stand_in)
        return False
    if secret.plain:
        return hmac.compare_digest(secret.value, password)
    return bcrypt.checkpw(password, secret.value)


class ChecksBusy(Exception):
    """More checks are waiting than `MAX_QUEUED_CHECKS`; this one was not made."""


class CredentialsFile:
    """The users of `path`, read now (ConfigError if it cannot be) and again when it changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp, self._users = read_at_start(path)
        self._stand_in = stand_in_hash(self._users)
        self._warned: set[str] = set()
        self._warn_plain()
        self._failed: _Stamp | None = None
        self._next_look = time.monotonic() + RELOAD_INTERVAL
        self._reloading: asyncio.Lock | None = None
        self._checking: asyncio.Semaphore | None = None
        self._queued = 0
        log.info("credentials loaded", file=str(path), users=len(self._users))

    def __repr__(self) -> str:
        return f"CredentialsFile({str(self._path)!r}, users={len(self._users)})"

    @property
    def users(self) -> frozenset[str]:
        return frozenset(self._users)

    async def check(self, username: str, password: bytes) -> bool:
        """Whether `password` is `username`'s; a password over 72 bytes never is, and costs
        what a wrong one does. `ChecksBusy` when too many checks wait already."""
        await self.refresh()
        secret = self._users.get(username)
        if len(password) > MAX_PASSWORD_BYTES:
            secret, password = None, b""
        if self._queued >= MAX_QUEUED_CHECKS:
            raise ChecksBusy
        if self._checking is None:
            self._checking = asyncio.Semaphore(1)
        self._queued += 1
        try:
            async with self._checking:
                return await asyncio.to_thread(matches, secret, self._stand_in, password)
        finally:
            self._queued -= 1

    async def refresh(self) -> None:
        """Re-read the file if it changed since the last look (at most one look a second)."""
        now = time.monotonic()
        if now < self._next_look:
            return
        if self._reloading is None:
            self._reloading = asyncio.Lock()
        if self._reloading.locked():
            return  # another check is looking; this one uses the users as they are
        async with self._reloading:
            self._next_look = now + RELOAD_INTERVAL
            await asyncio.to_thread(self._reload_if_changed)

    def _reload_if_changed(self) -> None:
        """Runs on a thread: a look at the metadata, a read only when it changed."""
        try:
            stamp = _Stamp.of(self._path)
        except OSError as error:
            self._keep(None, error)
            return
        if stamp in (self._stamp, self._failed):
            return
        try:
            stamp, users = read(self._path)
        except (OSError, ValueError) as error:
            self._keep(stamp, error)
            return
        stand_in = stand_in_hash(users) if _costs(users) != _costs(self._users) else None
        self._stamp, self._users, self._failed = stamp, users, None
        if stand_in is not None:
            self._stand_in = stand_in
        self._warn_plain()
        log.info("credentials reloaded", file=str(self._path), users=len(users))

    def _keep(self, stamp: _Stamp | None, error: BaseException) -> None:
        """Log once per failing version of the file; the users stay as they were."""
        key = stamp or _Stamp(-1, -1, -1, -1)
        if key == self._failed:
            return
        self._failed = key
        log.error(
            "credentials file unusable, keeping the last good one",
            file=str(self._path),
            reason=_reason(error),
            users=len(self._users),
        )

    def _warn_plain(self) -> None:
        for user, secret in self._users.items():
            if secret.plain and user not in self._warned:
                self._warned.add(user)
                log.warning(
                    "credentials file holds a plain-text password; use `mailrunner auth hash`",
                    file=str(self._path),
                    user=user,
                )


def _costs(users: Mapping[str, Secret]) -> frozenset[int | None]:
    return frozenset(_cost(s.value.decode()) for s in users.values() if not s.plain)


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError):
        return f"cannot read {error.filename}: {error.strerror}"
    return str(error)
