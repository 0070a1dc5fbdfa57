"""`mailrunner serve` as a real process, driven by swaks and smtplib the way users do."""

from __future__ import annotations

import base64
import json
import signal
import smtplib
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import yaml

from support.processes import ServeProcess, run_cli
from support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "s3cr3t-Passw0rd"


def run_swaks(swaks: str, port: int, *args: str) -> str:
    result = subprocess.run(
        [swaks, "--server", f"127.0.0.1:{port}", "--to", "a@example.com", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, f"swaks failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_swaks_with_attachment_and_auth_becomes_a_complete_event(
    serve: Callable[..., ServeProcess], swaks: str
) -> None:
    server = serve()
    readme = ROOT / "README.md"
    output = run_swaks(
        swaks, server.port, "--attach", f"@{readme}", "--auth-user", "u", "--auth-password", "p"
    )
    assert "<-  250 2.0.0 OK: queued as" in output
    (event,) = server.wait_events(1)
    assert event["envelope"]["to"] == ["a@example.com"]
    assert event["authentication"]["username"] == "u"
    assert event["authentication"]["password"] == "p"
    (attachment,) = event["attachments"]
    assert attachment["filename"] == "README.md"
    assert attachment["size"] == readme.stat().st_size
    assert base64.b64decode(attachment["content"]) == readme.read_bytes()


def test_tempfile_storage_writes_attachments_and_event_points_at_them(
    serve: Callable[..., ServeProcess], swaks: str, tmp_path: Path
) -> None:
    server = serve(smtp={"attachment_storage": {"mode": "tempfile"}})
    attachment_file = tmp_path / "report.bin"
    attachment_file.write_bytes(bytes(range(256)) * 10)
    run_swaks(swaks, server.port, "--attach", f"@{attachment_file}")
    (event,) = server.wait_events(1)
    (attachment,) = event["attachments"]
    assert "content" not in attachment
    stored = Path(attachment["path"])
    assert stored.is_absolute()
    assert stored.is_relative_to(tmp_path / "var" / "attachments" / event["id"])
    assert stored.read_bytes() == attachment_file.read_bytes()


def test_sigterm_stops_the_server_with_exit_code_0_and_removes_the_pidfile(
    serve: Callable[..., ServeProcess],
) -> None:
    server = serve()
    assert int(server.pidfile.read_text()) == server.process.pid
    assert server.terminate() == 0
    assert not server.pidfile.exists()
    assert "shutting down" in server.logs()


def test_credentials_never_reach_the_logs_at_debug_level(
    serve: Callable[..., ServeProcess], swaks: str
) -> None:
    server = serve(logs={"level": "debug"})
    run_swaks(
        swaks, server.port, "--auth", "PLAIN", "--auth-user", "u1", "--auth-password", PASSWORD
    )
    run_swaks(
        swaks, server.port, "--auth", "LOGIN", "--auth-user", "u2", "--auth-password", PASSWORD
    )
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.login("u3", PASSWORD)
        client.sendmail("a@example.com", ["b@example.com"], b"Subject: x\r\n\r\ny\r\n")
    events = server.wait_events(3)
    assert [e["authentication"]["password"] for e in events] == [PASSWORD] * 3
    server.terminate()
    logs = server.logs()
    assert "command=AUTH" in logs, "debug command traces are missing: the check proves nothing"
    secrets = [PASSWORD, base64.b64encode(PASSWORD.encode()).decode()]
    secrets += [base64.b64encode(f"\0u{n}\0{PASSWORD}".encode()).decode() for n in (1, 3)]
    for secret in secrets:
        assert secret not in logs, f"a credential ({secret!r}) leaked into the logs"


def test_serve_refuses_an_invalid_config_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("smtp:\n  max_message_size: -5\n  colour: blue\n")
    result = run_cli("serve", "-c", str(config))
    assert result.returncode == 1
    assert "smtp.max_message_size: must be >= 0" in result.stderr
    assert "smtp.colour: unknown key" in result.stderr


def test_serve_reports_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "c.yaml"
        config.write_text(
            f"smtp:\n  addr: 127.0.0.1:{port}\n  use_jobs: false\n  pool: {{command: x}}\n"
        )
        result = run_cli("serve", "-c", str(config))
    assert result.returncode == 1
    assert "cannot start" in result.stderr


def test_json_logs_have_a_line_per_message_per_connection_and_per_rejection(
    serve: Callable[..., ServeProcess],
) -> None:
    server = serve(logs={"format": "json"}, smtp={"max_recipients": 1})
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.ehlo("c")
        client.mail("a@example.com")
        client.rcpt("b@example.com")
        assert client.rcpt("c@example.com")[0] == 452
        client.data(b"Subject: x\r\n\r\ny\r\n")
    server.wait_events(1)
    server.terminate()
    records = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    by_event = {record["event"]: record for record in records}
    accepted = by_event["message accepted"]
    assert (accepted["mail_from"], accepted["recipients"], accepted["level"]) == (
        "a@example.com",
        1,
        "info",
    )
    assert {"uuid", "id", "size", "ms"} <= accepted.keys()
    assert accepted["delivered_to"] == "jobs pipeline smtp-emails"
    assert by_event["connection closed"]["messages"] == 1
    assert by_event["command rejected"]["reply"] == "452 4.5.3 Too many recipients"


def test_example_pool_config_runs_the_example_worker_which_prints_each_email(
    serve: Callable[..., ServeProcess], swaks: str
) -> None:
    settings = yaml.safe_load((ROOT / "examples" / "pool.yaml").read_text())
    settings["server"]["command"] = f"python {ROOT / 'examples' / 'worker.py'}"
    server = serve(**settings)
    output = run_swaks(
        swaks, server.port, "--header", "Subject: pooled", "--attach", f"@{ROOT / 'README.md'}"
    )
    assert "<-  250 2.0.0 OK: queued as" in output
    server.terminate()
    lines = [line for line in server.logs().splitlines() if "worker output" in line]
    assert any("subject='pooled'" in line and "README.md" in line for line in lines), lines
    assert all("pid=" in line for line in lines)


def test_kill_9_under_load_loses_no_message_that_got_250(
    serve: Callable[..., ServeProcess], tmp_path: Path
) -> None:
    server = serve()
    accepted: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def session(number: int) -> None:
        sequence = 0
        while not stop.is_set():
            message_id = f"<{number}.{sequence}@load.test>"
            sequence += 1
            try:
                with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
                    client.sendmail(
                        "a@example.com", ["b@example.com"], f"Message-ID: {message_id}\r\n\r\nx\r\n"
                    )
            except (OSError, smtplib.SMTPException):
                continue
            with lock:
                accepted.add(message_id)

    sessions = [threading.Thread(target=session, args=(n,)) for n in range(50)]
    for thread in sessions:
        thread.start()
    wait_until(lambda: len(accepted) >= 300, "300 accepted messages under load", 60)
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(10)
    stop.set()
    for thread in sessions:
        thread.join(30)
    restarted = ServeProcess(tmp_path, {})
    stored = {event["message"]["id"] for event in restarted.events()}
    restarted.terminate()
    missing = accepted - stored
    assert not missing, f"{len(missing)} of {len(accepted)} messages that got 250 were lost"


def test_make_run_config_consumes_each_email_with_the_example_consumer(
    serve: Callable[..., ServeProcess], swaks: str
) -> None:
    settings = yaml.safe_load((ROOT / "examples" / "mailrunner.yaml").read_text())
    settings["server"]["command"] = f"python {ROOT / 'examples' / 'consumer.py'}"
    settings["data_dir"] = "./var"
    server = serve(**settings)
    output = run_swaks(swaks, server.port, "--header", "Subject: consumed", "--to", "t@example.com")
    assert "<-  250 2.0.0 OK: queued as" in output
    wait_until(lambda: "subject='consumed'" in server.logs(), "the consumer to print the email")
    wait_until(lambda: server.events() == [], "the consumer to ack the job")
    line = next(line for line in server.logs().splitlines() if "subject='consumed'" in line)
    assert "to=t@example.com" in line
    assert "pid=" in line
