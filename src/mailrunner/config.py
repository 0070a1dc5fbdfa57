"""The whole YAML configuration as frozen pydantic models.

Defaults live in the models, so the embedded default file only has to name what differs
(the inbox alone, no other pipeline).
Unknown keys and bad values stop start-up with every problem named by its key path,
because a typo that is silently dropped is a production incident later.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from mailrunner.durations import Duration
from mailrunner.errors import ConfigError
from mailrunner.faults import MAX_FAULT_RULES, FaultRule
from mailrunner.jobs.deadline import DEFAULT_PUSH_TIMEOUT, MAX_PUSH_TIMEOUT, MIN_PUSH_TIMEOUT
from mailrunner.jobs.model import MAX_DELAY
from mailrunner.wire.hooks import AUTH_STAGE, HookName, HookStage

CONFIG_ENV = "MAILRUNNER_CONFIG"
LOCAL_CONFIG = Path("mailrunner.yaml")
EMBEDDED_DEFAULT = "embedded default"
MAX_WORKERS_FACTOR = 4
"""`workers add` may grow a pool to this many times `num_workers` unless `max_workers` says."""
DEFAULT_PRIORITY = 10
"""A pipeline's priority unless configured, and the one SMTP gives its email jobs."""
DEFAULT_PREFETCH = 10
DEFAULT_RETRIES = 5
DEFAULT_VISIBILITY_TIMEOUT = 30.0
"""Seconds a lease lasts unless extended (consumers extend it every third of it)."""
DEFAULT_INBOX_PIPELINE = "inbox"
"""The pipeline the inbox consumes unless configured; a test client assumes it too."""
DEFAULT_INBOX_MAX_MESSAGES = 10_000
"""Messages the inbox keeps unless configured; the oldest go first."""
DEFAULT_INBOX_MAX_PREVIEW_BYTES = 2 * 1024 * 1024
"""Bytes of each text and HTML body the inbox keeps for its preview and search."""
DEFAULT_HOOKS_TIMEOUT = 5.0
"""Seconds an SMTP client waits for a hook's verdict unless `smtp.hooks_timeout` says."""

_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
"""The names of this machine an API without a token may listen on and answer to."""
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _check_host_port(value: object) -> str:
    if not isinstance(value, str) or not (match := _HOST_PORT.match(value)):
        raise ValueError("must be host:port, e.g. 127.0.0.1:1025")
    if int(match.group(2)) > 65535:
        raise ValueError("port must be <= 65535")
    return value


def _url_of(*schemes: str) -> AfterValidator:
    """A broker address must be a URL of one of `schemes` (the driver's client takes those)."""
    names = [f"{scheme}://" for scheme in schemes]
    listed = f"{', '.join(names[:-1])} or {names[-1]}"
    article = "an" if schemes[0][0] in "aeiou" else "a"

    def check(addr: str) -> str:
        if urlsplit(addr).scheme not in schemes:
            raise ValueError(f"must be {article} {listed} URL")
        return addr

    return AfterValidator(check)


HostPort = Annotated[str, BeforeValidator(_check_host_port)]


def split_host_port(addr: str) -> tuple[str, int]:
    """Split a validated `host:port` into the pieces asyncio wants."""
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


class _Model(BaseModel):
    """Built on first validation, not at import: a CLI command that reads no file needs the
    models' names and fields only (DRIVER_NAMES, the API's Declare), not their validators.
    Nested defaults are factories for the same reason: a default instance is a validation."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class PoolConfig(_Model):
    """A pool of worker processes; `command` falls back to `server.command`.

    `max_workers` caps what `workers add` may grow the pool to at run time (default four
    times `num_workers`), so one API call cannot fork the machine to death.
    """

    command: str | list[str] | None = None
    num_workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    max_workers: int | None = Field(default=None, ge=1)
    max_jobs: int = Field(default=0, ge=0)
    allocate_timeout: Duration = 60.0
    exec_timeout: Duration = 30.0
    destroy_timeout: Duration = 30.0

    @model_validator(mode="after")
    def _room_for_the_workers(self) -> PoolConfig:
        if self.max_workers is not None and self.max_workers < self.num_workers:
            raise ValueError(f"max_workers: must be >= num_workers ({self.num_workers})")
        return self

    @property
    def worker_limit(self) -> int:
        """How many workers the pool may have at most, `workers add` included."""
        return self.max_workers or MAX_WORKERS_FACTOR * self.num_workers


LoopChoice = Literal["auto", "asyncio", "uvloop"]
"""`server.loop`: which event loop runs the server (see `mailrunner.loops`)."""


class ServerConfig(_Model):
    """`command` and `env` start worker processes; `loop` picks the event loop (`auto`:
    uvloop when installed, else asyncio)."""

    command: str | list[str] | None = None
    env: dict[str, str] = {}
    loop: LoopChoice = "auto"


class AuthConfig(_Model):
    """AUTH PLAIN and LOGIN: `capture` accepts any credentials and records them in the
    event; `verify` checks them against `credentials_file` (one `user:bcrypt-hash` a line,
    re-read when it changes); `hook` asks a worker of the SMTP pool (its `auth` stage);
    `off` advertises no AUTH and answers 502 to it.

    `required`: MAIL before a successful AUTH gets 530. `max_failures`: more failed AUTHs
    than this from one client address within a minute close the connection with 421
    (loopback exempt unless `smtp.limit_loopback`). `allow_insecure`: verify credentials
    sent in the clear (without TLS AUTH gets 538 in `verify` and `hook` modes)."""

    mode: Literal["capture", "verify", "hook", "off"] = "capture"
    credentials_file: Path | None = None
    required: bool = False
    max_failures: int = Field(default=5, ge=1)
    allow_insecure: bool = False

    @model_validator(mode="after")
    def _credentials_for_verify(self) -> AuthConfig:
        if self.mode == "verify" and self.credentials_file is None:
            raise ValueError("mode verify: needs credentials_file")
        if self.mode != "verify" and self.credentials_file is not None:
            raise ValueError("credentials_file: only read in mode verify")
        if self.required and self.mode in ("capture", "off"):
            raise ValueError(f"required: needs mode verify or hook, not {self.mode}")
        return self

    @property
    def capture(self) -> bool:
        return self.mode == "capture"

    @property
    def checks(self) -> bool:
        """Credentials are checked (verify or hook), not just recorded."""
        return self.mode in ("verify", "hook")


def _check_file_mode(value: object) -> int:
    """A file mode as YAML gives it: `0o640`/`0640` as text, or an int (YAML 1.1 reads 0640
    as octal already)."""
    if isinstance(value, str):
        try:
            value = int(value.removeprefix("0o").removeprefix("0O") or "0", 8)
        except ValueError:
            raise ValueError("must be an octal file mode like 0600 or 0640") from None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0o777:
        raise ValueError("must be an octal file mode like 0600 or 0640")
    if value & 0o600 != 0o600:
        raise ValueError("must let the owner read and write (0600 at least)")
    return value


FileMode = Annotated[int, BeforeValidator(_check_file_mode)]


class AttachmentStorageConfig(_Model):
    """`memory` carries attachments in the event; `tempfile` stores every attachment as a
    file under `temp_dir` and the event carries its path; `auto` (claim-check) does that only
    for messages over `claim_check_bytes`, and keeps their raw message (`include_raw`) as a
    file too, so a big message is a small job. Consumers must see `temp_dir`.

    `file_mode` is for consumers that run as another user (e.g. 0640 with a shared group);
    the default keeps mail readable by this server's user only."""

    mode: Literal["memory", "tempfile", "auto"] = "memory"
    claim_check_bytes: int = Field(default=256 * 1024, ge=0)
    temp_dir: Path | None = None
    cleanup_after: Duration = 3600.0
    file_mode: FileMode = 0o600


class ParseConfig(_Model):
    """Limits that keep a hostile message from costing more than a normal one; a message past
    one is cut there, the cut is named in `parse_errors`, and the message is still delivered.

    `max_parts` counts every part below the message, containers and embedded messages too
    (an empty container costs what a leaf does); `max_header_bytes` is per header block.
    """

    max_depth: int = Field(default=50, ge=1, le=500)
    max_parts: int = Field(default=1000, ge=1)
    max_header_bytes: int = Field(default=1024 * 1024, ge=1024)
    offload_bytes: int = Field(default=262144, ge=0)
    processes: Annotated[int, Field(ge=0, le=32)] | Literal["auto"] = "auto"


class RpcTarget(_Model):
    """Another mailrunner's management API that takes the pushes instead of this process."""

    url: str
    token: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_url(cls, value: object) -> object:
        return {"url": value} if isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http(s) URL, e.g. http://127.0.0.1:6001")
        return url.rstrip("/")


class SmtpJobsConfig(_Model):
    """Where accepted email goes: every pipeline in `pipelines` (`pipeline` is the shorthand
    for one of them; giving both is an error), then the inbox's pipeline last."""

    pipelines: list[Annotated[str, Field(min_length=1)]] = []
    pipeline: str | None = Field(default=None, min_length=1)
    priority: int = Field(default=DEFAULT_PRIORITY, ge=0)
    delay: Duration = Field(default=0.0, le=MAX_DELAY)
    auto_ack: bool = False
    push_timeout: Duration = Field(
        default=DEFAULT_PUSH_TIMEOUT, ge=MIN_PUSH_TIMEOUT, le=MAX_PUSH_TIMEOUT
    )
    rpc: RpcTarget | None = None

    @model_validator(mode="after")
    def _one_way_to_name_them(self) -> SmtpJobsConfig:
        if self.pipeline is not None and self.pipelines:
            raise ValueError("pipeline and pipelines: give one (pipeline names a single one)")
        if len(set(self.pipelines)) != len(self.pipelines):
            raise ValueError("pipelines: names a pipeline twice")
        return self

    @property
    def targets(self) -> list[str]:
        """The pipelines every accepted email is pushed to, the inbox's aside."""
        return [self.pipeline] if self.pipeline is not None else list(self.pipelines)


class TlsConfig(_Model):
    """STARTTLS: offered when a certificate is configured, demanded when `required`.

    `implicit_addr` is a second listener that speaks TLS from the first byte (RFC 8314)
    with the same certificate; its sessions are TLS already, so `required` holds there."""

    cert_file: Path | None = None
    key_file: Path | None = None
    required: bool = False
    implicit_addr: HostPort | None = None

    @model_validator(mode="after")
    def _complete(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file: give both, or neither to turn TLS off")
        if self.required and self.cert_file is None:
            raise ValueError("required: needs cert_file and key_file")
        if self.implicit_addr is not None and self.cert_file is None:
            raise ValueError("implicit_addr: needs cert_file and key_file")
        return self


class ProxyProtocolConfig(_Model):
    """HAProxy's PROXY protocol (v1 and v2) from the load balancers in `trusted`: a
    connection from a trusted address must start with the header, and the address it names
    is the client's for everything after; no other connection may send one."""

    enabled: bool = False
    trusted: tuple[IPvAnyNetwork, ...] = ()
    timeout: Duration = Field(default=5.0, gt=0)
    """How long a trusted connection may take to send its header."""

    @model_validator(mode="after")
    def _someone_trusted(self) -> ProxyProtocolConfig:
        if self.enabled and not self.trusted:
            raise ValueError("trusted: list the load balancers' addresses (CIDR) to enable it")
        return self


class SmtpConfig(_Model):
    addr: HostPort = "127.0.0.1:1025"
    hostname: str = Field(default="localhost", min_length=1)
    read_timeout: Duration = Field(default=60.0, gt=0)
    session_timeout: Duration = Field(default=1800.0, gt=0)
    shutdown_timeout: Duration = 30.0
    max_message_size: int = Field(default=10485760, ge=0)
    max_recipients: int = Field(default=100, ge=1)
    max_connections: int = Field(default=1000, ge=1)
    max_connections_per_ip: int = Field(default=100, ge=1)
    limit_loopback: bool = False
    max_inflight_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)
    spool_bytes: int = Field(default=1024 * 1024, ge=0)
    """DATA beyond this goes to a file in `<data_dir>/spool/<pid>/` as it arrives, so only
    this much of a message counts against `max_inflight_bytes` (0: every message)."""
    include_raw: bool = False
    auth: AuthConfig = Field(default_factory=AuthConfig)
    tls: TlsConfig = Field(default_factory=TlsConfig)
    proxy_protocol: ProxyProtocolConfig = Field(default_factory=ProxyProtocolConfig)
    attachment_storage: AttachmentStorageConfig = Field(default_factory=AttachmentStorageConfig)
    parse: ParseConfig = Field(default_factory=ParseConfig)
    use_jobs: bool = True
    jobs: SmtpJobsConfig = Field(default_factory=SmtpJobsConfig)
    pool: PoolConfig = Field(default_factory=PoolConfig)
    faults: tuple[FaultRule, ...] = Field(default=(), max_length=MAX_FAULT_RULES)
    """Fault rules active from start (docs/faults.md); they also turn the faults API on."""
    faults_api: bool = False
    """Mount `/faults`, so tests can add and remove rules while the server runs."""
    hooks: tuple[HookStage, ...] = ()
    """Stages at which a worker of the SMTP pool decides the reply (the pool then starts
    whatever `use_jobs` says)."""
    hooks_timeout: Duration = Field(default=DEFAULT_HOOKS_TIMEOUT, gt=0)
    """Bounds a hook's wait for a free worker, and then for its answer: a worker that does
    not answer in time is killed and replaced."""
    hooks_on_error: Literal["reject", "accept"] = "reject"
    """What a failed hook (timeout, crash, an answer that is no verdict) means for the
    command: 451 4.3.0, or going on as if accepted."""

    @model_validator(mode="after")
    def _two_listeners(self) -> SmtpConfig:
        """Both listeners on one fixed port could never start (port 0 picks a free one each)."""
        implicit = self.tls.implicit_addr
        if implicit is not None and split_host_port(implicit) == split_host_port(self.addr):
            _, port = split_host_port(implicit)
            if port:
                raise ValueError("tls.implicit_addr: must differ from smtp.addr")
        return self

    @field_validator("hooks")
    @classmethod
    def _hooks_once_each(cls, value: tuple[HookStage, ...]) -> tuple[HookStage, ...]:
        if len(set(value)) != len(value):
            raise ValueError("list each stage once")
        return value

    @property
    def runs_pool(self) -> bool:
        """The SMTP worker pool runs for the legacy path and for hooks (on either path)."""
        return not self.use_jobs or bool(self.hook_stages)

    @property
    def hook_stages(self) -> tuple[HookName, ...]:
        """The stages a worker of the SMTP pool is asked at: `hooks`, and `auth` in AUTH's
        `hook` mode."""
        return (*self.hooks, *((AUTH_STAGE,) if self.auth.mode == "hook" else ()))


class _PipelineBase(_Model):
    """What every pipeline has, whatever its driver; each driver's pipeline model adds
    `driver` (the union's tag) and `config` beside its driver config below."""

    priority: int = Field(default=DEFAULT_PRIORITY, ge=0)
    prefetch: int = Field(default=DEFAULT_PREFETCH, ge=1)
    retries: int = Field(default=DEFAULT_RETRIES, ge=1)
    visibility_timeout: Duration = Field(default=DEFAULT_VISIBILITY_TIMEOUT, gt=0)


class MemoryDriverConfig(_Model):
    """`max_queued` bounds the jobs a memory pipeline holds (queued, delayed and reserved):
    beyond it a push fails (SMTP answers 451) instead of the process growing without end."""

    max_queued: int = Field(default=100_000, ge=1)


class MemoryPipelineConfig(_PipelineBase):
    driver: Literal["memory"]
    config: MemoryDriverConfig = Field(default_factory=MemoryDriverConfig)


class SqliteDriverConfig(_Model):
    path: Path | None = None


class SqlitePipelineConfig(_PipelineBase):
    driver: Literal["sqlite"]
    config: SqliteDriverConfig = Field(default_factory=SqliteDriverConfig)


class RedisDriverConfig(_Model):
    """Where a redis pipeline keeps its jobs: keys `<key_prefix>:{<stream>}:…` on `addr`.

    `stream` names the queue inside Redis (default: the pipeline's name), so pipelines on
    different nodes share one queue by naming the same stream. The braces make `stream` the
    Redis Cluster hash tag, which keeps a pipeline's keys together for its atomic scripts.
    `timeout` bounds connecting and every single command, so a dead server fails a call
    instead of hanging it.
    """

    addr: Annotated[str, _url_of("redis", "rediss", "unix")] = "redis://127.0.0.1:6379/0"
    stream: str | None = Field(default=None, min_length=1)
    key_prefix: str = Field(default="mailrunner", min_length=1)
    timeout: Duration = Field(default=5.0, gt=0)

    @field_validator("stream", "key_prefix")
    @classmethod
    def _no_braces(cls, value: str | None) -> str | None:
        if value is not None and ("{" in value or "}" in value):
            raise ValueError("must not contain { or } (they mark the Redis Cluster hash tag)")
        return value


class RedisPipelineConfig(_PipelineBase):
    driver: Literal["redis"]
    config: RedisDriverConfig = Field(default_factory=RedisDriverConfig)


class AmqpDriverConfig(_Model):
    """Where an amqp pipeline keeps its jobs on the RabbitMQ server at `addr`.

    `queue` is the durable queue (default `mailrunner.<pipeline>`); the driver also owns
    `<queue>.failed`, `<queue>.delays` and `<queue>.delay.<ms>`. Jobs are published to the
    durable direct `exchange` (default: the queue's name) with `routing_key` (default: the
    queue's name), so pipelines on different nodes share one queue by naming the same one.
    `timeout` bounds connecting and every single broker call, so a dead broker fails a call
    instead of hanging it.
    """

    addr: Annotated[str, _url_of("amqp", "amqps")] = "amqp://guest:guest@127.0.0.1:5672/"
    queue: str | None = Field(default=None, min_length=1, max_length=200)
    exchange: str | None = Field(default=None, min_length=1, max_length=255)
    routing_key: str | None = Field(default=None, max_length=255)
    timeout: Duration = Field(default=5.0, gt=0)


class AmqpPipelineConfig(_PipelineBase):
    driver: Literal["amqp"]
    config: AmqpDriverConfig = Field(default_factory=AmqpDriverConfig)


class NatsDriverConfig(_Model):
    """Where a nats pipeline keeps its jobs: JetStream stream `stream` on `addr`.

    `stream` (default: the pipeline's name) holds the jobs on `subject` (default
    `mailrunner.jobs.<pipeline>`); the driver also owns `<stream>_failed` on
    `<subject>.failed`. Pipelines on different nodes share one queue by naming the same
    stream and subject. Names are checked here because JetStream refuses them only at run time.
    """

    addr: Annotated[str, _url_of("nats", "tls")] = "nats://127.0.0.1:4222"
    stream: str | None = Field(default=None, min_length=1, max_length=200)
    subject: str | None = Field(default=None, min_length=1, max_length=200)
    max_clock_skew: Duration = Field(default=2.0, ge=0, le=3600)

    @field_validator("stream")
    @classmethod
    def _check_stream(cls, stream: str | None) -> str | None:
        if stream is not None and re.search(r"[.*>\s/\\]", stream):
            raise ValueError("a stream name cannot contain '.', '*', '>', '/', '\\' or spaces")
        return stream

    @field_validator("subject")
    @classmethod
    def _check_subject(cls, subject: str | None) -> str | None:
        if subject is not None and not re.fullmatch(r"[^.*>\s]+(\.[^.*>\s]+)*", subject):
            raise ValueError("a subject is dot-separated tokens without wildcards or spaces")
        return subject


class NatsPipelineConfig(_PipelineBase):
    driver: Literal["nats"]
    config: NatsDriverConfig = Field(default_factory=NatsDriverConfig)


PipelineConfig = Annotated[
    MemoryPipelineConfig
    | SqlitePipelineConfig
    | RedisPipelineConfig
    | AmqpPipelineConfig
    | NatsPipelineConfig,
    Field(discriminator="driver"),
]
DRIVER_NAMES: tuple[str, ...] = tuple(
    name
    for model in get_args(get_args(PipelineConfig)[0])
    for name in get_args(model.model_fields["driver"].annotation)
)
"""Every driver a pipeline may name, in the union's order: a driver model added to
`PipelineConfig` is listed wherever drivers are (API schema, CLI choices, config errors)."""


class JobsConfig(_Model):
    pipelines: dict[str, PipelineConfig] = {}
    consume: list[str] = []
    shutdown_timeout: Duration = 30.0
    pool: PoolConfig = Field(default_factory=PoolConfig)

    @field_validator("consume")
    @classmethod
    def _consumed_pipelines_exist(cls, consume: list[str], info: ValidationInfo) -> list[str]:
        declared = info.data.get("pipelines", {})
        unknown = [name for name in consume if name not in declared]
        if unknown:
            raise ValueError(
                f"names pipelines not declared in jobs.pipelines: {', '.join(unknown)}"
            )
        return consume


class InboxConfig(_Model):
    """The inbox: a pipeline every accepted email is pushed to last, consumed in-process
    into one SQLite file (`path`, default `<data_dir>/inbox.db`) that the API and UI read.

    The pipeline is declared implicitly as sqlite in `<data_dir>/jobs.db` unless
    `jobs.pipelines` declares it. Retention: the oldest go beyond `max_messages`, and any
    older than `max_age`; bodies beyond `max_preview_bytes` are cut in the preview (the raw
    message stays whole).
    """

    enabled: bool = True
    pipeline: str = Field(default=DEFAULT_INBOX_PIPELINE, min_length=1)
    path: Path | None = None
    max_messages: int = Field(default=DEFAULT_INBOX_MAX_MESSAGES, ge=1)
    max_age: Duration | None = Field(default=None, gt=0)
    max_preview_bytes: int = Field(default=DEFAULT_INBOX_MAX_PREVIEW_BYTES, ge=1024)


class RpcConfig(_Model):
    """The management API. Without a token it trusts only requests addressed to itself
    (`Host` is the listen address, a loopback name or one of `allowed_hosts`) and not sent
    by another web page (`Origin`), so a page in the user's browser cannot drive it."""

    listen: HostPort = "127.0.0.1:6001"
    token: str | None = Field(default=None, min_length=1)
    allowed_hosts: list[str] = []
    allow_any_declare: bool = False


class LogsConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["console", "json"] = "console"


class Config(_Model):
    """The effective configuration of one mailrunner process."""

    data_dir: Path = Path("./var")
    server: ServerConfig = Field(default_factory=ServerConfig)
    smtp: SmtpConfig = Field(default_factory=SmtpConfig)
    jobs: JobsConfig = Field(default_factory=JobsConfig)
    rpc: RpcConfig = Field(default_factory=RpcConfig)
    logs: LogsConfig = Field(default_factory=LogsConfig)
    inbox: InboxConfig = Field(default_factory=InboxConfig)

    @model_validator(mode="after")
    def _smtp_pipelines_declared(self) -> Config:
        smtp = self.smtp
        if not smtp.use_jobs or smtp.jobs.rpc is not None:
            return self
        key = "smtp.jobs.pipeline" if smtp.jobs.pipeline is not None else "smtp.jobs.pipelines"
        unknown = [name for name in smtp.jobs.targets if name not in self.pipelines]
        if unknown:
            raise ValueError(
                f"{key}: {', '.join(map(repr, unknown))} not declared in jobs.pipelines"
                " (declare it, set smtp.jobs.rpc, or set smtp.use_jobs: false)"
            )
        if not smtp.jobs.targets and not self.inbox.enabled:
            raise ValueError(
                "smtp.jobs.pipelines: names no pipeline and the inbox is off, so accepted"
                " email would go nowhere (name a pipeline or set smtp.use_jobs: false)"
            )
        return self

    @model_validator(mode="after")
    def _inbox_pipeline_is_its_own(self) -> Config:
        """The inbox's pipeline gets every email last and is consumed by the inbox alone."""
        name = self.inbox.pipeline
        if not self.inbox.enabled:
            return self
        if name in self.smtp.jobs.targets:
            raise ValueError(
                f"smtp.jobs.pipelines: {name!r} is the inbox's pipeline (inbox.pipeline), which"
                " every email reaches last anyway"
            )
        if name in self.jobs.consume:
            raise ValueError(f"jobs.consume: {name!r} is consumed by the inbox (inbox.pipeline)")
        return self

    @model_validator(mode="after")
    def _pool_commands(self) -> Config:
        """A pool that will run needs a command; found here so `config check` says so too."""
        needed = []
        if self.smtp.runs_pool and not (self.smtp.pool.command or self.server.command):
            needed.append(
                "smtp.pool.command: required when smtp.use_jobs is false or smtp.hooks is set"
            )
        if self.jobs.consume and not (self.jobs.pool.command or self.server.command):
            needed.append("jobs.pool.command: required when jobs.consume is not empty")
        if needed:
            raise ValueError("; ".join(f"{problem} (or set server.command)" for problem in needed))
        return self

    @model_validator(mode="after")
    def _token_beyond_loopback(self) -> Config:
        host, _ = split_host_port(self.rpc.listen)
        if host not in LOOPBACK_HOSTS and not self.rpc.token:
            raise ValueError(
                f"rpc.token: required when rpc.listen ({self.rpc.listen}) is not a loopback"
                " address; the API can push jobs and stop workers"
            )
        return self

    @property
    def runs_inbox(self) -> bool:
        """This process keeps the inbox: email is pushed here (not to `smtp.jobs.rpc`'s node,
        which runs its own) and the inbox is on."""
        return self.inbox.enabled and self.smtp.use_jobs and self.smtp.jobs.rpc is None

    @property
    def inbox_path(self) -> Path:
        return self.inbox.path or self.data_dir / "inbox.db"

    @property
    def pipelines(self) -> dict[str, PipelineConfig]:
        """Every pipeline this process opens: `jobs.pipelines`, and the inbox's as sqlite in
        `<data_dir>/jobs.db` when it runs the inbox and the file does not declare it."""
        declared = self.jobs.pipelines
        if not self.runs_inbox or self.inbox.pipeline in declared:
            return declared
        return {**declared, self.inbox.pipeline: SqlitePipelineConfig(driver="sqlite")}

    @property
    def attachments_dir(self) -> Path:
        return self.smtp.attachment_storage.temp_dir or self.data_dir / "attachments"


def _expand_env(value: Any, path: str, problems: list[str]) -> Any:
    """Expand `${VAR}` and `${VAR:-default}` in string values, after YAML has parsed them."""
    if isinstance(value, dict):
        return {
            k: _expand_env(v, f"{path}.{k}" if path else str(k), problems) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_expand_env(v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        problems.append(f"{path}: environment variable {name} is not set")
        return ""

    return _ENV_REF.sub(substitute, value)


_MESSAGES = {
    "extra_forbidden": "unknown key",
    "union_tag_invalid": f"driver must be one of {', '.join(DRIVER_NAMES)}",
    "union_tag_not_found": f"driver is required, one of {', '.join(DRIVER_NAMES)}",
    "missing": "required",
}
"""pydantic's error types worded for a YAML file's author."""
_BOUNDS = {
    "greater_than_equal": ("ge", ">="),
    "greater_than": ("gt", ">"),
    "less_than_equal": ("le", "<="),
}
"""Bound errors: the context key of the bound, and its sign."""


def _format_error(error: Mapping[str, Any]) -> str:
    loc = list(error["loc"])
    if loc[:2] == ["jobs", "pipelines"] and len(loc) > 3 and loc[3] in DRIVER_NAMES:
        del loc[3]
    path = ".".join(str(part) for part in loc)
    kind = error["type"]
    if kind in _MESSAGES:
        message = _MESSAGES[kind]
    elif kind in _BOUNDS:
        limit, sign = _BOUNDS[kind]
        message = f"must be {sign} {error['ctx'][limit]}"
    else:
        message = str(error["msg"]).removeprefix("Value error, ")
    return f"{path}: {message}" if path else message


def config_from_mapping(data: object, source: str = "") -> Config:
    """Validate already-loaded YAML; raises ConfigError naming every bad key path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(["(top level): must be a mapping of sections"], source)
    problems: list[str] = []
    expanded = _expand_env(data, "", problems)
    if problems:
        raise ConfigError(problems, source)
    try:
        return Config.model_validate(expanded)
    except ValidationError as error:
        raise ConfigError([_format_error(e) for e in error.errors()], source) from None


def load_text(text: str, source: str) -> Config:
    # here, not at the top: only a command that reads a configuration needs a YAML parser
    import yaml  # noqa: PLC0415

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError([f"(yaml): {error}"], source) from None
    return config_from_mapping(data, source)


def embedded_default_text() -> str:
    return resources.files("mailrunner").joinpath("default.yaml").read_text(encoding="utf-8")


def locate(explicit: Path | None) -> Path | None:
    """`-c FILE`, else $MAILRUNNER_CONFIG, else ./mailrunner.yaml, else None (embedded)."""
    if explicit is not None:
        return explicit
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    return LOCAL_CONFIG if LOCAL_CONFIG.is_file() else None


def load(explicit: Path | None = None) -> tuple[Config, str]:
    """Load the configuration the way `serve` does; returns it with where it came from."""
    path = locate(explicit)
    if path is None:
        return load_text(embedded_default_text(), EMBEDDED_DEFAULT), EMBEDDED_DEFAULT
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError([f"(file): cannot read {path}: {error.strerror}"], str(path)) from None
    return load_text(text, str(path)), str(path)


_SECRET_KEYS = frozenset({"token", "password"})
_SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|PRIVATE|API_?KEY", re.I)
"""Names of `server.env` variables whose values `config check` hides."""


def mask_url(url: str) -> str:
    """A URL fit for logs, errors and `config check`: any userinfo hidden.

    A user alone may be a token (`nats://TOKEN@host`), so it goes too; with a password the
    user name stays readable and only the password is replaced.
    """
    parts = urlsplit(url)
    if "@" not in parts.netloc and "password" not in parts.query:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.password is not None and parts.username else "***@"
    return urlunsplit(parts._replace(netloc=user + host, query=""))


_URL_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]{0,20}://)([^\s/@?#:]+:)?[^\s/@?#]+@")


def mask_urls_in(text: str) -> str:
    """Hide the userinfo of every URL inside free text (log lines, error messages), as
    `mask_url` does.

    The pattern has no overlapping quantifiers, so it is linear on any input.
    """
    if "://" not in text:
        return text
    return _URL_USERINFO.sub(r"\1\2***@", text)


def _masked(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _masked(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    if (key in _SECRET_KEYS or _SECRET_NAME.search(key)) and value:
        return "***"
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    return value


def masked_dump(config: Config) -> dict[str, Any]:
    """The effective configuration as plain data with tokens and URL passwords hidden."""
    dumped: dict[str, Any] = _masked(config.model_dump(mode="json"))
    return dumped
