"""The tests' harness: servers, processes, brokers, waits and sample mail.

`tests/conftest.py` keeps only pytest's markers, profiles and fixtures; what a test module
imports lives here, one module per concern.
"""
