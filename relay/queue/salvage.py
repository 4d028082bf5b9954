"""Corrupt queue files: detection at start, moving aside, and salvaging readable rows.

A damaged file is never deleted or repaired in place: it is renamed (with its -wal and
-shm files) to ``<path>.corrupt-<UTC time>`` and a fresh queue starts, so the relay keeps
taking events. ``relay recover FILE`` later reads every row it still can from the old
file, walking the id space in chunks and bisecting around unreadable pages, and adds
them to the live queue (a row whose (writeKey, messageId) the live queue has already
seen is skipped).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from relay.queue import sightings, store

log = logging.getLogger(__name__)

CHUNK = 2000
EMPTY_CHUNKS_BEFORE_END = 5
SIDE_FILES = ("-wal", "-shm")


def problem(path: str) -> str | None:
    """None when ``path`` is absent or a sound SQLite file; else what is wrong with it."""
    if not Path(path).exists() or Path(path).stat().st_size == 0:
        return None
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            return store.integrity_problem(conn)
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return str(exc)


def move_aside(path: str, now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    target = f"{path}.corrupt-{stamp}"
    os.replace(path, target)
    for suffix in SIDE_FILES:
        if Path(path + suffix).exists():
            os.replace(path + suffix, target + suffix)
    return target


def _scan(conn: sqlite3.Connection, sql: str, low: int, high: int) -> list[tuple[Any, ...]] | None:
    try:
        return conn.execute(sql, (low, high)).fetchall()
    except sqlite3.DatabaseError:
        return None


def _chunk(conn: sqlite3.Connection, sql: str, low: int, high: int) -> list[tuple[Any, ...]]:
    """Rows with ``low <= id <= high``. A range scan over a damaged page may fail or quietly
    return less, so a chunk that is not complete is read again one id at a time."""
    rows = _scan(conn, sql, low, high)
    if rows is not None and len(rows) == high - low + 1:
        return rows
    found = {row[0]: row for row in rows or ()}
    point = sql.replace("BETWEEN ? AND ?", "= ?")
    for rowid in range(low, high + 1):
        if rowid not in found:
            try:
                single = conn.execute(point, (rowid,)).fetchone()
            except sqlite3.DatabaseError:
                continue
            if single:
                found[rowid] = single
    return [found[k] for k in sorted(found)]


def _top(conn: sqlite3.Connection, table: str) -> int:
    top = 0
    for sql in (f"SELECT max(id) FROM {table}", f"SELECT seq FROM sqlite_sequence WHERE name = '{table}'"):
        try:
            top = max(top, int(conn.execute(sql).fetchone()[0] or 0))
        except (sqlite3.DatabaseError, TypeError):
            continue
    return top


def _rows(conn: sqlite3.Connection, table: str, columns: str) -> Iterator[tuple[Any, ...]]:
    sql = f"SELECT id, {columns} FROM {table} WHERE id BETWEEN ? AND ? ORDER BY id"
    top = _top(conn, table)
    low, empty = 1, 0
    while True:
        high = low + CHUNK - 1
        found = _chunk(conn, sql, low, high)
        yield from found
        empty = 0 if found else empty + 1
        if high >= top and empty >= EMPTY_CHUNKS_BEFORE_END:
            return
        low = high + 1


def _is_json(body: object) -> bool:
    try:
        msgspec.json.decode(body if isinstance(body, bytes | str) else b"")
    except msgspec.DecodeError:
        return False
    return True


def recover(source: str, live: sqlite3.Connection,
            progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Copy every readable event and dead letter of ``source`` into the live queue."""
    old = sqlite3.connect(f"file:{source}?mode=ro", uri=True, isolation_level=None)
    counts = {"events": 0, "dead_letters": 0, "duplicates": 0, "unreadable": 0}
    try:
        live.execute("BEGIN IMMEDIATE")
        now = time.time()
        seen = sightings.Sightings()
        seen.load(live)
        for row in _rows(old, "events", "received_at, write_key, message_id, type, body"):
            _, received_at, write_key, message_id, kind, body = row
            if not _is_json(body):
                counts["unreadable"] += 1
                continue
            if not seen.record_in_old_generation(live, [(write_key, message_id)], now)[0]:
                counts["duplicates"] += 1
                continue
            store.insert_events(live, [(received_at, write_key, message_id, kind, body)])
            counts["events"] += 1
            if progress:
                progress(1)
        letters = "failed_at, destination, reason, status, response, attempts, received_at, write_key," \
                  " message_id, body"
        for row in _rows(old, "dead_letters", letters):
            live.execute(f"INSERT INTO dead_letters ({letters}) VALUES (?,?,?,?,?,?,?,?,?,?)", row[1:])
            counts["dead_letters"] += 1
        store.bump_meta(live, "recovered_events", counts["events"])
        live.execute("COMMIT")
    except BaseException:
        if live.in_transaction:
            live.execute("ROLLBACK")
        raise
    finally:
        old.close()
    return counts
