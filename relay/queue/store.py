"""The queue file: its schema and the synchronous statements run against it.

These functions take a ``sqlite3.Connection``. Inside the relay they run only on the
queue's own connection (see ``relay.queue``); the CLI runs the read-only ones on a
connection of its own to inspect a queue file, whether or not a relay has it open.

Schema (version 2):
- ``batches``: the write-ahead queue, one row per request (``relay.queue.batches``): its
  events' bodies stored once, compressed when that pays, and their index. The row's key
  ``first`` is the id of its first event; its events are ``first`` .. ``first + count -
  1``. Event ids are never reused (the last one given is also kept in ``meta``) and rows
  are deleted only from the front, so the ids in the table are contiguous. ``target`` is
  NULL (every destination) or the one destination a replayed dead letter is for.
- ``progress``: one row per destination; ``cursor`` is the last event id it has finished
  (delivered or dead-lettered). A row is deleted once every configured destination's
  cursor has passed its last event.
- ``dead_letters``: events that were rejected at ingest (``destination`` is NULL) or
  permanently refused by a destination, with the reason and the upstream's answer.
- ``sightings_log``, ``sighting_runs`` (with ``sighting_run_info``) and ``sightings``:
  dedup memory in two generations (see ``relay.queue.sightings``); ``seen`` is the old
  generation of a version 1 file, read until it ages out.
- ``done_ranges``: batches a destination finished beyond its cursor when a clean stop came
  while an earlier batch was still unfinished (``concurrency > 1``); skipped after a
  restart, and forgotten once the cursor passes them.
- ``meta``: counters that outlive restarts (evictions, recoveries, the last event id).

A version 1 file (one ``events`` row per event) is migrated by the relay that opens it
(``migrate``, called by the queue while it holds the file's lock): its events keep their
ids, so every cursor stays valid.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from relay.queue import batches
from relay.queue.batches import Packed
from relay.types import (
    DESTINATION_STATES,
    DeadLetter,
    DeadLetterFigures,
    DestinationStatus,
    Live,
    QueueFigures,
    StatusReport,
    Stored,
)

SCHEMA_VERSION = 2
MIGRATE_CHUNK = 20_000  # version 1 events moved per transaction
HEADROOM_PAGES = 256
WAL_SIZE_LIMIT = 64 * 1024 * 1024
PAGE_CACHE_KIB = 4 * 1024
WAL_BACKSTOP_PAGES = 16384
SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    first INTEGER PRIMARY KEY,
    count INTEGER NOT NULL,
    received_at REAL NOT NULL,
    write_key TEXT NOT NULL,
    target TEXT,
    codec INTEGER NOT NULL,
    ids BLOB NOT NULL,
    body BLOB NOT NULL
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
CREATE INDEX IF NOT EXISTS batches_target ON batches(target) WHERE target IS NOT NULL;
CREATE INDEX IF NOT EXISTS dead_letters_destination ON dead_letters(destination, id);
CREATE TABLE IF NOT EXISTS sightings (h INTEGER PRIMARY KEY, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS sightings_at ON sightings(at);
CREATE TABLE IF NOT EXISTS sightings_log (at REAL NOT NULL, hashes BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS sighting_runs (
    run INTEGER NOT NULL, h INTEGER NOT NULL, at REAL NOT NULL, PRIMARY KEY (run, h)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sighting_run_info (
    run INTEGER PRIMARY KEY, level INTEGER NOT NULL, newest REAL NOT NULL, rows INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS done_ranges (
    destination TEXT NOT NULL,
    first_id INTEGER NOT NULL,
    last_id INTEGER NOT NULL,
    PRIMARY KEY (destination, first_id)
) WITHOUT ROWID;
"""
BATCH_COLUMNS = "first, count, received_at, write_key, target, codec, ids, body"


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


def last_event_id(conn: sqlite3.Connection) -> int:
    """The last event id ever given in this file (0 for none): the newest row's last event,
    or what ``meta`` remembers once every row has been deleted."""
    row = conn.execute("SELECT first + count - 1 FROM batches"
                       " WHERE first = (SELECT max(first) FROM batches)").fetchone()
    return max(int(row[0]) if row else 0, meta_int(conn, "last_event_id"))


def insert_batches(conn: sqlite3.Connection, rows: Sequence[Packed]) -> list[int]:
    """Insert rows (inside the caller's transaction), giving their events the next ids;
    return each row's first id."""
    if not rows:
        return []
    at = last_event_id(conn) + 1
    firsts: list[int] = []
    values = []
    for r in rows:
        firsts.append(at)
        values.append((at, r.events, r.received_at, r.write_key, r.target, r.codec, r.ids, r.body))
        at += r.events
    conn.executemany(f"INSERT INTO batches ({BATCH_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)", values)
    conn.execute("INSERT INTO meta VALUES ('last_event_id', ?1)"
                 " ON CONFLICT(key) DO UPDATE SET value = ?1", (at - 1,))
    return firsts


