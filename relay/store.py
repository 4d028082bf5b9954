"""The queue file: its schema and the synchronous statements run against it.

These functions take a ``sqlite3.Connection``. Inside the relay they run only on the
queue's own connection thread (see ``relay.queue``); the CLI runs the read-only ones
on a connection of its own to inspect a queue file, whether or not a relay has it open.

Schema:
- ``events``: the write-ahead queue, in arrival order (``id``); body is compact JSON.
- ``progress``: one row per destination; ``cursor`` is the last event id it has finished
  (delivered or dead-lettered). An event is deleted once every configured destination's
  cursor has passed it.
- ``dead_letters``: events that were rejected at ingest (``destination`` is NULL) or
  permanently refused by a destination, with the reason and the upstream's answer.
- ``seen``: a 64-bit hash of (writeKey, messageId) for deduplication, with its time.
- ``meta``: counters that outlive restarts (evictions, recoveries).
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 1
HEADROOM_PAGES = 256
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    received_at REAL NOT NULL,
    write_key TEXT NOT NULL,
    message_id TEXT NOT NULL,
    type TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS progress (
    destination TEXT PRIMARY KEY,
    cursor INTEGER NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0,
    dead_lettered INTEGER NOT NULL DEFAULT 0,
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
CREATE INDEX IF NOT EXISTS dead_letters_destination ON dead_letters(destination, id);
CREATE TABLE IF NOT EXISTS seen (h INTEGER PRIMARY KEY, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS seen_at ON seen(at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
"""

Row = tuple[float, str, str, str, bytes]
"""An event as stored: (received_at, write_key, message_id, type, body)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: str
    write_key: str
    body: bytes
    message_id: str | None = None
    received_at: float | None = None
    destination: str | None = None
    status: int | None = None
    response: str | None = None
    attempts: int = 0


def open_read_only(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def prepare(conn: sqlite3.Connection, durability: str, max_bytes: int) -> None:
    """Configure a writable connection and create the schema when the file is new."""
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # takes effect on a new file only
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {'FULL' if durability == 'fsync' else 'NORMAL'}")
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.executescript(SCHEMA)
    conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    # The hard stop: SQLite itself refuses to grow the file past the cap (plus room for
    # the bookkeeping that lets a full queue still record progress and drain).
    conn.execute(f"PRAGMA max_page_count = {max_bytes // page_size + HEADROOM_PAGES}")


def used_bytes(conn: sqlite3.Connection) -> int:
    """Bytes of the file in use (pages not on the free list)."""
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return int((pages - free) * page_size)


def integrity_problem(conn: sqlite3.Connection) -> str | None:
    """None when the file is sound, else what SQLite's quick check reports."""
    rows = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
    return None if rows == ["ok"] else "; ".join(rows[:5])


def dedup_hash(write_key: str, message_id: str) -> int:
    digest = hashlib.blake2b(f"{write_key}\0{message_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def first_sightings(
    conn: sqlite3.Connection, keys: Sequence[tuple[str, str]], now: float
) -> list[bool]:
    """Record each key as seen; True where it was not seen before (inside the transaction)."""
    out = []
    execute = conn.execute
    for write_key, message_id in keys:
        cur = execute("INSERT OR IGNORE INTO seen VALUES (?, ?)", (dedup_hash(write_key, message_id), now))
        out.append(cur.rowcount == 1)
    return out


def insert_events(conn: sqlite3.Connection, rows: Iterable[Row]) -> None:
    conn.executemany(
        "INSERT INTO events (received_at, write_key, message_id, type, body) VALUES (?,?,?,?,?)",
        rows,
    )


def insert_dead_letters(conn: sqlite3.Connection, letters: Iterable[DeadLetter], now: float) -> None:
    conn.executemany(
        "INSERT INTO dead_letters (failed_at, destination, reason, status, response, attempts,"
        " received_at, write_key, message_id, body) VALUES (?,?,?,?,?,?,?,?,?,?)",
        [
            (now, d.destination, d.reason, d.status, d.response, d.attempts, d.received_at,
             d.write_key, d.message_id, d.body)
            for d in letters
        ],
    )


def evict_oldest(conn: sqlite3.Connection, need: int) -> tuple[int, int]:
    """Delete the oldest events until ``need`` bytes are freed; return (events, bytes)."""
    freed = count = 0
    last_id = None
    for event_id, size in conn.execute("SELECT id, length(body) FROM events ORDER BY id"):
        last_id = event_id
        freed += size
        count += 1
        if freed >= need:
            break
    if last_id is not None:
        conn.execute("DELETE FROM events WHERE id <= ?", (last_id,))
        bump_meta(conn, "evicted_events", count)
    return count, freed


def bump_meta(conn: sqlite3.Connection, key: str, by: int) -> None:
    conn.execute(
        "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = value + ?",
        (key, by, by),
    )


def meta_int(conn: sqlite3.Connection, key: str) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row else 0


def status(conn: sqlite3.Connection, now: float | None = None) -> dict[str, Any]:
    """The figures ``relay status`` prints, read from the file."""
    now = time.time() if now is None else now
    count, size, oldest = conn.execute(
        "SELECT count(*), coalesce(sum(length(body)), 0), min(received_at) FROM events"
    ).fetchone()
    dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
    return {
        "queue": {
            "events": count,
            "bytes": size,
            "file_bytes": used_bytes(conn),
            "oldest_age_s": round(max(0.0, now - oldest), 3) if oldest is not None else 0.0,
            "evicted_events": meta_int(conn, "evicted_events"),
        },
        "dead_letter": {"events": dead},
    }
