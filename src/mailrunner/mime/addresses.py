"""Split address headers (From, To, Cc, Reply-To) as `email.utils.getaddresses` does, in
one pass and without recursion.

The standard splitter recurses once per nested comment and once per nested group, so a
`To:` of 2,000 `(` or `a:` raises RecursionError, and it copies a group's address list
for every member it adds. This is the same algorithm (`email._parseaddr.AddrlistClass`,
which RFC 5322's obsolete syntax makes forgiving) with the recursion turned into counters
and the character-by-character loops into single-class regex runs, so it gives the same
(name, address) pairs for any text in time linear in its length. A property test holds
it to the standard library's answers on small inputs.
"""

from __future__ import annotations

import re
from email.utils import quote

_SPECIALS = '()<>@,:;."[]'
_WHITESPACE = " \t"
_LINE_BREAKS = "\r\n"
_ATOM_RUN = re.compile(r'[^()<>@,:;."\[\] \t\r\n]*')
_PHRASE_ATOM_RUN = re.compile(r'[^()<>@,:;"\[\] \t\r\n]*')
"""A phrase may hold dots (RFC 5322 obs-phrase), an atom may not."""
_SPACE_RUN = re.compile(r"[ \t\r\n]*")
_COMMENT_TEXT = re.compile(r"[^\\()\r]*")
_QUOTED_TEXT = re.compile(r'[^\\"\r]*')
_LITERAL_TEXT = re.compile(r"[^\\\]\r]*")

Pair = tuple[str, str]
"""(display name, address), either possibly empty, as `getaddresses` returns them."""


def split_addresses(texts: list[str], errors: list[str], where: str) -> list[Pair]:
    """`email.utils.getaddresses(texts)`: the same pairs, including its `('', '')` for an
    entry it could not read, for any text; linear in the length of the texts.

    A comment, quoted string, domain literal, `<address>` or group the text leaves open is
    recorded in `errors` (the standard library closes it silently at the end).
    """
    parser = _AddressListParser(", ".join(texts))
    pairs = parser.addresses()
    errors.extend(f"{where}: {what} is not closed" for what in parser.unclosed)
    return pairs


