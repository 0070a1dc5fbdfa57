"""Headless Chromium from Debian, driven by Selenium, for the inbox UI's tests and screenshots.

Only the system's browser and driver run: the driver's path goes to `Service` and the browser's
to `binary_location`, so Selenium Manager never starts and nothing is downloaded. CI runs as
root, hence `--no-sandbox`; `/dev/shm` is small in containers, hence `--disable-dev-shm-usage`.
"""

from __future__ import annotations

import shutil
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from support.requirements import unavailable

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCRIPT_MARK = "script-ran"
"""What the mail's `<script>` would write into the page and its title if it ran."""
PDF_BYTES = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def require_chromium() -> None:
    """Skip (locally) or fail (CI) when the Debian browser or its driver is missing."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if shutil.which(path) is None]
    if missing:
        unavailable(f"{' and '.join(missing)} missing (apt-get install chromium chromium-driver)")


@contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A headless Chromium window of `width` x `height` CSS pixels, with its console kept
    for `get_log("browser")`; quit on exit."""
    require_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A valid one-colour PNG (a browser must decode it: naturalWidth > 0)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


LOGO = png(96, 32, (46, 125, 200))


def rich_message(subject: str) -> bytes:
    """An HTML mail with an inline `cid:` image, a PDF attachment and a `<script>` that would
    mark the page if it ran — what the browser test opens and docs/message.png shows."""
    message = EmailMessage()
    message["From"] = "Billing <billing@shop.example>"
    message["To"] = "Ada Lovelace <ada@example.com>"
    message["Subject"] = subject
    message.set_content("Your invoice is attached.\n\nThank you for your order.")
    message.add_alternative(
        "<h2>Invoice ready</h2><p><img src='cid:logo@shop' alt='logo'></p>"
        "<p>Your invoice is attached. Thank you for your order.</p>"
        f"<script>document.title='{SCRIPT_MARK}';"
        f"document.body.setAttribute('data-mark','{SCRIPT_MARK}')</script>",
        subtype="html",
    )
    html_part = message.get_body(("html",))
    assert html_part is not None
    html_part.add_related(
        LOGO, "image", "png", cid="<logo@shop>", disposition="inline", filename="logo.png"
    )
    message.add_attachment(PDF_BYTES, "application", "pdf", filename="invoice-0042.pdf")
    return message.as_bytes(policy=SMTP)
