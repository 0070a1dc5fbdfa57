"""The `mailrunner` command line."""

from mailrunner.cli.main import main

__all__ = ["main"]
