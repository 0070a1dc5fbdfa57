"""The web UI's pages and files, and its login: served by the API's own aiohttp app.

The files are read once from the package (`mailrunner/inbox/ui`) and only those names are
served, so no path from a request reaches the file system. Every page and file carries the
page CSP; the pages hold no data (the data routes stay behind the token or the session).
"""

from __future__ import annotations

import hmac
from importlib import resources

from aiohttp import hdrs, web

from mailrunner.api.schemas import OkResponse
from mailrunner.api.trust import RequestGuard, Sessions
from mailrunner.errors import NotFound

PAGE_CSP = "default-src 'self'; script-src 'self'; frame-ancestors 'none'"
_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".html": "text/html; charset=utf-8",
}
_PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
_INDEX = "index.html"
_LOGIN = "login.html"


def _load_files() -> dict[str, tuple[bytes, str]]:
    """Every file of the UI by name: its bytes and content type."""
    folder = resources.files("mailrunner.inbox").joinpath("ui")
    files = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _TYPES:
            files[entry.name] = (entry.read_bytes(), _TYPES[suffix])
    return files


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={hdrs.LOCATION: location, **_PAGE_HEADERS})


class UiHandlers:
    """Handlers of `routes.UI_ROUTES`; `token` is `rpc.token` (None: no login at all)."""

    def __init__(self, token: str | None, guard: RequestGuard, sessions: Sessions) -> None:
        self._token = token
        self._guard = guard
        self._sessions = sessions
        self._files = _load_files()

    def _file(self, name: str) -> web.Response:
        found = self._files.get(name)
        if found is None:
            raise NotFound(f"the web UI has no file {name!r}")
        body, content_type = found
        return web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type, **_PAGE_HEADERS})

    async def ui_page(self, request: web.Request) -> web.Response:
        return self._file(_INDEX)

    async def ui_asset(self, request: web.Request) -> web.Response:
        return self._file(request.match_info["file"])

    async def ui_login_page(self, request: web.Request) -> web.Response:
        if self._token is None:
            return _see_other("/")
        return self._file(_LOGIN)

    async def ui_login(self, request: web.Request) -> web.Response:
        """The form's token for a session cookie: the one route that takes a form, and
        checked for Host and Origin even with a token (a cross-site form would log the
        browser in to the attacker's session otherwise, or probe tokens)."""
        self._guard.check_page_sender(request)
        if self._token is None:
            return _see_other("/")
        sent = (await request.post()).get("token")
        if not isinstance(sent, str) or not hmac.compare_digest(
            sent.encode("utf-8", "replace"), self._token.encode()
        ):
            return _see_other("/ui/login#invalid")
        response = _see_other("/")
        response.set_cookie(
            Sessions.cookie_name(request),
            self._sessions.issue(),
            httponly=True,
            samesite="Strict",
            path="/",
        )
        return response

    async def ui_logout(self, request: web.Request) -> web.Response:
        response = web.json_response(OkResponse().model_dump(mode="json"))
        if self._token is not None:
            response.del_cookie(Sessions.cookie_name(request), path="/")
        return response
