"""Configuration: defaults, discovery, durations, env expansion and errors by key path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mailrunner.config import (
    DRIVER_NAMES,
    EMBEDDED_DEFAULT,
    ConfigError,
    config_from_mapping,
    load,
    mask_url,
    mask_urls_in,
    masked_dump,
)
from mailrunner.durations import parse_duration
from support.processes import run_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("60s", 60.0), ("5m", 300.0), ("1h", 3600.0), ("250ms", 0.25), (7, 7.0), ("1.5", 1.5)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "5 days", True, "-1s", "1d"])
def test_bad_durations_are_refused(text: object) -> None:
    with pytest.raises(ValueError, match=r"duration|negative"):
        parse_duration(text)


MINIMAL = {"jobs": {"pipelines": {"smtp-emails": {"driver": "sqlite"}}}}


def test_defaults_match_the_design_table() -> None:
    config = config_from_mapping(MINIMAL)
    smtp = config.smtp
    assert (smtp.addr, smtp.hostname, smtp.read_timeout, smtp.session_timeout) == (
        "127.0.0.1:1025",
        "localhost",
        60.0,
        1800.0,
    )
    assert (smtp.max_message_size, smtp.max_recipients, smtp.max_connections) == (
        10485760,
        100,
        1000,
    )
    assert (smtp.use_jobs, smtp.jobs.targets, smtp.jobs.push_timeout) == (True, [], 5.0)
    inbox = config.inbox
    assert (inbox.enabled, inbox.pipeline, inbox.max_messages, inbox.max_age) == (
        True,
        "inbox",
        10_000,
        None,
    )
    assert (inbox.max_preview_bytes, config.inbox_path) == (2 * 1024 * 1024, Path("var/inbox.db"))
    assert (smtp.auth.mode, smtp.attachment_storage.mode, smtp.parse.max_depth) == (
        "capture",
        "memory",
        50,
    )
    assert (config.rpc.listen, config.logs.level, config.logs.format) == (
        "127.0.0.1:6001",
        "info",
        "console",
    )
    assert config.attachments_dir == Path("var/attachments")


def test_every_problem_is_reported_with_its_key_path() -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_mapping(
            {
                "smtp": {"max_message_size": -1, "colour": "blue", "read_timeout": "soon"},
                "jobs": {
                    "pipelines": {
                        "a": {"driver": "sqlite", "config": {"pth": "x"}},
                        "b": {"driver": "kafka"},
                    },
                    "consume": ["missing"],
                },
                "logs": {"level": "loud"},
            },
            "file.yaml",
        )
    problems = caught.value.problems
    assert "smtp.max_message_size: must be >= 0" in problems
    assert "smtp.colour: unknown key" in problems
    assert any(p.startswith("smtp.read_timeout: must be a duration") for p in problems)
    assert "jobs.pipelines.a.config.pth: unknown key" in problems
    assert f"jobs.pipelines.b: driver must be one of {', '.join(DRIVER_NAMES)}" in problems
    assert any(p.startswith("jobs.consume: names pipelines not declared") for p in problems)
    assert any(p.startswith("logs.level:") for p in problems)
    assert "file.yaml" in str(caught.value)


def test_driver_names_are_read_from_the_pipeline_models() -> None:
    """The one list the API schema, the CLI and config errors offer; the models are its home."""
    assert DRIVER_NAMES == ("memory", "sqlite", "redis", "amqp", "nats")
    for name in DRIVER_NAMES:
        config = config_from_mapping({"jobs": {"pipelines": {"smtp-emails": {"driver": name}}}})
        assert config.jobs.pipelines["smtp-emails"].driver == name


def test_environment_expansion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MR_HOST", "mx.example")
    config = config_from_mapping(
        {**MINIMAL, "smtp": {"hostname": "${MR_HOST}", "addr": "${MR_ADDR:-127.0.0.1:2525}"}}
    )
    assert (config.smtp.hostname, config.smtp.addr) == ("mx.example", "127.0.0.1:2525")
    with pytest.raises(
        ConfigError, match=r"smtp.hostname: environment variable MR_NOPE is not set"
    ):
        config_from_mapping({"smtp": {"hostname": "${MR_NOPE}"}})


def without_jobs(hostname: str) -> str:
    """A config that needs no pipeline: the worker-pool path, with a (never started) command."""
    return f"smtp: {{hostname: {hostname}, use_jobs: false}}\nserver: {{command: w}}\n"


def test_discovery_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAILRUNNER_CONFIG", raising=False)
    config, source = load()
    assert source == EMBEDDED_DEFAULT
    assert (config.smtp.jobs.targets, config.jobs.pipelines) == ([], {}), "the inbox only"
    assert config.pipelines["inbox"].driver == "sqlite"
    (tmp_path / "mailrunner.yaml").write_text(without_jobs("local"))
    assert load()[0].smtp.hostname == "local"
    (tmp_path / "env.yaml").write_text(without_jobs("from-env"))
    monkeypatch.setenv("MAILRUNNER_CONFIG", str(tmp_path / "env.yaml"))
    assert load()[0].smtp.hostname == "from-env"
    (tmp_path / "explicit.yaml").write_text(without_jobs("explicit"))
    assert load(tmp_path / "explicit.yaml")[0].smtp.hostname == "explicit"


def test_secrets_are_masked() -> None:
    config = config_from_mapping(
        {
            "smtp": {"use_jobs": False},
            "server": {
                "command": "python worker.py",
                "env": {"DB_PASSWORD": "hunter2", "API_KEY": "k", "APP_ENV": "prod"},
            },
            "rpc": {"token": "tok"},
            "jobs": {
                "pipelines": {"q": {"driver": "amqp", "config": {"addr": "amqp://u:pw@127.0.0.1/"}}}
            },
        }
    )
    dumped = masked_dump(config)
    assert dumped["rpc"]["token"] == "***"
    assert dumped["server"]["env"] == {"DB_PASSWORD": "***", "API_KEY": "***", "APP_ENV": "prod"}
    assert dumped["jobs"]["pipelines"]["q"]["config"]["addr"] == "amqp://u:***@127.0.0.1/"


def test_config_check_prints_the_effective_config_of_the_example() -> None:
    result = run_cli("config", "check", "-c", str(ROOT / "examples" / "mailrunner.yaml"))
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout
    assert "max_message_size: 10485760" in result.stdout


def test_config_check_exits_1_with_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("smtp:\n  max_recipients: 0\n")
    result = run_cli("config", "check", "-c", str(bad))
    assert result.returncode == 1
    assert "smtp.max_recipients: must be >= 1" in result.stderr


def test_config_check_reports_a_missing_file(tmp_path: Path) -> None:
    result = run_cli("config", "check", "-c", str(tmp_path / "nope.yaml"))
    assert result.returncode == 1
    assert "cannot read" in result.stderr


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("mailrunner, version ")


def test_the_smtp_pipelines_must_be_declared_unless_pushing_remotely() -> None:
    with pytest.raises(
        ConfigError, match=r"smtp\.jobs\.pipelines: 'a', 'b' not declared in jobs\.pipelines"
    ):
        config_from_mapping({"smtp": {"jobs": {"pipelines": ["a", "b"]}}})
    with pytest.raises(ConfigError, match=r"smtp\.jobs\.pipeline: 'a' not declared"):
        config_from_mapping({"smtp": {"jobs": {"pipeline": "a"}}})
    remote = config_from_mapping({"smtp": {"jobs": {"rpc": "http://127.0.0.1:6001"}}})
    assert remote.smtp.jobs.rpc is not None
    assert (remote.runs_inbox, remote.pipelines) == (False, {}), "the jobs node runs the inbox"
    pool = config_from_mapping({"smtp": {"use_jobs": False}, "server": {"command": "w"}})
    assert pool.smtp.use_jobs is False
    assert (pool.runs_inbox, pool.pipelines) == (False, {})


def test_pipeline_is_the_shorthand_of_pipelines() -> None:
    declared = {"pipelines": {"a": {"driver": "memory"}, "b": {"driver": "memory"}}}
    one = config_from_mapping({"smtp": {"jobs": {"pipeline": "a"}}, "jobs": declared})
    both = config_from_mapping({"smtp": {"jobs": {"pipelines": ["a", "b"]}}, "jobs": declared})
    assert (one.smtp.jobs.targets, both.smtp.jobs.targets) == (["a"], ["a", "b"])
    with pytest.raises(ConfigError, match=r"smtp\.jobs: pipeline and pipelines: give one"):
        config_from_mapping({"smtp": {"jobs": {"pipeline": "a", "pipelines": ["b"]}}})
    with pytest.raises(ConfigError, match=r"smtp\.jobs: pipelines: names a pipeline twice"):
        config_from_mapping({"smtp": {"jobs": {"pipelines": ["a", "a"]}}, "jobs": declared})


def test_the_inbox_pipeline_is_implicit_unless_declared_and_is_the_inbox_s_alone() -> None:
    implicit = config_from_mapping({}).pipelines
    assert (list(implicit), implicit["inbox"].driver) == (["inbox"], "sqlite")
    declared = config_from_mapping(
        {"inbox": {"pipeline": "caught"}, "jobs": {"pipelines": {"caught": {"driver": "memory"}}}}
    )
    assert declared.pipelines["caught"].driver == "memory"
    with pytest.raises(ConfigError, match=r"'inbox' is the inbox's pipeline"):
        config_from_mapping(
            {
                "smtp": {"jobs": {"pipelines": ["inbox"]}},
                "jobs": {"pipelines": {"inbox": {"driver": "memory"}}},
            }
        )
    with pytest.raises(ConfigError, match=r"jobs\.consume: 'inbox' is consumed by the inbox"):
        config_from_mapping(
            {
                "server": {"command": "w"},
                "jobs": {"consume": ["inbox"], "pipelines": {"inbox": {"driver": "memory"}}},
            }
        )
    with pytest.raises(ConfigError, match=r"names no pipeline and the inbox is off"):
        config_from_mapping({"inbox": {"enabled": False}})
    off = config_from_mapping(
        {
            "inbox": {"enabled": False, "max_age": "1h"},
            "smtp": {"jobs": {"pipeline": "smtp-emails"}},
            **MINIMAL,
        }
    )
    assert (off.runs_inbox, list(off.pipelines), off.inbox.max_age) == (
        False,
        ["smtp-emails"],
        3600.0,
    )


def test_a_pool_that_will_run_needs_a_command(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"smtp\.pool\.command: required when smtp\.use_jobs"):
        config_from_mapping({"smtp": {"use_jobs": False}})
    consuming = {
        "jobs": {"consume": ["smtp-emails"], "pipelines": {"smtp-emails": {"driver": "memory"}}}
    }
    with pytest.raises(ConfigError, match=r"jobs\.pool\.command: required when jobs\.consume"):
        config_from_mapping(consuming)
    with_command = {"jobs": {**consuming["jobs"], "pool": {"command": "w"}}}
    assert config_from_mapping(with_command).jobs.consume == ["smtp-emails"]
    config = tmp_path / "pool.yaml"
    config.write_text("smtp:\n  use_jobs: false\n")
    result = run_cli("config", "check", "-c", str(config))
    assert result.returncode == 1, "config check must refuse what serve would refuse"
    assert "smtp.pool.command: required" in result.stderr


def test_the_hardening_limits_have_their_documented_defaults() -> None:
    config = config_from_mapping(MINIMAL)
    smtp = config.smtp
    assert (smtp.parse.max_parts, smtp.parse.max_header_bytes) == (1000, 1024 * 1024)
    assert (smtp.max_inflight_bytes, smtp.max_connections_per_ip, smtp.limit_loopback) == (
        256 * 1024 * 1024,
        100,
        False,
    )
    assert smtp.attachment_storage.file_mode == 0o600
    assert (config.rpc.allowed_hosts, config.rpc.allow_any_declare) == ([], False)
    pool = config_from_mapping({**MINIMAL, "jobs": {**MINIMAL["jobs"], "pool": {"num_workers": 3}}})
    assert pool.jobs.pool.worker_limit == 12
    memory = config_from_mapping({"jobs": {"pipelines": {"smtp-emails": {"driver": "memory"}}}})
    assert memory.jobs.pipelines["smtp-emails"].config.max_queued == 100_000  # type: ignore[union-attr]
    nats = config_from_mapping({"jobs": {"pipelines": {"smtp-emails": {"driver": "nats"}}}})
    assert nats.jobs.pipelines["smtp-emails"].config.max_clock_skew == 2.0  # type: ignore[union-attr]


@pytest.mark.parametrize(("given", "mode"), [("0640", 0o640), ("0o600", 0o600), (0o660, 0o660)])
def test_attachment_file_modes_are_read_as_octal(given: object, mode: int) -> None:
    config = config_from_mapping(
        {**MINIMAL, "smtp": {"attachment_storage": {"mode": "tempfile", "file_mode": given}}}
    )
    assert config.smtp.attachment_storage.file_mode == mode


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"smtp": {"attachment_storage": {"file_mode": "0400"}}}, "owner read and write"),
        ({"smtp": {"attachment_storage": {"file_mode": "rw-"}}}, "octal file mode"),
        ({"smtp": {"attachment_storage": {"file_mode": 0o1777}}}, "octal file mode"),
        ({"jobs": {"pool": {"num_workers": 4, "max_workers": 2}}}, "max_workers"),
    ],
)
def test_bad_hardening_settings_are_refused_by_key_path(
    settings: dict[str, dict[str, object]], problem: str
) -> None:
    merged = {**MINIMAL, **settings}
    if "jobs" in settings:
        merged["jobs"] = {**MINIMAL["jobs"], **settings["jobs"]}
    with pytest.raises(ConfigError, match=problem):
        config_from_mapping(merged)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://s3cr3t-token@127.0.0.1:4222", "nats://***@127.0.0.1:4222"),
        ("amqp://guest:guest@127.0.0.1:5672/", "amqp://guest:***@127.0.0.1:5672/"),
        ("redis://:pw@[::1]:6379/0", "redis://***@[::1]:6379/0"),
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
    ],
)
def test_any_url_userinfo_is_masked(url: str, shown: str) -> None:
    assert mask_url(url) == shown
    assert mask_urls_in(f"cannot reach {url}: refused") == f"cannot reach {shown}: refused"


_LOG_A_BROKER_FAILURE = """
import sys
import structlog
from mailrunner.config import LogsConfig
from mailrunner.logs import configure
configure(LogsConfig(format="json"), sys.stdout)
structlog.get_logger("test").warning(
    "broker down", addr="nats://s3cr3t@127.0.0.1:4222", error="amqp://u:pw@h/ refused"
)
"""


def test_log_lines_never_show_url_credentials() -> None:
    """In a child process: logging is process-wide, and this suite's servers log too."""
    child = subprocess.run(
        [sys.executable, "-c", _LOG_A_BROKER_FAILURE],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    line = child.stdout
    assert "broker down" in line
    assert "s3cr3t" not in line
    assert ":pw@" not in line
    assert "nats://***@127.0.0.1:4222" in line


def test_a_job_delay_beyond_30_days_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"smtp\.jobs\.delay: must be <= 2592000"):
        config_from_mapping({**MINIMAL, "smtp": {"jobs": {"delay": "721h"}}})


