"""The inbox: every accepted message kept in one SQLite file, listed, searched and opened.

`query` parses the one search language the API, the CLI and the web UI share; `message`
turns an EMAIL_RECEIVED event and its raw bytes into what the inbox keeps; `store` keeps it
(`InboxStore`, a blocking API for `asyncio.to_thread`), with `sql` holding its schema and the
translation of a parsed query into SQL.
"""
