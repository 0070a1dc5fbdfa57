"""`python -m mailrunner` runs the command line."""

from mailrunner.cli import main

main()
