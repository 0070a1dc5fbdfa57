"""Fault rules set the way a test suite sets them (over the HTTP API), and the SMTP steps a
rule meets, so each fault test states only its rule and what the client sees."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from mailrunner.api import routes
from mailrunner.api.client import call_once
from mailrunner.faults import FaultRule, FaultStage
from support.raw_smtp import RawSmtp
from support.server import RunningServer
from support.waiting import WAIT_SECONDS

COMMAND_STAGES: tuple[FaultStage, ...] = ("helo", "mail", "rcpt", "data")
"""The stages a command meets, in a message's order (`connect` comes before any)."""
STAGES: tuple[FaultStage, ...] = ("connect", *COMMAND_STAGES)
MESSAGE = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: fault test\r\n\r\nbody\r\n"
DELAY = 0.3
"""A delay rule's seconds: long enough to measure, short enough for many tests."""
REFUSAL = "550 5.7.1 Refused by the test"
REFUSED = (550, b"5.7.1 Refused by the test")
"""REFUSAL as smtplib reads it."""
RAW_STEPS: dict[FaultStage, tuple[bytes, ...]] = {
    "helo": (b"EHLO client.example\r\n",),
    "mail": (b"MAIL FROM:<a@example.com>\r\n",),
    "rcpt": (b"RCPT TO:<b@example.com>\r\n",),
    "data": (b"DATA\r\n", MESSAGE + b".\r\n"),
}
"""What a raw client sends at each stage; the last command of a stage is the one a rule meets
(DATA's rule meets the final dot)."""


def fault_server(start: Callable[..., RunningServer], **smtp: Any) -> RunningServer:
    """A server with the faults API on (and `smtp` settings)."""
    return start(smtp={"faults_api": True, **smtp})


def add_fault(server: RunningServer, **rule: Any) -> str:
    """POST /faults: the new rule's id."""
    added = call_once(
        server.api_url,
        None,
        routes.ADD_FAULT,
        FaultRule.model_validate(rule),
        timeout=WAIT_SECONDS,
    )
    return added.id


def remaining(server: RunningServer) -> dict[str, int | None]:
    """GET /faults: each rule in force by id, with its matches left."""
    listed = call_once(server.api_url, None, routes.LIST_FAULTS, timeout=WAIT_SECONDS)
    return {fault.id: fault.remaining for fault in listed.faults}


def delete_fault(server: RunningServer, fault_id: str) -> None:
    call_once(
        server.api_url,
        None,
        routes.DELETE_FAULT,
        params={"id": fault_id},
        timeout=WAIT_SECONDS,
    )


def injected(server: RunningServer) -> dict[tuple[str, str], float]:
    """mailrunner_smtp_faults_injected_total from /metrics, by (stage, action)."""
    text = call_once(server.api_url, None, routes.METRICS, timeout=WAIT_SECONDS)
    return {
        (sample.labels["stage"], sample.labels["action"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "mailrunner_smtp_faults_injected_total"
    }


def smtp_client(server: RunningServer) -> smtplib.SMTP:
    return smtplib.SMTP(server.host, server.port, timeout=WAIT_SECONDS)


def converse(client: smtplib.SMTP, stage: FaultStage) -> tuple[tuple[int, bytes], float]:
    """Send one message's commands up to `stage`'s (each earlier one must be accepted): the
    reply to that command and the seconds it took."""
    commands: dict[FaultStage, Callable[[], tuple[int, bytes]]] = {
        "helo": lambda: client.ehlo("client.example"),
        "mail": lambda: client.mail("a@example.com"),
        "rcpt": lambda: client.rcpt("b@example.com"),
        "data": lambda: client.data(MESSAGE),
    }
    for name in COMMAND_STAGES:
        started = time.monotonic()
        reply = commands[name]()
        if name == stage:
            return reply, time.monotonic() - started
        assert reply[0] == 250, f"{name} refused before the {stage} stage: {reply}"
    raise AssertionError(f"no command meets the {stage} stage")


def raw_up_to(raw: RawSmtp, stage: FaultStage) -> bytes:
    """converse() for a raw client: the bytes answering `stage`'s command (b"" on a close)."""
    for name in COMMAND_STAGES:
        *before, last = RAW_STEPS[name]
        for command in before:
            raw.send(command)
            assert raw.code() == b"354", f"{command!r} was not answered 354"
        raw.send(last)
        reply = raw.reply()
        if name == stage:
            return reply
        assert reply[:3] == b"250", f"{name} refused before the {stage} stage: {reply!r}"
    raise AssertionError(f"no command meets the {stage} stage")
