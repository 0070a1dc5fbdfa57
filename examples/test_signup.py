"""Testing an application's email with mailrunner's pytest plugin: a sign-up that mails a
confirmation link, and what happens when the mail provider refuses the address.

`SignupApp` stands for your application: it sends with smtplib through whatever SMTP server
it is configured with. The tests configure it with the session's mailrunner
(`mailrunner_server`) and read what it sent from `mailbox`. Nothing else is needed: the
plugin comes with `pip install mailrunner`. Run it with `pytest examples/test_signup.py`.
"""

from __future__ import annotations

import secrets
import smtplib
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import pytest

if TYPE_CHECKING:
    from mailrunner.testing import InProcessServer, Mailbox


@dataclass
class SignupApp:
    """Signs people up: mails each a link with a one-time token, confirms the token."""

    smtp_host: str
    smtp_port: int
    base_url: str = "https://app.example"
    pending: dict[str, str] = field(default_factory=dict)
    """Tokens mailed and not yet used, with their address."""
    confirmed: set[str] = field(default_factory=set)
    bounced: dict[str, str] = field(default_factory=dict)
    """Addresses the mail server refused, with its reply."""

    def sign_up(self, address: str) -> None:
        token = secrets.token_urlsafe(16)
        link = f"{self.base_url}/confirm?token={token}"
        message = EmailMessage()
        message["From"] = "welcome@app.example"
        message["To"] = address
        message["Subject"] = "Confirm your address"
        message.set_content(f"Welcome! Confirm your address: {link}\n")
        message.add_alternative(f'<p>Welcome! <a href="{link}">Confirm</a></p>', subtype="html")
        try:
            with smtplib.SMTP(self.smtp_host, self.smtp_port, timeout=10) as smtp:
                smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as refused:
            code, reply = refused.recipients[address]
            self.bounced[address] = f"{code} {reply.decode()}"
            return
        self.pending[token] = address

    def confirm(self, token: str) -> bool:
        """What the app's `/confirm?token=` page does."""
        address = self.pending.pop(token, None)
        if address is None:
            return False
        self.confirmed.add(address)
        return True


@pytest.fixture
def app(mailrunner_server: InProcessServer) -> SignupApp:
    return SignupApp(mailrunner_server.smtp_host, mailrunner_server.smtp_port)


def test_signing_up_mails_a_link_that_confirms_the_address(
    app: SignupApp, mailbox: Mailbox
) -> None:
    app.sign_up("ada@example.com")

    email = mailbox.wait_for(to="ada@example.com", subject="Confirm your address")
    link = email.links()[0]
    assert link.startswith("https://app.example/confirm?")
    # following the link: the app's confirm page reads the token from it
    assert app.confirm(parse_qs(urlsplit(link).query)["token"][0])
    assert app.confirmed == {"ada@example.com"}


def test_an_address_the_provider_refuses_is_recorded_as_bounced(
    app: SignupApp, mailbox: Mailbox
) -> None:
    mailbox.fail_next(stage="rcpt", match="grace@example.com", reply="550 5.1.1 No such user")

    app.sign_up("grace@example.com")

    assert app.bounced == {"grace@example.com": "550 5.1.1 No such user"}
    assert app.pending == {}
    mailbox.assert_no_messages("to:grace@example.com")
