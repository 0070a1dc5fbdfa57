"""MIME parsing corpus: every ``corpus/NN_name.eml`` is parsed and checked against ``NN_name.json``.

The ``.eml`` files are stored with LF line endings and converted to CRLF before parsing, as an
SMTP client would send them. The ``.json`` files hold hand-written expected facts; only the keys
present are checked:

- ``message_id``, ``subject``, ``body``, ``html_body``: exact values.
- ``from``, ``to``, ``cc``, ``reply_to``: exact lists of ``{"email", "name"}``.
- ``headers``: a subset; each listed header name must map to exactly that list of values.
- ``body_contains``, ``html_body_contains``: substrings that must appear.
- ``attachments``: exact list in document order; each entry compares only the keys it has
  (``filename``, ``content_type``, ``size``, ``content_id``, ``inline``).
- ``parse_errors``: exact list (``[]`` for clean messages).
- ``parse_errors_contain``: each substring must appear (case-insensitive) in some entry.
- ``parse_errors_nonempty``: when true, at least one entry must be reported.
- ``max_depth``: passed to ``ParseOptions`` (default 50).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mailrunner.mime.parse import ParseOptions, parse

CORPUS = Path(__file__).parent / "corpus"
CASES = sorted(CORPUS.glob("*.eml"))

KNOWN_KEYS = {
    "message_id",
    "subject",
    "from",
    "to",
    "cc",
    "reply_to",
    "headers",
    "body",
    "body_contains",
    "html_body",
    "html_body_contains",
    "attachments",
    "parse_errors",
    "parse_errors_contain",
    "parse_errors_nonempty",
    "max_depth",
}
ATTACHMENT_KEYS = {"filename", "content_type", "size", "content_id", "inline"}
ADDRESS_FIELDS = {"from": "from_", "to": "to", "cc": "cc", "reply_to": "reply_to"}
EXACT_FIELDS = ("message_id", "subject", "body", "html_body", "parse_errors")
CONTAINS_FIELDS = {"body_contains": "body", "html_body_contains": "html_body"}


def to_crlf(data: bytes) -> bytes:
    """Convert LF line endings to CRLF, as an SMTP client puts a message on the wire."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def load_expected(eml: Path) -> dict[str, Any]:
    expected: dict[str, Any] = json.loads(eml.with_suffix(".json").read_text(encoding="utf-8"))
    return expected


def addresses(values: list[Any]) -> list[dict[str, str]]:
    return [{"email": a.email, "name": a.name} for a in values]


def attachment_facts(att: Any, keys: set[str]) -> dict[str, Any]:
    return {key: getattr(att, key) for key in sorted(keys)}


def check_fields(result: Any, expected: dict[str, Any]) -> list[str]:
    """Return one message per differing field: 'field: expected X, got Y'."""
    diffs: list[str] = []
    for field in EXACT_FIELDS:
        if field in expected:
            got = getattr(result, field)
            if got != expected[field]:
                diffs.append(f"{field}: expected {expected[field]!r}, got {got!r}")
    for field, attr in ADDRESS_FIELDS.items():
        if field in expected:
            got_addrs = addresses(getattr(result, attr))
            if got_addrs != expected[field]:
                diffs.append(f"{field}: expected {expected[field]!r}, got {got_addrs!r}")
    for field, attr in CONTAINS_FIELDS.items():
        text = getattr(result, attr)
        diffs.extend(
            f"{attr}: expected to contain {needle!r}, got {text!r}"
            for needle in expected.get(field, [])
            if needle not in text
        )
    for name, values in expected.get("headers", {}).items():
        got_values = result.headers.get(name)
        if got_values != values:
            diffs.append(
                f"headers[{name!r}]: expected {values!r}, got {got_values!r}"
                f" (keys: {sorted(result.headers)!r})"
            )
    return diffs


def check_attachments(result: Any, expected: dict[str, Any]) -> list[str]:
    if "attachments" not in expected:
        return []
    want: list[dict[str, Any]] = expected["attachments"]
    got = [attachment_facts(att, ATTACHMENT_KEYS) for att in result.attachments]
    if len(got) != len(want):
        return [f"attachments: expected {len(want)} {want!r}, got {len(got)} {got!r}"]
    diffs: list[str] = []
    for index, (exp, att) in enumerate(zip(want, result.attachments, strict=True)):
        facts = attachment_facts(att, set(exp))
        if facts != exp:
            diffs.append(f"attachments[{index}]: expected {exp!r}, got {facts!r}")
    return diffs


def check_errors(result: Any, expected: dict[str, Any]) -> list[str]:
    errors: list[str] = result.parse_errors
    diffs = [
        f"parse_errors: expected an entry containing {needle!r}, got {errors!r}"
        for needle in expected.get("parse_errors_contain", [])
        if not any(needle.lower() in entry.lower() for entry in errors)
    ]
    if expected.get("parse_errors_nonempty") and not errors:
        diffs.append("parse_errors: expected at least one entry, got []")
    return diffs


def check_invariants(result: Any) -> list[str]:
    """Facts that hold for every message, whatever the corpus file says."""
    diffs: list[str] = []
    for attr in ("body", "html_body"):
        text = getattr(result, attr)
        if not isinstance(text, str) or "\r" in text:
            diffs.append(f"{attr}: must be a str with '\\n' line endings, got {text!r}")
    if not all(isinstance(entry, str) for entry in result.parse_errors):
        diffs.append(f"parse_errors: entries must be str, got {result.parse_errors!r}")
    lowered = [key.lower() for key in result.headers]
    if len(lowered) != len(set(lowered)):
        diffs.append(f"headers: keys differ only by case: {sorted(result.headers)!r}")
    for index, att in enumerate(result.attachments):
        if not isinstance(att.content, bytes) or att.size != len(att.content):
            diffs.append(
                f"attachments[{index}]: size {att.size!r} != len(content)"
                f" {len(att.content) if isinstance(att.content, bytes) else att.content!r}"
            )
    return diffs


def test_corpus_is_complete() -> None:
    assert len(CASES) >= 32, f"corpus has only {len(CASES)} .eml files"
    jsons = {p.stem for p in CORPUS.glob("*.json")}
    emls = {p.stem for p in CASES}
    assert emls == jsons, f"unpaired files: {sorted(emls ^ jsons)}"
    for eml in CASES:
        unknown = set(load_expected(eml)) - KNOWN_KEYS
        assert not unknown, f"{eml.with_suffix('.json').name}: unknown keys {sorted(unknown)}"
        for att in load_expected(eml).get("attachments", []):
            bad = set(att) - ATTACHMENT_KEYS
            assert not bad, f"{eml.with_suffix('.json').name}: unknown attachment keys {bad}"


@pytest.mark.parametrize("eml", CASES, ids=[p.stem for p in CASES])
def test_corpus_message(eml: Path) -> None:
    expected = load_expected(eml)
    raw = to_crlf(eml.read_bytes())
    result = parse(raw, ParseOptions(max_depth=expected.get("max_depth", 50)))
    diffs = [
        *check_fields(result, expected),
        *check_attachments(result, expected),
        *check_errors(result, expected),
        *check_invariants(result),
    ]
    assert not diffs, f"{eml.name}:\n  " + "\n  ".join(diffs)
