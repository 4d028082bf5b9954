"""A queue file as version 1 of the relay wrote it (one ``events`` row per event), built
from that version's schema, for the tests of the migration to a row per request."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at REAL NOT NULL,
    write_key TEXT NOT NULL,
    message_id TEXT NOT NULL,
    type TEXT NOT NULL,
    body BLOB NOT NULL,
    target TEXT
);
CREATE TABLE IF NOT EXISTS progress (
    destination TEXT PRIMARY KEY,
    cursor INTEGER NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0,
    dead_lettered INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'ok',
    last_error TEXT,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    failed_at REAL NOT NULL,
    destination TEXT,
    reason TEXT NOT NULL,
    status INTEGER,
    response TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    received_at REAL,
    write_key TEXT NOT NULL,
    message_id TEXT,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_target ON events(target) WHERE target IS NOT NULL;
CREATE INDEX IF NOT EXISTS dead_letters_destination ON dead_letters(destination, id);
CREATE TABLE IF NOT EXISTS seen (h INTEGER PRIMARY KEY, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS seen_at ON seen(at);
CREATE TABLE IF NOT EXISTS seen_log (h INTEGER NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS done_ranges (
    destination TEXT NOT NULL,
    first_id INTEGER NOT NULL,
    last_id INTEGER NOT NULL,
    PRIMARY KEY (destination, first_id)
) WITHOUT ROWID;
"""


def legacy_hash(write_key: str, message_id: str) -> int:
    digest = hashlib.blake2b(f"{write_key}\0{message_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def build(path: Path, events: Sequence[tuple[float, str, str, str, bytes, str | None]],
          cursors: dict[str, int] | None = None, seen: Sequence[tuple[str, str, float]] = (),
          logged: Sequence[tuple[str, str, float]] = ()) -> Path:
    """A version 1 file: ``events`` (received_at, write_key, message_id, type, body, target)
    with ids from 1, the destinations' cursors, and dedup sightings (write_key, messageId,
    time) in its old generation (``seen``) and its log (``seen_log``)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(SCHEMA)
    conn.execute("INSERT INTO meta VALUES ('schema_version', 1)")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO events (received_at, write_key, message_id, type, body, target)"
                     " VALUES (?,?,?,?,?,?)", events)
    for name, cursor in (cursors or {}).items():
        conn.execute("INSERT INTO progress (destination, cursor, updated_at) VALUES (?, ?, 0)",
                     (name, cursor))
    conn.executemany("INSERT INTO seen VALUES (?, ?)", [(legacy_hash(k, m), at) for k, m, at in seen])
    conn.executemany("INSERT INTO seen_log VALUES (?, ?)", [(legacy_hash(k, m), at) for k, m, at in logged])
    conn.execute("COMMIT")
    conn.close()
    return path