def insert_events(conn: sqlite3.Connection, rows: Iterable[tuple[Any, ...]]) -> int:
    """Events one by one (recovered or replayed ones): (received_at, write_key, message_id,
    type, body[, target]), target NULL (every destination) when left out. Consecutive
    events that share their arrival and target share a row. Returns how many were inserted."""
    events = [(0, *row) if len(row) > 5 else (0, *row, None) for row in rows]
    insert_batches(conn, [_pack(run) for run in _runs(events, contiguous=False)])
    return len(events)


def _pack(run: Sequence[tuple[Any, ...]]) -> Packed:
    """One row for a run of (id, received_at, write_key, message_id, type, body, target)."""
    _, received_at, write_key, *_, target = run[0]
    return batches.pack(received_at, write_key, [r[3] for r in run], [r[4] for r in run],
                        [bytes(r[5]) for r in run], target)


def insert_recovered(conn: sqlite3.Connection, rows: Iterable[tuple[Any, ...]]) -> None:
    """Events salvaged from a damaged file: (received_at, write_key, message_id, type, body,
    target), target NULL for every destination."""
    insert_events(conn, rows)


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
    """Delete the oldest rows until ``need`` bytes are freed; return (events, bytes)."""
    freed = count = 0
    last_first = None
    for first, events, size in conn.execute(
            "SELECT first, count, length(body) + length(ids) FROM batches ORDER BY first"):
        last_first = first
        freed += size
        count += events
        if freed >= need:
            break
    if last_first is not None:
        conn.execute("DELETE FROM batches WHERE first <= ?", (last_first,))
        bump_meta(conn, "evicted_events", count)
    return count, freed


def delete_through(conn: sqlite3.Connection, through: int) -> None:
    """Delete the rows whose every event has an id at most ``through``."""
    conn.execute("DELETE FROM batches WHERE first <= ?1 AND first + count - 1 <= ?1", (through,))


