"""`mailrunner auth hash` as a user runs it (a child process, the password on stdin): its line
is one a verify-mode server logs alice in with; passwords bcrypt would cut, empty ones and
usernames the file cannot hold are usage errors (exit 2). `config check` reads the
credentials file too."""

from __future__ import annotations

import smtplib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import bcrypt

from support.server import RunningServer
from support.waiting import WAIT_SECONDS


def auth_hash(*args: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "mailrunner", "auth", "hash", *args],
        input=stdin,
        capture_output=True,
        timeout=30,
        check=False,
    )


def test_the_printed_line_logs_alice_in_on_a_verify_server(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    result = auth_hash("alice", "--cost", "4", stdin=b"s3cret pass\n")
    assert result.returncode == 0, result.stderr
    line = result.stdout.decode().strip()
    assert line.startswith("alice:$2b$04$")
    assert b"s3cret" not in result.stdout + result.stderr
    users = tmp_path / "users"
    users.write_text(line + "\n")
    server = start_server(
        smtp={"auth": {"mode": "verify", "credentials_file": str(users), "allow_insecure": True}}
    )
    with smtplib.SMTP(server.host, server.port, timeout=WAIT_SECONDS) as client:
        assert client.login("alice", "s3cret pass")[0] == 235, "the line ending is not kept"


def test_without_a_username_only_the_hash_is_printed_at_bcrypts_default_cost() -> None:
    result = auth_hash(stdin=b"pw\r\n")
    assert result.returncode == 0, result.stderr
    hashed = result.stdout.strip()
    assert hashed.startswith(b"$2b$12$")
    assert bcrypt.checkpw(b"pw", hashed)


def test_72_bytes_are_hashed_and_73_refused_with_exit_2() -> None:
    assert auth_hash("--cost", "4", stdin=b"p" * 72 + b"\n").returncode == 0
    refused = auth_hash("--cost", "4", stdin=b"p" * 73 + b"\n")
    assert refused.returncode == 2
    assert refused.stdout == b""
    assert b"73 bytes; bcrypt reads at most 72" in refused.stderr


def test_an_empty_password_and_a_username_with_a_colon_are_usage_errors() -> None:
    empty = auth_hash("alice", stdin=b"\n")
    assert (empty.returncode, empty.stdout) == (2, b"")
    assert b"empty" in empty.stderr
    colon = auth_hash("al:ice", "--cost", "4", stdin=b"pw\n")
    assert (colon.returncode, colon.stdout) == (2, b"")
    assert b"'al:ice'" in colon.stderr


def test_config_check_reads_the_credentials_file(tmp_path: Path) -> None:
    config = tmp_path / "auth.yaml"
    config.write_text(
        f"smtp: {{auth: {{mode: verify, credentials_file: {tmp_path / 'absent'}}}}}\n"
        "jobs: {pipelines: {smtp-emails: {driver: memory}}}\n"
    )
    missing = subprocess.run(
        [sys.executable, "-m", "mailrunner", "config", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert missing.returncode == 1
    assert f"smtp.auth.credentials_file: cannot read {tmp_path / 'absent'}" in missing.stderr
    (tmp_path / "absent").write_text("alice:{PLAIN}pw\n")
    present = subprocess.run(
        [sys.executable, "-m", "mailrunner", "config", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert present.returncode == 0, present.stderr