def test_an_empty_api_token_is_refused_not_taken_for_a_token() -> None:
    """`token: ${TOKEN:-}` with TOKEN unset must not turn the Host/Origin guard off."""
    with pytest.raises(ConfigError, match=r"rpc\.token"):
        config_from_mapping({**MINIMAL, "rpc": {"token": ""}})


def test_hooks_are_off_by_default_with_a_5s_timeout_that_refuses_on_error() -> None:
    smtp = config_from_mapping(MINIMAL).smtp
    assert (smtp.hooks, smtp.hooks_timeout, smtp.hooks_on_error) == ((), 5.0, "reject")
    assert not smtp.runs_pool, "with use_jobs and no hooks the SMTP pool does not run"


def test_hooks_run_the_smtp_pool_on_the_jobs_path_too_so_it_needs_a_command() -> None:
    with pytest.raises(ConfigError, match=r"smtp\.pool\.command: required when .*smtp\.hooks"):
        config_from_mapping({**MINIMAL, "smtp": {"hooks": ["rcpt"]}})
    hooked = config_from_mapping(
        {**MINIMAL, "server": {"command": "python w.py"}, "smtp": {"hooks": ["rcpt", "data"]}}
    )
    assert (hooked.smtp.use_jobs, hooked.smtp.runs_pool) == (True, True)
    assert hooked.smtp.hooks == ("rcpt", "data")


@pytest.mark.parametrize(
    ("smtp", "problem"),
    [
        ({"hooks": ["rcpt", "auth"]}, "smtp.hooks.1:"),
        ({"hooks": ["rcpt", "rcpt"]}, "smtp.hooks: list each stage once"),
        ({"hooks_timeout": "0s"}, "smtp.hooks_timeout:"),
        ({"hooks_on_error": "tempfail"}, "smtp.hooks_on_error:"),
    ],
)
def test_bad_hook_settings_are_refused_by_key_path(smtp: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_mapping({**MINIMAL, "server": {"command": "w"}, "smtp": smtp})
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems
