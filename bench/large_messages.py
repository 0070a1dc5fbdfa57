"""Issue 15's targets: mailrunner on large messages against a bare aiosmtpd 1.4.6 server.

One load client for every server, Postfix's `smtp-source`, so no server is favoured by a
client of our own; three servers, each in its own process on 127.0.0.1 for the whole run:

- bare aiosmtpd 1.4.6 answering 250 (baseline_servers.py "aiosmtpd"): every ratio's divisor;
- the ceiling: mailrunner's SMTP listener and chunked DATA reader answering 250 without
  parsing (baseline_servers.py "smtp-only"): what mailrunner could reach if nothing after
  SMTP cost anything;
- mailrunner `serve` into a durable sqlite pipeline (WAL, synchronous=FULL), the inbox off,
  no consumer: the 250 comes after the commit.

Each shape is sent ROUNDS times to each server in turns (A B C A B C ...), so a noisy shared
machine spreads its noise over every server alike; the median and the spread (min-max) are
printed, and the ratio of each round against the bare server's run in the same round. The
peak resident size of each server (VmHWM) is reset before each shape through
/proc/PID/clear_refs. smtp-source cannot time a reply, so the latency target has a paced
asyncio client of its own. These are targets for later work: a miss is marked, never fails.
"""

from __future__ import annotations

import argparse
import asyncio
import email.policy
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import yaml
from pydantic import ValidationError
from smtp_jobs import free_port, open_session, send_timed, wait_for_port

from mailrunner.config import AttachmentStorageConfig, SmtpConfig

SMTP_SOURCE = "/usr/sbin/smtp-source"
ROUNDS = 3
HERE = Path(__file__).parent

LATENCY_SECONDS = 3.0
LATENCY_WARMUP = 0.5
LATENCY_CONNECTIONS = 50
"""The paced client's connections: far more than half the peak rate needs even on a loaded
machine, so a message is sent when it is due instead of waiting for a free connection."""
LATENCY_TARGET_MS = 20.0
FSYNC_PROBES = 300
FSYNC_RECORD = b"x" * 200 + b"\n"

LARGE_MESSAGE_BYTES = 10_000_000
"""The 10 MB shape's message size on the wire, its attachment filling it: under mailrunner's
default `smtp.max_message_size` (10 MiB), so every server runs with its default limits."""
PDF_BYTES = 70 * 1024
BASE64_LINE_OCTETS = 57
BASE64_LINE_CHARACTERS = 76
"""email's base64 line: 57 octets encoded in 76 characters, then a line break."""
RUN_TIMEOUT = 300.0
"""Seconds one smtp-source run may take before the benchmark gives up on that server."""


def auto_storage_exists() -> bool:
    """Whether `smtp.attachment_storage.mode: auto` (issue 15's claim-check) is built yet."""
    try:
        AttachmentStorageConfig.model_validate({"mode": "auto"})
    except ValidationError:
        return False
    return True


@dataclass(frozen=True)
class Shape:
    """One row of the issue's table: what smtp-source sends and the target mailrunner owes."""

    label: str
    sessions: int
    messages: int
    payload: tuple[str, ...]
    """smtp-source's `-l LENGTH` or `-F FILE`."""
    target_ratio: float
    target_peak_mb: float | None = None

    def command(self, port: int) -> list[str]:
        counts = ["-s", str(self.sessions), "-m", str(self.messages)]
        return [
            SMTP_SOURCE,
            "-d",
            *counts,
            "-M",
            "bench.example",
            *self.payload,
            f"127.0.0.1:{port}",
        ]


@dataclass
class Server:
    """One server process, alive for the whole benchmark."""

    label: str
    command: list[str]
    port: int
    process: asyncio.subprocess.Process | None = None
    log: Path | None = None

    async def start(self, directory: Path) -> None:
        self.log = directory / f"server-{self.port}.log"
        with self.log.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self.command, cwd=directory, stdout=log, stderr=log
            )
        try:
            await wait_for_port(self.port, self.process)
        except RuntimeError as error:
            raise RuntimeError(f"{self.label}: {error}\n{self.log.read_text()}") from None

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def reset_peak(self) -> bool:
        """Start VmHWM over from the resident size now; False where Linux refuses it."""
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    def peak_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmHWM in /proc/{self.pid}/status")


@dataclass
class Measured:
    """One shape's figures: messages/s per server and round, and each server's peak MB."""

    shape: Shape
    rates: dict[str, list[float]] = field(default_factory=dict)
    peaks: dict[str, float] = field(default_factory=dict)

    def ratios(self, server: str, divisor: str) -> list[float]:
        return [a / b for a, b in zip(self.rates[server], self.rates[divisor], strict=True)]