def is_empty(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM batches LIMIT 1").fetchone() is None


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
    """(first, last) event id in the queue, (0, 0) when empty. Ids are contiguous (rows are
    only ever appended and deleted from the front), so the count is ``last - first + 1``:
    no scan, whatever the backlog."""
    row = conn.execute("SELECT (SELECT min(first) FROM batches), (SELECT first + count - 1 FROM batches"
                       " WHERE first = (SELECT max(first) FROM batches))").fetchone()
    return (row[0] or 0, row[1] or 0)


def _row_with(conn: sqlite3.Connection, event_id: int, columns: str) -> tuple[Any, ...] | None:
    """The row that holds ``event_id`` or, when none does, the first row after it."""
    row = conn.execute(f"SELECT first, count, {columns} FROM batches WHERE first <= ?"
                       " ORDER BY first DESC LIMIT 1", (event_id,)).fetchone()
    if row is not None and row[0] + row[1] - 1 >= event_id:
        return tuple(row)
    row = conn.execute(f"SELECT first, count, {columns} FROM batches WHERE first > ?"
                       " ORDER BY first LIMIT 1", (event_id,)).fetchone()
    return tuple(row) if row is not None else None


def _received_after(conn: sqlite3.Connection, after: int) -> float | None:
    row = _row_with(conn, after + 1, "received_at")
    return float(row[2]) if row else None


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
    first = conn.execute("SELECT min(first) FROM batches").fetchone()[0]
    start = first - 1 if first is not None else last_event_id(conn)
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
    return _read(conn, None, after, limit, last_event_id(conn))


def queued(conn: sqlite3.Connection) -> Iterator[tuple[Stored, str | None]]:
    """Every queued event with its target (None: every destination), oldest first, a row
    at a time (how tests and benchmarks look into a file)."""
    for first, received_at, write_key, target, codec, ids, body in conn.execute(
            "SELECT first, received_at, write_key, target, codec, ids, body"
            " FROM main.batches ORDER BY first"):
        for event in batches.unpack(first, received_at, write_key, ids, body, codec):
            yield event, target


def _read(conn: sqlite3.Connection, destination: str | None, after: int, limit: int,
          top: int) -> list[Stored]:
    """Events after ``after`` up to ``top`` (for ``destination`` only, when named)."""
    start = _row_with(conn, after + 1, "first")
    if start is None or limit <= 0:
        return []
    events: list[Stored] = []
    rows = conn.execute(
        "SELECT first, received_at, write_key, target, codec, ids, body FROM batches"
        " WHERE first >= ? AND first <= ? ORDER BY first", (start[0], top))
    # a row at a time: one row may hold thousands of events, and only ``limit`` of them are wanted
    for first, received_at, write_key, target, codec, ids, body in rows:
        if destination is not None and target is not None and target != destination:
            continue
        events += batches.unpack(first, received_at, write_key, ids, body, codec, after,
                                 limit - len(events))
        if len(events) >= limit:
            break
    rows.close()
    return events  # a row is inserted whole: every event of a row at or below ``top`` is too


def cursor_of(conn: sqlite3.Connection, destination: str) -> int | None:
    row = conn.execute("SELECT cursor FROM progress WHERE destination = ?", (destination,)).fetchone()
    return int(row[0]) if row else None


def read_for(conn: sqlite3.Connection, destination: str, after: int,
             limit: int) -> tuple[list[Stored], int]:
    """Up to ``limit`` events after ``after`` that ``destination`` reads, and the id it has
    read through: the last one returned, or, when fewer came back, the newest event at the
    time of reading (what lies between is only for other destinations: replayed dead
    letters), so that its cursor can pass events it will never read."""
    top = last_event_id(conn)
    events = _read(conn, destination, after, limit, top)
    through = events[-1].id if len(events) == limit else max(top, after)
    return events, through


def record_progress(
    conn: sqlite3.Connection,
    destination: str,
    cursor: int,
    delivered: int,
    dead: Sequence[DeadLetter],
    through: int,
    now: float,
) -> None:
    """One transaction: the destination's dead letters, its cursor and counts, and the
    deletion of events every configured destination has finished."""
    with transaction(conn):
        _count_finished(conn, destination, delivered, dead, now, cursor)
        if through > 0:
            delete_through(conn, through)
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
        "SELECT coalesce(sum(count), 0) FROM batches INDEXED BY batches_target"
        " WHERE target IS NOT NULL AND target != ? AND first > ?", (live.name, cursor)
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


# --- a version 1 file -----------------------------------------------------------------------


def migrate(conn: sqlite3.Connection) -> int:
    """Move a version 1 file's events (one row each) into ``batches``, keeping their ids,
    so that every destination's cursor, done range and dead letter still means what it
    meant. Runs in transactions of ``MIGRATE_CHUNK`` events: a migration cut short by a
    crash goes on from where it stopped at the next start. Its dedup memory is kept as
    the legacy generation (``seen``). Returns the events moved."""
    if not has_table(conn, "events"):
        return 0
    moved = 0
    seq_row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    sequence = int(seq_row[0]) if seq_row else 0
    while True:
        with transaction(conn):
            rows = conn.execute("SELECT id, received_at, write_key, message_id, type, body, target"
                                " FROM events ORDER BY id LIMIT ?", (MIGRATE_CHUNK,)).fetchall()
            if not rows:
                last = max(sequence, meta_int(conn, "last_event_id"))
                conn.execute("INSERT INTO meta VALUES ('last_event_id', ?1)"
                             " ON CONFLICT(key) DO UPDATE SET value = max(value, ?1)", (last,))
                conn.execute("DROP TABLE events")
                _fold_legacy_sightings(conn)
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?1)"
                             " ON CONFLICT(key) DO UPDATE SET value = ?1", (SCHEMA_VERSION,))
                return moved
            values = []
            for run in _runs(rows):
                packed, first = _pack(run), run[0][0]
                values.append((first, packed.events, packed.received_at, packed.write_key, packed.target,
                               packed.codec, packed.ids, packed.body))
            conn.executemany(f"INSERT INTO batches ({BATCH_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)", values)
            conn.execute("DELETE FROM events WHERE id <= ?", (rows[-1][0],))
            moved += len(rows)


def _runs(rows: Sequence[tuple[Any, ...]], contiguous: bool = True) -> Iterator[list[tuple[Any, ...]]]:
    """Consecutive events (id, received_at, write_key, message_id, type, body, target) with
    the same arrival and target (and, when ``contiguous``, ids that follow each other), at
    most a row's worth."""
    run: list[tuple[Any, ...]] = []
    for row in rows:
        if run and ((contiguous and row[0] != run[-1][0] + 1)
                    or (row[1], row[2], row[6]) != (run[0][1], run[0][2], run[0][6])
                    or len(run) >= batches.MAX_EVENTS):
            yield run
            run = []
        run.append(row)
    if run:
        yield run


def needs_migration(conn: sqlite3.Connection) -> bool:
    """Whether the file is of version 1 (or a migration of it was cut short)."""
    return has_table(conn, "events")


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                        (name,)).fetchone() is not None


def _fold_legacy_sightings(conn: sqlite3.Connection) -> None:
    """A version 1 file's dedup memory, all of it into its ``seen`` table (hashed as version
    1 hashed), which the relay keeps reading until its entries age out of the window."""
    if not has_table(conn, "seen"):
        return
    for name in ("seen_log", "seen_recent"):
        if has_table(conn, name):
            conn.execute(f"INSERT INTO seen (h, at) SELECT h, at FROM {name} WHERE true ORDER BY h"
                         " ON CONFLICT(h) DO UPDATE SET at = max(at, excluded.at)")
            conn.execute(f"DROP TABLE {name}")