class _AddressListParser:
    """One pass over an address list; method names follow `AddrlistClass`'s so the two can
    be read side by side."""

    def __init__(self, field: str) -> None:
        self.field = field
        self.pos = 0
        self.comments: list[str] = []
        self.unclosed: dict[str, None] = {}
        """What the text ended inside of, each kind once, in the order met."""

    def addresses(self) -> list[Pair]:
        found: list[Pair] = []
        while self.pos < len(self.field):
            pairs = self._address()
            found.extend(pairs or [("", "")])
        return found

    def _address(self) -> list[Pair]:
        """`getaddress`: one address, or one group with the groups nested in it.

        A nested group's pairs join its parent's in the order they are found, so one list
        and a count of open groups stand in for the standard library's recursion; a group
        ends at its `;` or at the end of the text.
        """
        found: list[Pair] = []
        open_groups = 0
        while True:
            pairs = self._address_start()
            if pairs is None:
                open_groups += 1
            else:
                self._address_end()
                found.extend(pairs)
            while open_groups and self._group_ends():
                open_groups -= 1
                self._address_end()
            if not open_groups:
                return found

    def _group_ends(self) -> bool:
        """The loop head of `getaddress`'s group branch: True when the innermost group is
        over (its `;` is consumed), False when another member follows."""
        if self.pos >= len(self.field):
            self.unclosed["a group"] = None
            return True
        self._skip_space()
        if self.pos < len(self.field) and self.field[self.pos] == ";":
            self.pos += 1
            return True
        return False

    def _address_start(self) -> list[Pair] | None:
        """`getaddress` up to its common ending; None when a group opened (after its `:`)."""
        self.comments = []
        self._skip_space()
        start, start_comments = self.pos, self.comments
        phrase = self._phrase()
        self._skip_space()
        if self.pos >= len(self.field):
            return [(" ".join(self.comments), phrase[0])] if phrase else []
        char = self.field[self.pos]
        if char in ".@":  # an addr-spec after all: read it again as one
            self.pos, self.comments = start, start_comments
            addr_spec = self._addr_spec()
            return [(" ".join(self.comments), addr_spec)]
        if char == ":":
            self.pos += 1
            return None
        if char == "<":
            route_addr = self._route_addr()
            name = " ".join(phrase)
            if self.comments:
                name += " (" + " ".join(self.comments) + ")"
            return [(name, route_addr)]
        if phrase:
            return [(" ".join(self.comments), phrase[0])]
        if char in _SPECIALS:
            self.pos += 1
        return []

    def _address_end(self) -> None:
        self._skip_space()
        if self.pos < len(self.field) and self.field[self.pos] == ",":
            self.pos += 1

    def _skip_space(self) -> str:
        """`gotonext`: skip whitespace and comments (kept in `comments`); the whitespace
        skipped, line breaks left out."""
        skipped: list[str] = []
        while self.pos < len(self.field):
            char = self.field[self.pos]
            if char == "(":
                self.comments.append(self._comment())
            elif char in _WHITESPACE or char in _LINE_BREAKS:
                run = self._atom(_SPACE_RUN)
                skipped.append(run.replace("\r", "").replace("\n", ""))
            else:
                break
        return "".join(skipped)

    def _route_addr(self) -> str:
        """`getrouteaddr`: `<[@route,...:]addr-spec>`, the route skipped."""
        expect_route = False
        self.pos += 1
        self._skip_space()
        address = ""
        while self.pos < len(self.field):
            char = self.field[self.pos]
            if expect_route:
                self._domain()
                expect_route = False
            elif char == ">":
                self.pos += 1
                return address
            elif char == "@":
                self.pos += 1
                expect_route = True
            elif char == ":":
                self.pos += 1
            else:
                address = self._addr_spec()
                self.pos += 1  # the `>`, or whatever stands there
                if self.pos <= len(self.field):
                    return address
                break
            self._skip_space()
        self.unclosed["an <address>"] = None
        return address

    def _addr_spec(self) -> str:
        """`getaddrspec`: local-part `@` domain, or the local part alone."""
        local = self._local_part()
        if self.pos >= len(self.field) or self.field[self.pos] != "@":
            return local
        self.pos += 1
        self._skip_space()
        domain = self._domain()
        return local + "@" + domain if domain else ""

    def _local_part(self) -> str:
        pieces: list[str] = []
        self._skip_space()
        while self.pos < len(self.field):
            keep_space = True
            char = self.field[self.pos]
            if char == ".":
                if pieces and not pieces[-1].strip():
                    pieces.pop()
                pieces.append(".")
                self.pos += 1
                keep_space = False
            elif char == '"':
                pieces.append(f'"{quote(self._quoted())}"')
            elif char in _SPECIALS or char in _WHITESPACE or char in _LINE_BREAKS:
                if pieces and not pieces[-1].strip():
                    pieces.pop()
                break
            else:
                pieces.append(self._atom(_ATOM_RUN))
            space = self._skip_space()
            if keep_space and space:
                pieces.append(space)
        return "".join(pieces)

    def _domain(self) -> str:
        """`getdomain`; empty for a second `@` (bpo-34155: `a@evil.org@good.com`)."""
        pieces: list[str] = []
        while self.pos < len(self.field):
            char = self.field[self.pos]
            if char in _WHITESPACE:
                self.pos += 1
            elif char == "(":
                self.comments.append(self._comment())
            elif char == "[":
                pieces.append(f"[{self._delimited(_LITERAL_TEXT, 'a domain literal')}]")
            elif char == ".":
                self.pos += 1
                pieces.append(".")
            elif char == "@":
                return ""
            elif char in _SPECIALS or char in _LINE_BREAKS:
                break
            else:
                pieces.append(self._atom(_ATOM_RUN))
        return "".join(pieces)

    def _phrase(self) -> list[str]:
        """`getphraselist`: the words before an address, quoted strings unquoted."""
        words: list[str] = []
        while self.pos < len(self.field):
            char = self.field[self.pos]
            if char in _WHITESPACE or char in _LINE_BREAKS:
                self.pos += 1
            elif char == '"':
                words.append(self._quoted())
            elif char == "(":
                self.comments.append(self._comment())
            elif char in _SPECIALS and char != ".":  # a phrase may hold dots
                break
            else:
                words.append(self._atom(_PHRASE_ATOM_RUN))
        return words

    def _atom(self, run: re.Pattern[str]) -> str:
        match = run.match(self.field, self.pos)
        text = match.group() if match is not None else ""
        self.pos += len(text)
        return text

    def _quoted(self) -> str:
        """`getquote`: the text of a quoted string, escapes undone; a CR also ends it."""
        return self._delimited(_QUOTED_TEXT, "a quoted string")

    def _delimited(self, text_run: re.Pattern[str], what: str) -> str:
        """`getdelimited` without comments: from the opening character (at `pos`) to the
        closing one or a CR (whatever `text_run` stops at, other than a backslash), a
        backslash taking the next character as it is."""
        pieces: list[str] = []
        self.pos += 1
        while self.pos < len(self.field):
            pieces.append(self._atom(text_run))
            if self.pos >= len(self.field):
                break
            if self.field[self.pos] == "\\":
                self.pos += self._escaped(pieces)
            else:
                self.pos += 1
                return "".join(pieces)
        self.unclosed[what] = None
        return "".join(pieces)

    def _comment(self) -> str:
        """`getcomment`: the text of a comment, the comments nested in it included without
        their parentheses; a counter stands in for the standard library's recursion."""
        pieces: list[str] = []
        depth = 1
        self.pos += 1
        while self.pos < len(self.field):
            pieces.append(self._atom(_COMMENT_TEXT))
            if self.pos >= len(self.field):
                break
            char = self.field[self.pos]
            if char == "\\":
                self.pos += self._escaped(pieces)
                continue
            self.pos += 1
            depth += 1 if char == "(" else -1
            if depth == 0:
                return "".join(pieces)
        self.unclosed["a comment"] = None
        return "".join(pieces)

    def _escaped(self, pieces: list[str]) -> int:
        """Keep the character a backslash (at `pos`) quotes; how far to move on."""
        escaped = self.field[self.pos + 1 : self.pos + 2]
        pieces.append(escaped)
        return 1 + len(escaped)
