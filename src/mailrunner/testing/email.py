"""The message a test receives: the worker SDK's read-only `Email`, plus the two things a
test of an application's email does with it — find the links, find a code or a token.

Standard library only beyond the SDK: the HTML is read with `html.parser`, never rendered.
"""

from __future__ import annotations

import re
from dataclasses import fields
from html.parser import HTMLParser

from mailrunner.worker.event import Email as EventEmail

_URL = re.compile(r"https?://[^\s<>\"']+", re.IGNORECASE)
_TRAILING = ".,;:!?)]}'\""
"""Punctuation that ends a sentence after a URL in text, not the URL itself."""
_LINK_TAGS = frozenset({"a", "area"})
_HIDDEN_TAGS = frozenset({"script", "style", "head", "title"})
"""Elements whose content a reader never sees as text."""


class Email(EventEmail):
    """One message as the inbox holds it (`GET /messages/{id}`): the event's fields as the SDK
    reads them, with `links()` and `search()`. Attachment contents are not in it: the inbox
    serves them at `GET /messages/{id}/attachments/{index}`."""

    __slots__ = ()

    @classmethod
    def of(cls, event: EventEmail) -> Email:
        """The same message with this class's methods."""
        return cls(**{field.name: getattr(event, field.name) for field in fields(event)})

    @classmethod
    def from_json(cls, data: bytes | str) -> Email:
        return cls.of(EventEmail.from_json(data))

    def links(self) -> list[str]:
        """Every link, once each, in order: the HTML's `href`s first (entities decoded), then
        the URLs written in the text body."""
        found = _HtmlReader.read(self.message.html_body).links
        found += [url.rstrip(_TRAILING) for url in _URL.findall(self.message.body)]
        return list(dict.fromkeys(link for link in found if link))

    def search(self, pattern: str | re.Pattern[str]) -> str | None:
        """The first match of `pattern` in the text body, else in the HTML's visible text;
        None when neither has one. A pattern with a group gives its first group (so
        `search(r"token=(\\w+)")` gives the token), else the whole match."""
        compiled = re.compile(pattern)
        for text in (self.message.body, _HtmlReader.read(self.message.html_body).text):
            match = compiled.search(text)
            if match is not None:
                return match.group(1) if compiled.groups else match.group(0)
        return None


class _HtmlReader(HTMLParser):
    """The links and the visible text of an HTML body (character references decoded)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self._text: list[str] = []
        self._hidden = 0

    @classmethod
    def read(cls, html: str) -> _HtmlReader:
        reader = cls()
        reader.feed(html)
        reader.close()
        return reader

    @property
    def text(self) -> str:
        return "".join(self._text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN_TAGS:
            self._hidden += 1
        elif tag in _LINK_TAGS:
            self.links.extend(value.strip() for name, value in attrs if name == "href" and value)
        elif tag in {"br", "p", "div", "tr", "li"}:
            self._text.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN_TAGS and self._hidden:
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self._text.append(data)
