"""Every SMTP reply mailrunner sends, by name, with its RFC 3463 enhanced status code.

aiosmtpd hard-codes a few texts without enhanced codes; `REWRITES` maps those to ours so a
client always sees one vocabulary.
"""

from __future__ import annotations

import re

from mailrunner.wire.hooks import WRONG_CREDENTIALS, Reply

_UNPRINTABLE = re.compile(r"[^\t\x20-\x7e]")

R221_BYE = "221 2.0.0 Bye"
R250_SENDER_OK = "250 2.1.0 Sender OK"
R250_RECIPIENT_OK = "250 2.1.5 Recipient OK"
R421_TIMEOUT = "421 4.4.2 {hostname} Error: timeout exceeded, closing connection"
R421_SESSION_TOO_LONG = "421 4.4.2 {hostname} Error: session too long, closing connection"
R421_TOO_MANY_CONNECTIONS = "421 4.7.0 {hostname} Too many connections, try again later"
R421_SHUTTING_DOWN = "421 4.3.2 {hostname} Service shutting down, try again later"
R421_CLOSED_BY_ADMIN = "421 4.7.0 {hostname} Connection closed by the administrator"
TEMPORARY_FAILURE = Reply(451, "4.3.0", "Temporary failure, try again later")
"""What a failed hook answers (unless `smtp.hooks_on_error: accept`), as every failure does."""
R451_TEMP = TEMPORARY_FAILURE.line
R452_TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
R501_BAD_HELO = "501 5.5.4 Invalid domain name: control characters are not allowed"
R553_BAD_ADDRESS = "553 5.1.3 Invalid address: control characters are not allowed"
R501_AUTH_BASE64 = "501 5.5.2 Cannot decode base64"
R501_AUTH_SPLIT = "501 5.5.2 Cannot split AUTH PLAIN value"
R502_AUTH_OFF = "502 5.5.1 AUTH not available"
R501_AUTH_ABORTED = "501 5.7.0 Auth aborted"
R501_AUTH_TOO_LONG = "501 5.5.2 AUTH response line too long"
R503_AUTH_AGAIN = "503 5.5.1 Already authenticated"
R503_AUTH_IN_TRANSACTION = "503 5.5.1 AUTH not permitted during a mail transaction"
"""RFC 4954 4: a message's envelope is accepted as one client, never partly as another."""
R530_AUTH_REQUIRED = "530 5.7.0 Authentication required"
"""RFC 4954 6; aiosmtpd's text exactly (its check_auth_needed sends it for MAIL, RCPT, DATA)."""
R535_AUTH_INVALID = WRONG_CREDENTIALS.line
R454_AUTH_BUSY = "454 4.7.0 Temporary authentication failure, try again later"
"""RFC 4954 6: too many credential checks are waiting."""
R538_AUTH_NEEDS_TLS = "538 5.7.11 Encryption required for requested authentication mechanism"
R421_AUTH_FAILURES = "421 4.7.0 {hostname} Too many failed authentications, try again later"
R552_TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
R500_LINE_TOO_LONG = "500 5.5.2 Line too long: at most 1000 bytes per line (RFC 5321 4.5.3.1.6)"
R452_NO_STORAGE = "452 4.3.1 Insufficient system storage"
R421_TOO_MANY_FROM_ADDRESS = (
    "421 4.7.0 {hostname} Too many connections from your address, try again later"
)
# DATA's own texts as aiosmtpd words them (mailrunner reads DATA itself, clients see no change)
R530_STARTTLS_FIRST = "530 Must issue a STARTTLS command first"
"""aiosmtpd's text exactly (RFC 3207 4), sent by `MailrunnerSMTP` in its place."""
R354_DATA = "354 End data with <CR><LF>.<CR><LF>"
R501_DATA_SYNTAX = "501 Syntax: DATA"
R503_NEED_RCPT = "503 Error: need RCPT command"
# BDAT (RFC 3030)
R501_BDAT_SYNTAX = "501 5.5.4 Syntax: BDAT <size> [LAST]"
R503_DATA_AFTER_BDAT = "503 5.5.1 DATA after BDAT in one transaction: the transaction is reset"
R554_NO_RECIPIENTS = "554 5.5.1 No valid recipients"


def queued(event_id: str) -> str:
    return f"250 2.0.0 OK: queued as {event_id}"


def chunk_received(octets: int) -> str:
    """A BDAT chunk that is not the last one, read and kept."""
    return f"250 2.0.0 {octets} octets received"


REWRITES: dict[str, str] = {
    "552 Error: message size exceeds fixed maximum message size": R552_TOO_BIG,  # MAIL SIZE
    # aiosmtpd's own DATA texts: our chunked reader answers with the rewritten ones already;
    # kept so the differential test's stock reader is judged after the same rewrites
    "552 Error: Too much mail data": R552_TOO_BIG,
    "500 Line too long (see RFC5321 4.5.3.1.6)": R500_LINE_TOO_LONG,
    "221 Bye": R221_BYE,
    "503 Already authenticated": R503_AUTH_AGAIN,
}


def printable(reply: str) -> str:
    """RFC 5321 reply text is printable ASCII; aiosmtpd echoes a client's bytes into some."""
    if reply.isascii() and reply.isprintable():
        return reply
    return _UNPRINTABLE.sub("?", reply)
