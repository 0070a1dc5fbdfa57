"""The inbox in a real browser (headless Debian Chromium) against a running server: mail sent
with smtplib shows up live, is searched, opened, previewed safely, downloaded and deleted, and
the pipelines page pauses and resumes a pipeline. Screenshots of each step go to tmp_path."""

from __future__ import annotations

import smtplib
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from inbox_api_support import InboxServer, plain
from selenium.webdriver.support.ui import WebDriverWait

from support.browser import PDF_BYTES, SCRIPT_MARK, chromium, rich_message
from support.waiting import WAIT_SECONDS, wait_until

LIVE_BOUND = 5.0
"""Generous bound on the 250-to-row time (the issue's bar is 1 s; the test prints the figure)."""


@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium() as driver:
        yield driver


def by_testid(name: str) -> str:
    return f'[data-testid="{name}"]'


def shown(name: str) -> Callable[[Any], list[Any]]:
    """A wait condition: the elements of data-testid `name`, once there are any."""
    return lambda driver: driver.find_elements("css selector", by_testid(name))


def waiter(driver: Any, timeout: float = WAIT_SECONDS) -> Callable[[Callable[[Any], Any]], Any]:
    """WebDriverWait(...).until, polling every 20 ms so a timing taken with it is close."""
    return WebDriverWait(driver, timeout, poll_frequency=0.02).until


def row_ids(driver: Any) -> list[str]:
    """The listed ids, read in one script: rows redrawn between two calls go stale."""
    ids: list[str] = driver.execute_script(
        "return [...document.querySelectorAll('[data-testid=message-row]')]"
        ".map((row) => row.dataset.id)"
    )
    return ids


def open_inbox(driver: Any, server: InboxServer) -> None:
    """Load the inbox page and wait until its /events stream is open on the server."""
    driver.get(server.api_url + "/")
    waiter(driver)(shown("search"))
    wait_until(lambda: server.inbox.feed.listening, "the page's /events stream to open")


def send(server: InboxServer, raw: bytes) -> float:
    """Send one mail with smtplib; the monotonic time of its 250 (before QUIT)."""
    with smtplib.SMTP(server.server.host, server.server.port, timeout=20) as client:
        client.sendmail("billing@shop.example", ["ada@example.com"], raw)
        return time.monotonic()


def severe_console_entries(driver: Any) -> list[dict[str, Any]]:
    """Console errors. docs/inbox-ui.md expects only a bad search's 422 and the 401s before
    logging in, which these flows do not cause; the mail's blocked `<script>` logs none."""
    entries: list[dict[str, Any]] = driver.get_log("browser")
    return [entry for entry in entries if entry["level"] == "SEVERE"]


def test_mail_arrives_live_opens_safely_downloads_and_deletes(
    inbox_server: InboxServer, browser: Any, tmp_path: Path
) -> None:
    driver, until = browser, waiter(browser)
    inbox_server.send(plain("Weekly report", "numbers inside"))
    open_inbox(driver, inbox_server)
    until(lambda d: len(row_ids(d)) == 1)

    accepted = send(inbox_server, rich_message("Invoice 0042"))
    until(lambda d: len(row_ids(d)) == 2)
    live = time.monotonic() - accepted
    print(f"live row {live * 1000:.0f} ms after the 250 (issue's bar: 1000 ms)")
    assert live < LIVE_BOUND
    message_id = row_ids(driver)[0]
    driver.save_screenshot(str(tmp_path / "1-inbox.png"))

    search = driver.find_element("css selector", by_testid("search"))
    search.send_keys("subject:invoice\n")
    until(lambda d: row_ids(d) == [message_id])
    driver.save_screenshot(str(tmp_path / "2-search.png"))

    driver.find_element("css selector", by_testid("message-row")).click()
    until(shown("message-subject"))
    assert driver.find_element("css selector", by_testid("message-subject")).text == "Invoice 0042"
    frame = until(shown("preview-frame"))[0]
    driver.switch_to.frame(frame)
    image = until(lambda d: d.find_elements("css selector", "img[alt=logo]"))[0]
    until(lambda d: d.execute_script("return arguments[0].complete", image))
    assert driver.execute_script("return arguments[0].naturalWidth", image) > 0
    assert driver.title != SCRIPT_MARK
    assert driver.find_element("tag name", "body").get_attribute("data-mark") is None
    driver.switch_to.default_content()
    assert driver.title != SCRIPT_MARK
    driver.save_screenshot(str(tmp_path / "3-message.png"))

    driver.find_element("css selector", by_testid("tab-attachments")).click()
    links = until(shown("attachment-link"))
    names = {link.text: link for link in links}
    assert set(names) == {"logo.png", "invoice-0042.pdf"}
    link = names["invoice-0042.pdf"]
    with urllib.request.urlopen(link.get_attribute("href"), timeout=20) as response:
        assert response.read() == PDF_BYTES
    driver.save_screenshot(str(tmp_path / "4-attachments.png"))

    driver.find_element("css selector", by_testid("delete")).click()
    until(lambda d: d.current_url.endswith("#/") and shown("search")(d))
    assert inbox_server.request("GET", f"/messages/{message_id}").status == 404
    until(lambda d: message_id not in row_ids(d))
    driver.save_screenshot(str(tmp_path / "5-deleted.png"))

    assert severe_console_entries(driver) == []


def test_pipelines_page_pauses_and_resumes(
    inbox_server: InboxServer, browser: Any, tmp_path: Path
) -> None:
    driver, until = browser, waiter(browser)
    driver.get(inbox_server.api_url + "/#/pipelines")
    selector = by_testid("pipeline-row") + '[data-name="smtp-emails"]'
    row = until(lambda d: d.find_elements("css selector", selector))[0]
    stat = "/jobs/pipelines/smtp-emails/stat"
    row.find_element("css selector", by_testid("pause")).click()
    wait_until(lambda: inbox_server.ok("GET", stat)["paused"], "the pipeline to be paused")
    until(lambda d: "paused" in d.find_element("css selector", selector).text)
    driver.save_screenshot(str(tmp_path / "6-paused.png"))
    driver.find_element("css selector", selector).find_element(
        "css selector", by_testid("resume")
    ).click()
    wait_until(lambda: not inbox_server.ok("GET", stat)["paused"], "the pipeline to resume")

    assert severe_console_entries(driver) == []


def test_readable_at_phone_width(inbox_server: InboxServer, browser: Any, tmp_path: Path) -> None:
    message_id = inbox_server.send(rich_message("Invoice 0042 with a rather long subject line"))
    browser.set_window_size(390, 844)
    no_scroll = "return document.documentElement.scrollWidth <= window.innerWidth"
    routes = (
        ("/", "message-row"),
        (f"/#/messages/{message_id}", "preview-frame"),
        ("/#/pipelines", "pipeline-row"),
    )
    for route, ready in routes:
        browser.get(inbox_server.api_url + route)
        waiter(browser)(shown(ready))
        browser.save_screenshot(str(tmp_path / f"phone-{ready}.png"))
        assert browser.execute_script(no_scroll), f"{route} scrolls sideways at 390 px"
    assert severe_console_entries(browser) == []
