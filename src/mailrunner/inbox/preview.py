"""The HTML preview of a message: its `cid:` images made `data:` URIs, so that the preview
frame, whose CSP allows images only from `data:` (and the web with `?remote=1`), shows them
without another request.

The HTML is otherwise served as it came: the frame is sandboxed without scripts and under a
CSP of `default-src 'none'`, which is what keeps a script or a form in it inert.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from urllib.parse import unquote

CID_URL = re.compile(r"""cid:([^\s"'<>()]+)""", re.IGNORECASE)
"""A `cid:` URL in an attribute or a CSS `url()`, up to its closing quote or parenthesis."""

MEDIA_TYPE = re.compile(r"[a-z0-9][\w.+-]*/[a-z0-9][\w.+-]*")
HTML_CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; form-action 'none';"
    " base-uri 'none'; frame-ancestors 'self'; sandbox"
)
REMOTE_HTML_CSP = HTML_CSP.replace("img-src data:", "img-src data: https: http:")
"""The preview's CSP when the reader asked for remote images."""


def content_id_key(content_id: str) -> str:
    """A Content-ID as a `cid:` URL names it (RFC 2392: URL-encoded, no angle brackets),
    compared without case, as mail clients do."""
    return unquote(content_id).strip("<>").lower()


def embed_images(html: str, images: Mapping[str, tuple[str, bytes]]) -> str:
    """`html` with each `cid:` URL whose Content-ID is in `images` (key: `content_id_key`,
    value: content type and bytes) replaced by a `data:` URI; others are left (blocked)."""

    def data_uri(match: re.Match[str]) -> str:
        image = images.get(content_id_key(match.group(1)))
        if image is None:
            return match.group(0)
        content_type, content = image
        media = content_type.split(";")[0].strip().lower()
        if not MEDIA_TYPE.fullmatch(media):
            media = "application/octet-stream"
        return f"data:{media};base64,{base64.b64encode(content).decode()}"

    return CID_URL.sub(data_uri, html)


def referenced_ids(html: str) -> set[str]:
    """The Content-IDs `html` names in `cid:` URLs (as `content_id_key` writes them)."""
    return {content_id_key(match.group(1)) for match in CID_URL.finditer(html)}
