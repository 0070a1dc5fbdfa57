"""The fault rules a running server applies: which one a command meets, and how many times.

Rules are checked in the order they were added (configured ones first); the first that fits
a command is the one that acts and uses one of its `times`. Everything here runs on the
event loop, so taking a count and removing a used-up rule need no lock.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

import structlog

from mailrunner.errors import InvalidJob
from mailrunner.faults import MAX_FAULT_RULES, FaultRule, FaultStage
from mailrunner.metrics import Metrics

log = structlog.get_logger("mailrunner.smtp")


@dataclass(slots=True)
class ActiveFault:
    """A rule in force: `remaining` matches left (None: until removed)."""

    id: str
    rule: FaultRule
    remaining: int | None


class FaultBook:
    """The server's fault rules, in the order they act."""

    def __init__(self, rules: Sequence[FaultRule] = ()) -> None:
        self._faults: dict[str, ActiveFault] = {}
        self._ids = itertools.count(1)
        for rule in rules:
            self.add(rule)

    def __len__(self) -> int:
        return len(self._faults)

    def add(self, rule: FaultRule) -> str:
        """Put `rule` after the others; its id. InvalidJob (422) beyond MAX_FAULT_RULES."""
        if len(self._faults) >= MAX_FAULT_RULES:
            raise InvalidJob(f"at most {MAX_FAULT_RULES} fault rules: remove some first")
        fault_id = f"f{next(self._ids)}"
        self._faults[fault_id] = ActiveFault(fault_id, rule, rule.times)
        return fault_id

    def active(self) -> list[ActiveFault]:
        """The rules in force, in the order they act."""
        return list(self._faults.values())

    def remove(self, fault_id: str) -> bool:
        """Remove one rule; False if there is none of that id."""
        return self._faults.pop(fault_id, None) is not None

    def clear(self) -> int:
        """Remove every rule; how many there were."""
        count = len(self._faults)
        self._faults.clear()
        return count

    def take(self, stage: FaultStage, values: Iterable[str]) -> FaultRule | None:
        """The first rule of `stage` whose `match` fits one of `values` (lowercased), one of
        its matches used up; None when no rule fits."""
        if not self._faults:
            return None
        lowered = [value.lower() for value in values]
        for fault in self._faults.values():
            rule = fault.rule
            if rule.stage == stage and any(fnmatchcase(value, rule.match) for value in lowered):
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        del self._faults[fault.id]
                return rule
        return None


def record_injected(rule: FaultRule, metrics: Metrics, connection_id: str) -> None:
    """Count and log a rule that acted. Only the rule's own values are logged: the address or
    message it met is the client's mail, which the log never holds."""
    metrics.smtp_faults.labels(rule.stage, rule.action).inc()
    log.info(
        "fault injected",
        uuid=connection_id,
        stage=rule.stage,
        action=rule.action,
        match=rule.match,
        reply=rule.reply.line if rule.reply is not None else None,
        delay=rule.delay,
        times=rule.times,
    )
