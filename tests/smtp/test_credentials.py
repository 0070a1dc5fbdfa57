"""Unit tests of the credentials file (parsing, checking, reloading, warnings) and of the
per-address AUTH failure counter, without a server."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import bcrypt
import pytest
from structlog.testing import capture_logs

from mailrunner.errors import ConfigError
from mailrunner.smtp import credentials
from mailrunner.smtp.auth_limiter import FailureLimiter, client_key
from mailrunner.smtp.credentials import CredentialsFile, Secret, hash_line, parse
from support.waiting import WAIT_SECONDS

LONG = b"L" * 72


def hashed(password: bytes) -> str:
    return bcrypt.hashpw(password, bcrypt.gensalt(rounds=4)).decode()


def write(path: Path, *lines: str) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_parse_reads_hashes_and_plain_passwords_and_skips_comments() -> None:
    alice = hashed(b"pw")
    users = parse(f"# who may send\n\nalice:{alice}\n  bob:{{PLAIN}}pw:with:colons  \n", "f")
    assert users == {
        "alice": Secret(alice.encode()),
        "bob": Secret(b"pw:with:colons", plain=True),
    }


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("no colon here", "f line 1: expected user:hash"),
        (":{PLAIN}secret-x", "f line 1: expected user:hash"),
        ("a:{PLAIN}secret-x\na:{PLAIN}secret-y", "f line 2: user 'a' listed twice"),
        ("a:secret-x", "f line 1: 'a' has neither a bcrypt hash nor {PLAIN}"),
        ("a:$2b$04$tooshort", "f line 1: 'a' has neither a bcrypt hash nor {PLAIN}"),
        ("a:{PLAIN}", "f line 1: empty {PLAIN} password for 'a'"),
    ],
)
def test_a_bad_line_is_named_by_number_without_its_secret(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match="line") as error:
        parse(text, "f")
    assert str(error.value) == problem
    assert "secret" not in str(error.value)


def test_a_missing_or_invalid_file_at_start_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"credentials_file: cannot read .*absent"):
        CredentialsFile(tmp_path / "absent")
    with pytest.raises(ConfigError, match="line 1: expected user:hash"):
        CredentialsFile(write(tmp_path / "bad", "nobody"))


def test_check_accepts_only_the_users_own_password(tmp_path: Path) -> None:
    file = CredentialsFile(
        write(tmp_path / "users", f"alice:{hashed(b'pw')}", f"long:{hashed(LONG)}", "p:{PLAIN}x")
    )

    async def checks() -> list[bool]:
        return [
            await file.check("alice", b"pw"),
            await file.check("alice", b"PW"),
            await file.check("nobody", b"pw"),
            await file.check("", b"pw"),
            await file.check("long", LONG),
            await file.check("long", LONG + b"x"),  # bcrypt would cut it to a match
            await file.check("p", b"x"),
            await file.check("p", b"x" * 73),
        ]

    assert asyncio.run(checks()) == [True, False, False, False, True, False, True, False]


def test_checks_run_on_threads_one_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = CredentialsFile(write(tmp_path / "users", f"alice:{hashed(b'pw')}"))
    lock = threading.Lock()
    active: list[int] = []
    most = [0]
    release = threading.Event()
    entered = threading.Event()
    loop_threads: set[int] = set()

    def held_match(secret: Secret | None, stand_in: bytes, password: bytes) -> bool:
        with lock:
            active.append(1)
            most[0] = max(most[0], len(active))
        loop_threads.add(threading.get_ident())
        entered.set()
        release.wait(WAIT_SECONDS)
        with lock:
            active.pop()
        return True

    monkeypatch.setattr(credentials, "matches", held_match)

    async def burst() -> list[bool]:
        tasks = [asyncio.create_task(file.check("alice", b"pw")) for _ in range(4)]
        assert await asyncio.to_thread(entered.wait, WAIT_SECONDS), "a check on its thread"
        for _ in range(20):
            await asyncio.sleep(0)  # give the others every chance to start theirs
        release.set()
        return list(await asyncio.gather(*tasks))

    assert asyncio.run(burst()) == [True] * 4
    assert most[0] == 1
    assert threading.get_ident() not in loop_threads


def test_a_reload_warns_only_about_new_plain_users_and_keeps_a_bad_file_out(
    tmp_path: Path,
) -> None:
    path = write(tmp_path / "users", "carol:{PLAIN}secret-1")
    with capture_logs() as logs:
        file = CredentialsFile(path)
        write(path, "carol:{PLAIN}secret-2", "dave:{PLAIN}secret-3", "# changed size")
        file._reload_if_changed()
        write(path, "garbage")
        file._reload_if_changed()
        file._reload_if_changed()  # the same bad file is logged once
    warned = [e["user"] for e in logs if e["event"].startswith("credentials file holds")]
    assert warned == ["carol", "dave"]
    assert [e["event"] for e in logs if e["log_level"] == "error"] == [
        "credentials file unusable, keeping the last good one"
    ]
    assert file.users == {"carol", "dave"}
    assert "secret-" not in repr(logs)


def test_hash_line_is_a_line_the_file_reads() -> None:
    line = hash_line("alice", b"pw", cost=4)
    assert parse(line, "f")["alice"].plain is False
    with pytest.raises(ValueError, match="at most 72 bytes"):
        hash_line("alice", b"x" * 73, cost=4)
    for bad in ("", "a:b", "a b", "#a"):
        with pytest.raises(ValueError, match="username"):
            hash_line(bad, b"pw", cost=4)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_failure_beyond_the_limit_locks_the_address_for_the_window() -> None:
    clock = Clock()
    limiter = FailureLimiter(3, clock=clock)
    assert [limiter.failed("192.0.2.1") for _ in range(4)] == [False, False, False, True]
    assert limiter.locked("192.0.2.1")
    assert not limiter.locked("192.0.2.2"), "per address"
    clock.now += 59
    assert limiter.locked("192.0.2.1")
    clock.now += 2
    assert not limiter.locked("192.0.2.1"), "a minute later the failures have aged out"
    assert not limiter.failed("192.0.2.1")


def test_loopback_is_exempt_unless_limited_and_ipv6_counts_by_its_slash_64() -> None:
    exempt = FailureLimiter(1)
    assert [exempt.failed(host) for host in ("127.0.0.1", "::1") * 3] == [False] * 6
    assert not exempt.locked("127.0.0.1")
    limited = FailureLimiter(1, limit_loopback=True)
    assert [limited.failed("127.0.0.1") for _ in range(2)] == [False, True]
    assert client_key("2001:db8::1", False) == client_key("2001:db8::ffff", False)
    assert client_key("::ffff:192.0.2.1", False) == "192.0.2.1"
    assert client_key("unknown", True) is None


def test_checks_beyond_the_queue_are_refused_at_once_and_the_queue_drains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = CredentialsFile(write(tmp_path / "users", f"alice:{hashed(b'pw')}"))
    release = threading.Event()
    entered = threading.Event()

    def held_match(secret: Secret | None, stand_in: bytes, password: bytes) -> bool:
        entered.set()
        return release.wait(WAIT_SECONDS)

    monkeypatch.setattr(credentials, "matches", held_match)
    monkeypatch.setattr(credentials, "MAX_QUEUED_CHECKS", 2)

    async def flood() -> list[bool]:
        held = [asyncio.create_task(file.check("alice", b"pw")) for _ in range(2)]
        assert await asyncio.to_thread(entered.wait, WAIT_SECONDS)
        with pytest.raises(credentials.ChecksBusy):
            await file.check("alice", b"pw")
        release.set()
        results = list(await asyncio.gather(*held))
        return [*results, await file.check("alice", b"pw")]

    assert asyncio.run(flood()) == [True, True, True]