def spread(values: list[float], unit: str = "", digits: int = 2) -> str:
    """`median (min-max)`, the way every figure of this benchmark is printed."""
    return (
        f"{statistics.median(values):.{digits}f}{unit}"
        f" ({min(values):.{digits}f}-{max(values):.{digits}f})"
    )


def pdf_like(size: int, seed: int) -> bytes:
    """A PDF's first line and incompressible bytes: base64 costs what a real attachment does."""
    header = b"%PDF-1.4\n"
    return header + random.Random(seed).randbytes(size - len(header))


def mime_message(attachment: bytes) -> bytes:
    """text + HTML alternatives and a PDF attachment, base64, LF line ends (smtp-source -F
    sends each line with CRLF)."""
    message = EmailMessage()
    message["From"] = "bench <bench@example.com>"
    message["To"] = "sink@example.com"
    message["Subject"] = "quarterly report"
    message["Message-ID"] = "<large-bench@example.com>"
    paragraph = "The figures for this quarter are in the attached report. " * 8 + "\n\n"
    message.set_content(paragraph * 4)
    html = "<html><body>" + f"<p>{paragraph}</p>" * 4 + "</body></html>\n"
    message.add_alternative(html, subtype="html")
    message.add_attachment(attachment, maintype="application", subtype="pdf", filename="report.pdf")
    return message.as_bytes(policy=email.policy.default)


def wire_size(message: bytes) -> int:
    return len(message) + message.count(b"\n")


def write_messages(directory: Path) -> tuple[Path, Path]:
    """The 100 KB MIME file (70 KB PDF) and the 10 MB one, its attachment sized to fill it."""
    small = directory / "mime-100k.eml"
    small.write_bytes(mime_message(pdf_like(PDF_BYTES, 1)))
    overhead = wire_size(mime_message(b""))
    lines = (LARGE_MESSAGE_BYTES - overhead) // (BASE64_LINE_CHARACTERS + len(b"\r\n"))
    large = directory / "mime-10m.eml"
    large.write_bytes(mime_message(pdf_like(lines * BASE64_LINE_OCTETS, 2)))
    if wire_size(large.read_bytes()) > SmtpConfig().max_message_size:
        raise RuntimeError("the 10 MB message is over mailrunner's default max_message_size")
    return small, large


def shapes(mime_100k: Path, mime_10m: Path) -> list[Shape]:
    """The issue's rows; message counts keep a full run near four minutes on two cores (1 KB
    sends 10,000: a run of 4,000 took under a second, and its ratio moved 0.05x between
    runs of the same code)."""
    return [
        Shape("1 KB, 100 sessions", 100, 10000, ("-l", "1024"), 1.1),
        Shape("100 KB plain, 20 sessions", 20, 600, ("-l", str(100 * 1024)), 2.5),
        Shape(
            "100 KB MIME (text + HTML + 70 KB PDF), 20 sessions",
            20,
            400,
            ("-F", str(mime_100k)),
            1.3,
        ),
        Shape("10 concurrent 10 MB MIME messages", 10, 10, ("-F", str(mime_10m)), 1.0, 150.0),
    ]


def mailrunner_config(directory: Path, port: int) -> Path:
    """Jobs into the sqlite pipeline `bench`, the inbox off, `auto` storage once it exists."""
    smtp: dict[str, object] = {"addr": f"127.0.0.1:{port}", "jobs": {"pipeline": "bench"}}
    if auto_storage_exists():
        smtp["attachment_storage"] = {"mode": "auto"}
    config = directory / "mailrunner.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(directory / "var"),
                "smtp": smtp,
                "jobs": {"pipelines": {"bench": {"driver": "sqlite"}}},
                "inbox": {"enabled": False},
                "rpc": {"listen": "127.0.0.1:0"},
                "logs": {"level": "warning"},
            }
        )
    )
    return config


def servers(directory: Path) -> list[Server]:
    baseline = [sys.executable, str(HERE / "baseline_servers.py")]
    bare, ceiling, ours = free_port(), free_port(), free_port()
    config = mailrunner_config(directory, ours)
    return [
        Server("bare aiosmtpd 1.4.6", [*baseline, "aiosmtpd", str(bare)], bare),
        Server("ceiling (smtp-only)", [*baseline, "smtp-only", str(ceiling)], ceiling),
        Server(
            "mailrunner -> sqlite",
            [sys.executable, "-m", "mailrunner", "serve", "-c", str(config)],
            ours,
        ),
    ]


async def smtp_source_rate(shape: Shape, server: Server) -> float:
    """Messages/s of one smtp-source run, from its start to its exit."""
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        *shape.command(server.port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RuntimeError(
            f"smtp-source against {server.label}: no end in {RUN_TIMEOUT}s"
        ) from None
    elapsed = time.monotonic() - started
    if process.returncode != 0:
        raise RuntimeError(f"smtp-source against {server.label}: {output.decode().strip()}")
    return shape.messages / elapsed


async def measure_shape(shape: Shape, running: list[Server]) -> Measured:
    measured = Measured(shape, {server.label: [] for server in running})
    if not all(server.reset_peak() for server in running):
        print("(peak RSS not reset: /proc/PID/clear_refs refused; peaks are since start)")
    for _ in range(ROUNDS):
        for server in running:
            measured.rates[server.label].append(await smtp_source_rate(shape, server))
    measured.peaks = {server.label: server.peak_mb() for server in running}
    return measured


def print_shape(measured: Measured, bare: str) -> None:
    shape = measured.shape
    print(f"\n{shape.label}: {' '.join(shape.command(0)[1:-1])}")
    print(
        f"  {'server':<24} {'messages/s median (min-max)':>30} {'ratio to bare':>20} {'peak MB':>8}"
    )
    for label, rates in measured.rates.items():
        ratio = spread(measured.ratios(label, bare), "x")
        print(
            f"  {label:<24} {spread(rates, digits=1):>30} {ratio:>20} {measured.peaks[label]:>8.0f}"
        )


async def paced_client(
    port: int, tickets: Iterator[float], measure_from: float, latencies: list[float]
) -> None:
    """Sends a 1 KB message at each due time it takes from the shared schedule; times the
    final dot to the 250."""
    reader, writer = await open_session(port)
    for due in tickets:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        latency = await send_timed(reader, writer)
        if due >= measure_from:
            latencies.append(latency)
    writer.write(b"QUIT\r\n")
    writer.close()


async def paced_p99(port: int, rate: float) -> tuple[float, float]:
    """p99 of end of DATA -> 250 in ms at `rate` messages/s, and the rate achieved."""
    start = time.monotonic() + 0.2
    count = int(rate * (LATENCY_WARMUP + LATENCY_SECONDS))
    tickets = (start + index / rate for index in range(count))
    latencies: list[float] = []
    measure_from = start + LATENCY_WARMUP
    await asyncio.gather(
        *(paced_client(port, tickets, measure_from, latencies) for _ in range(LATENCY_CONNECTIONS))
    )
    achieved = len(latencies) / (time.monotonic() - measure_from)
    return statistics.quantiles(latencies, n=100)[98] * 1000, achieved


def fsync_ms(directory: Path) -> tuple[float, float]:
    """p50 and p99 of writing a small record and fsyncing it, in the data_dir's filesystem:
    the floor under any durable 250."""
    durations = []
    descriptor = os.open(directory / "fsync-probe", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(FSYNC_PROBES):
            started = time.perf_counter()
            os.write(descriptor, FSYNC_RECORD)
            os.fsync(descriptor)
            durations.append((time.perf_counter() - started) * 1000)
    finally:
        os.close(descriptor)
    cuts = statistics.quantiles(durations, n=100)
    return cuts[49], cuts[98]


async def measure_latency(running: list[Server], rate: float) -> dict[str, list[float]]:
    """Each server's p99 per round at the same offered rate, in turns like the shapes."""
    p99s: dict[str, list[float]] = {server.label: [] for server in running}
    for _ in range(ROUNDS):
        for server in running:
            p99, achieved = await paced_p99(server.port, rate)
            p99s[server.label].append(p99)
            if achieved < rate * 0.9:
                print(f"  ({server.label} kept {achieved:.0f}/s of the {rate:.0f}/s offered)")
    return p99s


def verdict(met: bool) -> str:
    return "met" if met else "<< TARGET NOT MET"


def row(*cells: str) -> str:
    """One line of the issue's table: shape | today | target | ceiling | peak MB | verdict."""
    widths = (52, 24, 20, 12, 8, 0)
    return " | ".join(f"{cell:<{width}}" for cell, width in zip(cells, widths, strict=True))


def print_targets(results: list[Measured], running: list[Server]) -> None:
    """Each ratio is taken round by round against the bare server's run in the same round."""
    bare, ceiling, ours = (server.label for server in running)
    header = ("shape", "today (mailrunner/bare)", "target", "ceiling/bare", "peak MB", "verdict")
    print("\n" + row(*header))
    for measured in results:
        shape = measured.shape
        ratios = measured.ratios(ours, bare)
        peak = measured.peaks[ours]
        met = statistics.median(ratios) >= shape.target_ratio
        target = f">= {shape.target_ratio}x"
        if shape.target_peak_mb is not None:
            met = met and peak <= shape.target_peak_mb
            target += f", <= {shape.target_peak_mb:.0f} MB"
        ceiling_ratio = f"{statistics.median(measured.ratios(ceiling, bare)):.2f}x"
        cells = (shape.label, spread(ratios, "x"), target, ceiling_ratio, f"{peak:.0f}")
        print(row(*cells, verdict(met)))


def print_latency_target(
    p99s: dict[str, list[float]], running: list[Server], fsync_p99: float
) -> None:
    """The last row: the ceiling column holds the ceiling server's p99, the disk's beside it."""
    ceiling, ours = running[1].label, running[2].label
    met = statistics.median(p99s[ours]) <= LATENCY_TARGET_MS
    cells = (
        "p99 end of DATA -> 250 at half the peak rate, 1 KB",
        spread(p99s[ours], " ms", digits=1),
        f"<= {LATENCY_TARGET_MS:.0f} ms",
        f"{statistics.median(p99s[ceiling]):.1f} ms",
        "",
    )
    print(row(*cells, f"{verdict(met)} (fsync p99 {fsync_p99:.2f} ms)"))


def print_setup(mime_100k: Path, mime_10m: Path) -> None:
    storage = "auto" if auto_storage_exists() else "memory (the default: `auto` is not built yet)"
    print(
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; {ROUNDS} interleaved"
        " rounds; mailrunner: sqlite pipeline (WAL, synchronous=FULL), 250 after the commit,"
        f" inbox off, no consumer, attachment storage {storage}"
    )
    for path in (mime_100k, mime_10m):
        print(f"{path.name}: {wire_size(path.read_bytes())} octets on the wire")


@dataclass(frozen=True)
class Selection:
    """Which rows to run (`--shapes`, `--no-latency`): a partial run for before/after work
    on one shape; `make bench` runs every row."""

    shapes: tuple[int, ...] | None = None
    latency: bool = True


async def measure_all(
    running: list[Server], mime_100k: Path, mime_10m: Path, selection: Selection
) -> tuple[list[Measured], dict[str, list[float]]]:
    """The shapes, then the paced latency at half the rate mailrunner reached on 1 KB."""
    bare, ours = running[0].label, running[2].label
    results = []
    every = shapes(mime_100k, mime_10m)
    chosen = range(len(every)) if selection.shapes is None else selection.shapes
    for index in chosen:
        results.append(await measure_shape(every[index], running))
        print_shape(results[-1], bare)
    if not selection.latency or results[0].shape is not every[0]:
        return results, {}
    rate = statistics.median(results[0].rates[ours]) / 2
    print(
        f"\np99 end of DATA -> 250, 1 KB, paced at {rate:.0f}/s (half mailrunner's 1 KB"
        f" median) over {LATENCY_CONNECTIONS} connections, {LATENCY_SECONDS:.0f}s per run after"
        f" {LATENCY_WARMUP}s warm-up, MAIL RCPT DATA pipelined:"
    )
    p99s = await measure_latency(running, rate)
    for label, values in p99s.items():
        print(f"  {label:<24} {spread(values, ' ms', digits=1)}")
    return results, p99s


async def run(directory: Path, selection: Selection) -> int:
    started = time.monotonic()
    mime_100k, mime_10m = write_messages(directory)
    print_setup(mime_100k, mime_10m)
    fsync_p50, fsync_p99 = fsync_ms(directory)
    print(
        f"fsync of a {len(FSYNC_RECORD)}-octet record in the data_dir's filesystem,"
        f" {FSYNC_PROBES} times: p50 {fsync_p50:.2f} ms, p99 {fsync_p99:.2f} ms"
    )
    running = servers(directory)
    try:
        for server in running:
            await server.start(directory)
        results, p99s = await measure_all(running, mime_100k, mime_10m, selection)
    finally:
        for server in running:
            await server.stop()
    print_targets(results, running)
    if p99s:
        print_latency_target(p99s, running, fsync_p99)
    elapsed = time.monotonic() - started
    print(f"whole run {elapsed:.0f}s; load average at the end {os.getloadavg()[0]:.1f}")
    return 0


def arguments(argv: list[str]) -> Selection:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument(
        "--shapes",
        help="comma-separated row numbers to run, 1-4 (1 KB, 100 KB plain, 100 KB MIME, 10 MB);"
        " the latency row runs only with row 1",
    )
    parser.add_argument("--no-latency", action="store_true", help="skip the paced p99 row")
    parsed = parser.parse_args(argv)
    rows = None
    if parsed.shapes:
        rows = tuple(int(number) - 1 for number in parsed.shapes.split(","))
        if any(row not in range(4) for row in rows):
            parser.error("--shapes takes row numbers 1 to 4")
    return Selection(shapes=rows, latency=not parsed.no_latency)


def main(argv: list[str] | None = None) -> int:
    selection = arguments(sys.argv[1:] if argv is None else argv)
    if shutil.which(SMTP_SOURCE) is None:
        print(f"skipping: {SMTP_SOURCE} is missing (Postfix; .ci/run installs it)")
        return 0
    with tempfile.TemporaryDirectory(prefix="mailrunner-large-") as temp:
        return asyncio.run(run(Path(temp), selection))


if __name__ == "__main__":
    sys.exit(main())
