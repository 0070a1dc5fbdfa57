"""`mailrunner send`: a test email over real SMTP, the way an application would send one."""

from __future__ import annotations

import mimetypes
import smtplib
from collections.abc import Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import click

from mailrunner.cli.common import EXIT_USAGE, config_option, fail, load_or_exit
from mailrunner.config import split_host_port


def build_message(
    sender: str, recipients: Sequence[str], subject: str, body: str, attachments: Sequence[Path]
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = subject
    message.set_content(body)
    for path in attachments:
        kind, _ = mimetypes.guess_type(path.name)
        maintype, _, subtype = (kind or "application/octet-stream").partition("/")
        message.add_attachment(
            path.read_bytes(), maintype=maintype, subtype=subtype, filename=path.name
        )
    return message


FILE = click.Path(path_type=Path, exists=True, dir_okay=False)


@click.command()
@click.option("--smtp", "smtp_addr", default=None, help="HOST:PORT; default: smtp.addr.")
@click.option("--from", "sender", default="sender@example.com", show_default=True)
@click.option("--to", "recipients", multiple=True, default=["recipient@example.com"])
@click.option("--subject", default="mailrunner test", show_default=True)
@click.option("--body", default="Sent by mailrunner send.", show_default=True)
@click.option("--attach", "attachments", multiple=True, type=FILE, help="A file to attach.")
@click.option("--auth-user", default=None)
@click.option("--auth-password", default=None)
@config_option
def send(smtp_addr: str | None, config_path: Path | None, **options: Any) -> None:
    """Send a test email (with optional attachments and AUTH) and print the server's reply."""
    if smtp_addr is None:
        smtp_addr = load_or_exit(config_path)[0].smtp.addr
    message = build_message(
        options["sender"],
        options["recipients"],
        options["subject"],
        options["body"],
        options["attachments"],
    )
    code, text = _deliver(smtp_addr, message, options["auth_user"], options["auth_password"])
    if code >= 400:
        fail(f"the server refused the message: {code} {text}")
    click.echo(f"{code} {text}")


def _deliver(
    smtp_addr: str, message: EmailMessage, user: str | None, password: str | None
) -> tuple[int, str]:
    """MAIL, RCPT, DATA by hand, to print the server's own reply (it names the event id)."""
    host, port = split_host_port(smtp_addr)
    recipients = [address.strip() for address in str(message["To"]).split(",")]
    try:
        with smtplib.SMTP(host, port, timeout=30) as client:
            client.ehlo("mailrunner-send")
            if user is not None:
                client.login(user, password or "")
            steps = [client.mail(str(message["From"]))]
            steps += [client.rcpt(recipient) for recipient in recipients]
            refused = [(code, reply) for code, reply in steps if code >= 400]
            wire = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
            code, reply = refused[0] if refused else client.data(wire)
    except smtplib.SMTPResponseException as error:
        return error.smtp_code, _text(error.smtp_error)
    except (OSError, smtplib.SMTPException) as error:
        fail(f"cannot talk to SMTP at {smtp_addr}: {error}", EXIT_USAGE)
    return code, _text(reply)


def _text(reply: bytes | str) -> str:
    return reply.decode(errors="replace") if isinstance(reply, bytes) else reply
