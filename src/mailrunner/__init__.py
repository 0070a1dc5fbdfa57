"""mailrunner: an SMTP application server that turns every accepted email into an event."""

__version__ = "0.1.0"
