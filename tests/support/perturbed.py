"""Near misses of an input a fast path accepts, for the property tests of the fast paths.

Random text almost never has the shape a fast path is written for, so a property "whenever
the fast path answers, it answers like the slow path" is checked in almost no example. These
strategies start from an accepted input and edit it a little, so that most examples still
take the fast path and the rest fall just beside it, where a fast path's mistakes live.
"""

from __future__ import annotations

from hypothesis import event
from hypothesis import strategies as st


@st.composite
def perturbed(
    draw: st.DrawFn,
    texts: st.SearchStrategy[str],
    chars: str,
    fragments: list[str],
    delimiters: str,
) -> str:
    """A text with up to two edits: a character inserted, replaced or deleted anywhere, or a
    fragment inserted just after a delimiter, where it changes what the text means."""
    text = draw(texts)
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        after_delimiter = [at + 1 for at, char in enumerate(text) if char in delimiters]
        if after_delimiter and draw(st.booleans()):
            at = draw(st.sampled_from(after_delimiter))
            text = text[:at] + draw(st.sampled_from(fragments)) + text[at:]
            continue
        at = draw(st.integers(min_value=0, max_value=len(text)))
        edit = draw(st.sampled_from(["insert", "replace", "delete"]))
        char = draw(st.sampled_from(chars)) if edit != "delete" else ""
        skip = 0 if edit == "insert" else 1
        text = text[:at] + char + text[at + skip :]
    return text


class FastPathCount:
    """How many examples the fast path answered, so a test can fail when its assertion was
    reached too rarely to mean anything."""

    def __init__(self) -> None:
        self.answered = 0
        self.examples = 0

    def record(self, answered: bool) -> None:
        self.examples += 1
        self.answered += answered
        event("fast path answered" if answered else "left to the slow path")

    def require_share(self, share: float) -> None:
        assert self.examples, "no example ran"
        assert self.answered >= share * self.examples, (
            f"the fast path answered only {self.answered} of {self.examples} examples"
        )
