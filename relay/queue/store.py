"""The queue file: its schema and the synchronous statements run against it.

These functions take a ``sqlite3.Connection``. Inside the relay they run only on the
queue's own connection thread (see ``relay.queue``); the CLI runs the read-only ones
on a connection of its own to inspect a queue file, whether or not a relay has it open.

Schema:
- ``events``: the write-ahead queue, in arrival order (``id``, never reused); body is
  compact JSON; ``target`` is NULL (every destination) or the one destination a replayed
  dead letter is for.
- ``progress``: one row per destination; ``cursor`` is the last event id it has finished
  (delivered or dead-lettered). An event is deleted once every configured destination's
  cursor has passed it.
- ``dead_letters``: events that were rejected at ingest (``destination`` is NULL) or
  permanently refused by a destination, with the reason and the upstream's answer.
- ``seen_log`` and ``seen``: dedup memory in two generations (see ``relay.queue.sightings``).
- ``done_ranges``: batches a destination finished beyond its cursor when a clean stop came
  while an earlier batch was still unfinished (``concurrency > 1``); skipped after a
  restart, and forgotten once the cursor passes them.
- ``meta``: counters that outlive restarts (evictions, recoveries).
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from relay.types import (
    DESTINATION_STATES,
    DeadLetter,
    DeadLetterFigures,
    DestinationStatus,
    Live,
    QueueFigures,
    Row,
    StatusReport,
    Stored,
)

SCHEMA_VERSION = 1
HEADROOM_PAGES = 256
WAL_SIZE_LIMIT = 64 * 1024 * 1024
PAGE_CACHE_KIB = 4 * 1024
WAL_BACKSTOP_PAGES = 16384
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

@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error (the connection is in
    autocommit mode, ``isolation_level=None``)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def open_read_only(path: str) -> sqlite3.Connection:
    uri = "file:" + urllib.parse.quote(str(Path(path).resolve())) + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def prepare(conn: sqlite3.Connection, durability: str, max_bytes: int) -> None:
    """Configure a writable connection and create the schema when the file is new."""
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # takes effect on a new file only
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {'FULL' if durability == 'fsync' else 'NORMAL'}")
    conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")  # WAL truncated back after checkpoints
    # the queue checkpoints from a connection of its own; this one checkpoints only as a
    # backstop, when the WAL has grown large
    conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_BACKSTOP_PAGES}")
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute(f"PRAGMA cache_size = -{PAGE_CACHE_KIB}")
    conn.executescript(SCHEMA)
    conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    # The hard stop: SQLite itself refuses to grow the file past the cap (plus room for
    # the bookkeeping that lets a full queue still record progress and drain).
    conn.execute(f"PRAGMA max_page_count = {max_bytes // page_size + HEADROOM_PAGES}")


def prepare_reader(conn: sqlite3.Connection) -> None:
    """A connection that only reads (status): it never takes the write lock."""
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA query_only = ON")
    conn.execute(f"PRAGMA cache_size = -{PAGE_CACHE_KIB}")


def used_bytes(conn: sqlite3.Connection) -> int:
    """Bytes of the file in use (pages not on the free list). One statement: inside the
    writer's transaction it costs no extra lock, which three PRAGMAs outside it did."""
    row = conn.execute("SELECT (c.page_count - f.freelist_count) * s.page_size"
                       " FROM pragma_page_count() AS c, pragma_freelist_count() AS f,"
                       " pragma_page_size() AS s").fetchone()
    return int(row[0])


def integrity_problem(conn: sqlite3.Connection) -> str | None:
    """None when the file is sound, else what SQLite's quick check reports."""
    rows = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
    return None if rows == ["ok"] else "; ".join(rows[:5])


def insert_events(conn: sqlite3.Connection, rows: Iterable[Row]) -> None:
    conn.executemany(
        "INSERT INTO events (received_at, write_key, message_id, type, body) VALUES (?,?,?,?,?)",
        rows,
    )


def insert_recovered(conn: sqlite3.Connection, rows: Iterable[tuple[Any, ...]]) -> None:
    """Events salvaged from a damaged file: (received_at, write_key, message_id, type, body,
    target), target NULL for every destination."""
    conn.executemany(
        "INSERT INTO events (received_at, write_key, message_id, type, body, target) VALUES (?,?,?,?,?,?)",
        rows,
    )


