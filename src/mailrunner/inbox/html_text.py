"""The words of an HTML body, so a search finds what a reader of the HTML part sees.

Many messages have no text part, or one that says "view this in a browser": search indexes
the HTML's text too. The standard library's parser is lenient (any string parses, entities
are decoded); script and style content is code, not words, and is skipped.
"""

from __future__ import annotations

from html.parser import HTMLParser

_NOT_TEXT = frozenset({"script", "style", "head", "title", "template"})
_BREAKS = frozenset({"br", "p", "div", "li", "tr", "td", "th", "h1", "h2", "h3", "h4", "h5", "h6"})


class _TextCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _NOT_TEXT:
            self._hidden_depth += 1
        elif tag in _BREAKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _NOT_TEXT and self._hidden_depth:
            self._hidden_depth -= 1
        elif tag in _BREAKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden_depth:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """The visible text of `html`, paragraphs on their own lines."""
    collector = _TextCollector()
    collector.feed(html)
    collector.close()
    lines = (" ".join(line.split()) for line in "".join(collector.parts).splitlines())
    return "\n".join(line for line in lines if line)
