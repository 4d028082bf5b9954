"""Reading a queue file in tests as one row per event.

The queue keeps a row per request (``batches``); tests that ask "which events are queued"
read them through ``connect``: a connection to the real file with a TEMP table ``events``
(id, received_at, write_key, message_id, type, body, target) filled from its rows by the
queue's own reader, so a test's SQL can still count, join and filter events.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from relay.queue import store

EVENTS = """
CREATE TEMP TABLE events (
    id INTEGER PRIMARY KEY,
    received_at REAL NOT NULL,
    write_key TEXT NOT NULL,
    message_id TEXT NOT NULL,
    type TEXT NOT NULL,
    body BLOB NOT NULL,
    target TEXT
)
"""


def event_rows(conn: sqlite3.Connection) -> list[tuple[object, ...]]:
    """Every queued event: (id, received_at, write_key, message_id, type, body, target)."""
    return [(*event, target) for event, target in store.queued(conn)]


def with_events(conn: sqlite3.Connection) -> sqlite3.Connection:
    """``conn`` with the TEMP ``events`` table (re)built from the file as it is now."""
    conn.execute("DROP TABLE IF EXISTS temp.events")
    conn.execute(EVENTS)
    conn.executemany("INSERT INTO temp.events VALUES (?,?,?,?,?,?,?)", event_rows(conn))
    return conn


def connect(path: str | Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path))
    conn.execute("PRAGMA busy_timeout = 5000")
    return with_events(conn)