def insert_dead_letter_rows(conn: sqlite3.Connection, rows: Iterable[tuple[Any, ...]]) -> None:
    """Dead letters as another file's table held them, every column but the id."""
    conn.executemany(
        "INSERT INTO dead_letters (failed_at, destination, reason, status, response, attempts,"
        " received_at, write_key, message_id, body) VALUES (?,?,?,?,?,?,?,?,?,?)",
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


def _meta(conn: sqlite3.Connection, key: str) -> Any:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def meta_int(conn: sqlite3.Connection, key: str) -> int:
    return int(_meta(conn, key) or 0)


def id_range(conn: sqlite3.Connection) -> tuple[int, int]:
    """(first, last) id in the events table, (0, 0) when empty. Events are only ever
    appended (ids from AUTOINCREMENT) and deleted from the front, so the ids in the table
    are contiguous and the count is ``last - first + 1``: no scan, whatever the backlog."""
    # one aggregate a query: SQLite answers a lone min() or max() from the index end, both
    # together with a scan
    first, last = conn.execute("SELECT (SELECT min(id) FROM events), (SELECT max(id) FROM events)").fetchone()
    return (first or 0, last or 0)


def _received_after(conn: sqlite3.Connection, after: int) -> float | None:
    row = conn.execute("SELECT received_at FROM events WHERE id > ? ORDER BY id LIMIT 1", (after,)).fetchone()
    return float(row[0]) if row else None


def report(conn: sqlite3.Connection, destinations: Sequence[Live], path: str, max_bytes: int,
           now: float) -> StatusReport:
    """What ``relay status``, ``/status``, the metrics and systemd's STATUS= show, read from
    the file in O(log n) (dead letters aside) and built here alone: ``bytes`` is the file's
    size in use, what ``queue.max_bytes`` caps."""
    first, last = id_range(conn)
    oldest = _received_after(conn, 0)
    dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
    return StatusReport(
        queue=QueueFigures(
            events=last - first + 1 if last else 0,
            bytes=used_bytes(conn),
            oldest_age_s=_age(now, oldest),
            evicted_events=meta_int(conn, "evicted_events"),
            corrupt_files=meta_int(conn, "corrupt_files"),
            last_corrupt_file=_meta(conn, "last_corrupt_file"),
            path=path,
            max_bytes=max_bytes,
        ),
        dead_letter=DeadLetterFigures(events=int(dead)),
        destinations=[destination_status(conn, d, now) for d in destinations],
    )


def _age(now: float, then: float | None) -> float:
    return round(max(0.0, now - then), 3) if then is not None else 0.0


# --- destinations' progress ---------------------------------------------------------------


def register_destinations(conn: sqlite3.Connection, names: Sequence[str], now: float) -> dict[str, int]:
    """Give each new destination a cursor just before the oldest queued event; return all cursors."""
    start = conn.execute(
        "SELECT coalesce((SELECT min(id) FROM events) - 1,"
        " (SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)"
    ).fetchone()[0]
    for name in names:
        conn.execute(
            "INSERT OR IGNORE INTO progress (destination, cursor, updated_at) VALUES (?, ?, ?)",
            (name, start, now),
        )
    rows = conn.execute("SELECT destination, cursor FROM progress").fetchall()
    return {name: cursor for name, cursor in rows if name in names}


def read_after(conn: sqlite3.Connection, destination: str, after: int, limit: int) -> list[Stored]:
    return read_for(conn, destination, after, limit)[0]


def read_all_after(conn: sqlite3.Connection, after: int, limit: int) -> list[Stored]:
    """Up to ``limit`` queued events after ``after``, whoever they are for."""
    rows = conn.execute("SELECT id, received_at, write_key, message_id, type, body FROM events WHERE id > ?"
                        " ORDER BY id LIMIT ?", (after, limit)).fetchall()
    return [Stored(*row) for row in rows]


def cursor_of(conn: sqlite3.Connection, destination: str) -> int | None:
    row = conn.execute("SELECT cursor FROM progress WHERE destination = ?", (destination,)).fetchone()
    return int(row[0]) if row else None


def read_for(conn: sqlite3.Connection, destination: str, after: int,
             limit: int) -> tuple[list[Stored], int]:
    """Up to ``limit`` events after ``after`` that ``destination`` reads, and the id it has
    read through: the last one returned, or, when fewer came back, the newest event at the
    time of reading (what lies between is only for other destinations: replayed dead
    letters), so that its cursor can pass events it will never read."""
    top = conn.execute("SELECT max(id) FROM events").fetchone()[0] or 0
    rows = conn.execute(
        "SELECT id, received_at, write_key, message_id, type, body FROM events"
        " WHERE id > ?1 AND id <= ?2 AND (target IS NULL OR target = ?3) ORDER BY id LIMIT ?4",
        (after, top, destination, limit),
    ).fetchall()
    events = [Stored(*row) for row in rows]
    through = events[-1].id if len(events) == limit else max(top, after)
    return events, through


def record_progress(
    conn: sqlite3.Connection,
    destination: str,
    cursor: int,
    delivered: int,
    dead: Sequence[DeadLetter],
    delete_through: int,
    now: float,
) -> None:
    """One transaction: the destination's dead letters, its cursor and counts, and the
    deletion of events every configured destination has finished."""
    with transaction(conn):
        _count_finished(conn, destination, delivered, dead, now, cursor)
        if delete_through > 0:
            conn.execute("DELETE FROM events WHERE id <= ?", (delete_through,))
        conn.execute("DELETE FROM done_ranges WHERE destination = ? AND last_id <= ?", (destination, cursor))


def record_done_range(
    conn: sqlite3.Connection, destination: str, first: int, last: int, delivered: int,
    dead: Sequence[DeadLetter], now: float,
) -> None:
    """A batch finished beyond the cursor: its dead letters, counts and id range, at once."""
    with transaction(conn):
        _count_finished(conn, destination, delivered, dead, now)
        conn.execute("INSERT OR REPLACE INTO done_ranges VALUES (?, ?, ?)", (destination, first, last))


def _count_finished(conn: sqlite3.Connection, destination: str, delivered: int,
                    dead: Sequence[DeadLetter], now: float, cursor: int | None = None) -> None:
    """A destination's finished events: its dead letters stored, its counts (and, when
    given, its cursor) advanced."""
    if dead:
        insert_dead_letters(conn, dead, now)
    conn.execute(
        "UPDATE progress SET cursor = max(cursor, coalesce(?, cursor)), delivered = delivered + ?,"
        " dead_lettered = dead_lettered + ?, updated_at = ? WHERE destination = ?",
        (cursor, delivered, len(dead), now, destination),
    )


def done_ranges(conn: sqlite3.Connection, destination: str) -> list[tuple[int, int]]:
    rows = conn.execute(
        "SELECT first_id, last_id FROM done_ranges WHERE destination = ? ORDER BY first_id", (destination,)
    ).fetchall()
    return [(int(a), int(b)) for a, b in rows]


def set_state(conn: sqlite3.Connection, destination: str, state: str, last_error: str | None) -> None:
    conn.execute(
        "UPDATE progress SET state = ?, last_error = coalesce(?, last_error) WHERE destination = ?",
        (state, last_error, destination),
    )


def destination_status(conn: sqlite3.Connection, live: Live, now: float) -> DestinationStatus:
    """A destination's figures from the file; its state and last error from the running
    forwarder when there is one (``live.state``), else as last persisted."""
    row = conn.execute(
        "SELECT cursor, delivered, dead_lettered, state, last_error FROM progress WHERE destination = ?",
        (live.name,),
    ).fetchone()
    cursor, delivered, dead, state, last_error = row or (0, 0, 0, "ok", None)
    _, last = id_range(conn)
    # events replayed for other destinations only: read from the partial index on target,
    # never by walking the backlog after the cursor
    others = conn.execute(
        "SELECT count(*) FROM events INDEXED BY events_target"
        " WHERE target IS NOT NULL AND target != ? AND id > ?", (live.name, cursor)
    ).fetchone()[0]
    pending = max(0, last - cursor - others)
    oldest = _received_after(conn, cursor) if pending else None
    return DestinationStatus(
        name=live.name,
        type=live.type,
        pending=pending,
        delivered=delivered,
        dead_lettered=dead,
        state=live.state or (state if state in DESTINATION_STATES else "ok"),
        last_error=live.last_error or last_error,
        oldest_pending_age_s=_age(now, oldest),
    )


def reclaim_space(conn: sqlite3.Connection, keep_free_pages: int = 1024) -> int:
    """Give free pages back to the file system (incremental vacuum); return pages freed."""
    free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    if free <= keep_free_pages:
        return 0
    conn.execute(f"PRAGMA incremental_vacuum({free - keep_free_pages})").fetchall()
    return free - keep_free_pages


def ping(conn: sqlite3.Connection) -> None:
    conn.execute("SELECT 1").fetchone()


def checkpoint(conn: sqlite3.Connection) -> None:
    """Copy the WAL back into the file without waiting for any lock (the next one catches up)."""
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def note_corrupt_file(conn: sqlite3.Connection, moved: str) -> None:
    bump_meta(conn, "corrupt_files", 1)
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('last_corrupt_file', ?)", (moved,))
