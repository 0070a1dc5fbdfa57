"""The inbox: every accepted message kept in one SQLite file, listed, searched and opened.

    query      the one search language of the API, the CLI and the web UI → a typed Query
    message    an EMAIL_RECEIVED event and its raw bytes → the StoredMessage the inbox keeps
    html_text  the visible text of an HTML body, so that search finds it
    sql        the schema, and a Query → a WHERE clause (user text only ever bound, quoted)
    store      InboxStore: insert, list/search, open, mark read, delete, retention
    errors     InboxError and its children (locked database, no FTS5, bad query syntax)

The store's methods block; the server calls them through `asyncio.to_thread`.
"""
