"""Refresh docs/inbox.png and docs/message.png (`make screenshots`), shown in the README.

Starts `mailrunner serve` with the inbox on in a temporary directory, sends a few sample
emails over SMTP, and photographs the inbox and one message in the headless Debian Chromium
the browser tests use (tests/support/browser.py: nothing is downloaded).
"""

from __future__ import annotations

import smtplib
import sys
import tempfile
import urllib.request
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import parseaddr
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from support.browser import chromium, rich_message  # noqa: E402
from support.processes import ServeProcess  # noqa: E402

SAMPLES = [
    ("Acme <hello@acme.example>", "Welcome to Acme, Ada!", "Thanks for signing up."),
    ("Security <no-reply@acme.example>", "Reset your password", "Click the link to reset."),
    ("Shop <orders@shop.example>", "Your order #1042 has shipped", "It arrives on Friday."),
    ("Grace Hopper <grace@example.com>", "Weekly report", "Numbers are up 4% this week."),
]
"""(From, Subject, body) of the plain messages, sent oldest first; the rich one comes last."""
WAIT = 10.0
ROWS = '[data-testid="message-row"]'


def plain(sender: str, subject: str, body: str) -> bytes:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, "ada@example.com", subject
    message.set_content(body)
    return message.as_bytes(policy=SMTP)


def send_samples(server: ServeProcess) -> None:
    """Each with its From as the envelope sender (the list shows both when they differ)."""
    mails = [(parseaddr(fr)[1], plain(fr, subject, body)) for fr, subject, body in SAMPLES]
    mails.append(("billing@shop.example", rich_message("Invoice 0042 is ready")))
    with smtplib.SMTP("127.0.0.1", server.port, timeout=20) as client:
        for sender, raw in mails:
            client.sendmail(sender, ["ada@example.com"], raw)


def read_one(base: str, message_id: str) -> None:
    """Mark one message read, so the list shows read and unread rows."""
    request = urllib.request.Request(
        f"{base}/messages/{message_id}/read",
        data=b"{}",
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(request, timeout=20).close()


def photograph(driver: Any, base: str, docs: Path) -> None:
    """docs/inbox.png (the oldest message read, the others unread) and docs/message.png (the
    newest, with its inline image loaded in the preview)."""
    until = WebDriverWait(driver, WAIT).until
    driver.get(base + "/")
    until(lambda d: len(row_ids(d)) == len(SAMPLES) + 1)
    ids = row_ids(driver)
    read_one(base, ids[-1])
    driver.refresh()
    until(lambda d: d.find_elements("css selector", f'{ROWS}[data-id="{ids[-1]}"].read'))
    driver.save_screenshot(str(docs / "inbox.png"))
    driver.get(f"{base}/#/messages/{ids[0]}")
    frame = until(lambda d: d.find_elements("css selector", '[data-testid="preview-frame"]'))
    driver.switch_to.frame(frame[0])
    until(lambda d: d.execute_script("return document.images[0]?.complete"))
    driver.switch_to.default_content()
    driver.save_screenshot(str(docs / "message.png"))


def row_ids(driver: Any) -> list[str]:
    return [row.get_attribute("data-id") for row in driver.find_elements("css selector", ROWS)]


def main() -> int:
    docs = ROOT / "docs"
    with tempfile.TemporaryDirectory(prefix="mailrunner-shots-") as workdir:
        server = ServeProcess(Path(workdir), {"inbox": {"enabled": True}})
        try:
            send_samples(server)
            with chromium(1280, 760) as driver:
                photograph(driver, f"http://127.0.0.1:{server.api_port}", docs)
        finally:
            server.terminate()
    print(f"wrote {docs / 'inbox.png'} and {docs / 'message.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
