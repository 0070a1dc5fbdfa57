"""The web UI served by the API: its pages and files under the page CSP, and the login that
trades the token for a session cookie, refused to another site's page."""

from __future__ import annotations

from collections.abc import Callable
from http.cookies import SimpleCookie

import pytest
from inbox_api_support import InboxServer, plain
from sse_client import EventStream

TOKEN = "s3cret-token"
PAGE_CSP = "default-src 'self'; script-src 'self'; frame-ancestors 'none'"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def tokened(start_inbox_server: Callable[..., InboxServer]) -> InboxServer:
    return start_inbox_server(rpc={"token": TOKEN})


def origin(server: InboxServer) -> dict[str, str]:
    """The headers of a request the UI's own page sends."""
    return {"Origin": server.api_url, "Host": f"{server.host}:{server.port}"}


def log_in(server: InboxServer, token: str = TOKEN) -> tuple[int, str, SimpleCookie]:
    """POST the login form as the login page does: status, Location and cookies set."""
    response = server.request(
        "POST", "/ui/login", data=f"token={token}".encode(), headers={**FORM, **origin(server)}
    )
    cookies: SimpleCookie = SimpleCookie(response.headers.get("Set-Cookie", ""))
    return response.status, response.headers.get("Location", ""), cookies


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/", "text/html; charset=utf-8"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/api.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
        ("/ui/favicon.svg", "image/svg+xml"),
    ],
)
def test_the_pages_and_files_carry_the_page_csp(
    inbox_server: InboxServer, path: str, content_type: str
) -> None:
    response = inbox_server.request("GET", path)
    assert response.status == 200
    assert response.headers["Content-Type"] == content_type
    assert response.headers["Content-Security-Policy"] == PAGE_CSP
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.body


def test_the_page_is_the_package_index_and_unknown_files_are_404(
    inbox_server: InboxServer,
) -> None:
    assert b'<script type="module" src="/ui/app.js">' in inbox_server.request("GET", "/").body
    for path in ("/ui/nothing.js", "/ui/..%2Fservice.py", "/ui/%2e%2e%2f__init__.py"):
        assert inbox_server.request("GET", path).status == 404, path


def test_without_a_token_login_goes_home_and_logout_is_ok(inbox_server: InboxServer) -> None:
    page = inbox_server.request("GET", "/ui/login")
    assert (page.status, page.headers["Location"]) == (303, "/")
    assert log_in(inbox_server)[:2] == (303, "/")
    assert inbox_server.ok("POST", "/ui/logout") == {"ok": True}


def test_with_a_token_the_pages_are_public_and_the_data_is_not(tokened: InboxServer) -> None:
    tokened.add(plain("secret subject"))
    assert tokened.request("GET", "/").status == 200
    login = tokened.request("GET", "/ui/login")
    assert login.status == 200
    assert b'action="/ui/login"' in login.body
    assert login.headers["Content-Security-Policy"] == PAGE_CSP
    for path in ("/messages", "/events", "/jobs/pipelines"):
        assert tokened.request("GET", path).status == 401, path
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert tokened.request("GET", "/messages", headers=bearer).json()["total"] == 1


def test_login_sets_a_session_cookie_that_opens_the_api(tokened: InboxServer) -> None:
    status, location, cookies = log_in(tokened)
    assert (status, location) == (303, "/")
    name = f"mailrunner_{tokened.port}"
    cookie = cookies[name]
    assert cookie.value
    assert TOKEN not in cookie.value
    assert cookie["httponly"] is True
    assert (cookie["samesite"], cookie["path"]) == ("Strict", "/")
    session = {"Cookie": f"{name}={cookie.value}"}
    listed = tokened.request("GET", "/messages", headers=session)
    assert listed.status == 200
    with EventStream(tokened.host, tokened.port, session) as stream:
        assert "pipelines" in stream.next_named("stats")
    forged = {"Cookie": f"{name}={cookie.value[:-1]}0"}
    assert tokened.request("GET", "/messages", headers=forged).status == 401
    logout = tokened.request("POST", "/ui/logout", headers=session)
    assert logout.status == 200
    assert SimpleCookie(logout.headers["Set-Cookie"])[name].value == ""


def test_a_wrong_token_goes_back_to_the_form(tokened: InboxServer) -> None:
    status, location, cookies = log_in(tokened, "guess")
    assert (status, location, len(cookies)) == (303, "/ui/login#invalid", 0)


def test_another_sites_page_can_neither_log_in_nor_use_the_cookie(tokened: InboxServer) -> None:
    evil = {"Origin": "https://evil.example", "Host": f"{tokened.host}:{tokened.port}"}
    refused = tokened.request(
        "POST", "/ui/login", data=f"token={TOKEN}".encode(), headers={**FORM, **evil}
    )
    assert refused.status == 403
    assert "Set-Cookie" not in refused.headers
    rebound = {"Host": f"evil.example:{tokened.port}"}
    assert tokened.request("POST", "/ui/login", data=b"", headers={**FORM, **rebound}).status == 403

    _, _, cookies = log_in(tokened)
    name = f"mailrunner_{tokened.port}"
    session = f"{name}={cookies[name].value}"
    message_id = tokened.add(plain("keep"))
    cross = tokened.request(
        "DELETE", f"/messages/{message_id}", headers={"Cookie": session, **evil}
    )
    assert cross.status == 403
    on_rebound_name = tokened.request("GET", "/messages", headers={"Cookie": session, **rebound})
    assert on_rebound_name.status == 403
    same = tokened.request(
        "DELETE", f"/messages/{message_id}", headers={"Cookie": session, **origin(tokened)}
    )
    assert same.status == 200


def test_only_the_login_takes_a_form(tokened: InboxServer) -> None:
    _, _, cookies = log_in(tokened)
    name = f"mailrunner_{tokened.port}"
    headers = {"Cookie": f"{name}={cookies[name].value}", **FORM, **origin(tokened)}
    assert tokened.request("DELETE", "/messages", data=b"", headers=headers).status == 415


def test_the_workers_page_asks_only_for_the_pools_that_run(inbox_server: InboxServer) -> None:
    # the inbox's server runs no worker pool: the page must not ask for one and get a 404
    assert inbox_server.ok("GET", "/workers") == {"pools": []}
    script = inbox_server.request("GET", "/ui/admin.js").body.decode()
    assert "api('GET', '/workers')" in script
