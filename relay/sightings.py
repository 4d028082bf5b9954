"""Dedup memory: which (writeKey, messageId) the queue has seen, and when.

A 64-bit hash of the pair is kept in two generations in the queue file: new sightings go
to the small ``seen_recent`` table, which is merged into the large ``seen`` table in key
order now and then (``rotate_sightings``), so that a commit dirties few pages whatever
the size of the window. Like ``relay.store``, these functions take the queue's
connection and run on its thread.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence

from relay.store import transaction


def dedup_hash(write_key: str, message_id: str) -> int:
    digest = hashlib.blake2b(f"{write_key}\0{message_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def first_sightings(
    conn: sqlite3.Connection, keys: Sequence[tuple[str, str]], now: float, window: float = 0
) -> list[bool]:
    """Record each key as seen; True where it was not seen before (inside the transaction),
    or, when ``window`` is set, was last seen more than ``window`` seconds ago. Set-based:
    the group's keys go to a temporary table and are looked up and recorded in three
    statements; new sightings land in the small ``seen_recent`` generation."""
    cutoff = now - window if window else float("-inf")
    hashes = [dedup_hash(write_key, message_id) for write_key, message_id in keys]
    conn.execute("DELETE FROM temp.incoming")
    conn.executemany("INSERT INTO temp.incoming VALUES (?, ?)", enumerate(hashes))
    repeated = {i for (i,) in conn.execute(
        "SELECT i FROM temp.incoming AS n"
        " WHERE EXISTS (SELECT 1 FROM seen_recent AS r WHERE r.h = n.h AND r.at >= ?1)"
        " OR EXISTS (SELECT 1 FROM seen AS s WHERE s.h = n.h AND s.at >= ?1)", (cutoff,))}
    conn.execute(
        "INSERT INTO seen_recent (h, at) SELECT h, ?1 FROM temp.incoming WHERE true"
        " ON CONFLICT(h) DO UPDATE SET at = excluded.at WHERE at < ?2", (now, cutoff))
    out: list[bool] = []
    in_group: set[int] = set()
    for i, h in enumerate(hashes):
        out.append(i not in repeated and h not in in_group)  # the first of a repeat inside the group wins
        in_group.add(h)
    return out


def recent_sightings(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM seen_recent").fetchone()[0])


def rotate_sightings(conn: sqlite3.Connection) -> int:
    """Move the recent generation into the old one in key order, in one transaction: each
    page of the old table is written once per rotation, not once per commit."""
    with transaction(conn):
        moved = conn.execute(
            "INSERT INTO seen (h, at) SELECT h, at FROM seen_recent WHERE true ORDER BY h"
            " ON CONFLICT(h) DO UPDATE SET at = max(at, excluded.at)").rowcount
        conn.execute("DELETE FROM seen_recent")
    return int(moved)


def forget_oldest_sightings(conn: sqlite3.Connection, count: int) -> int:
    forgotten = conn.execute(
        "DELETE FROM seen WHERE h IN (SELECT h FROM seen ORDER BY at LIMIT ?)", (count,)
    ).rowcount
    if forgotten < count:
        forgotten += conn.execute(
            "DELETE FROM seen_recent WHERE h IN (SELECT h FROM seen_recent ORDER BY at LIMIT ?)",
            (count - forgotten,),
        ).rowcount
    return int(forgotten)


def forget_sightings_before(conn: sqlite3.Connection, cutoff: float, chunk: int) -> int:
    """Drop sightings older than ``cutoff`` (the old generation in chunks, by its time index)."""
    total = conn.execute("DELETE FROM seen_recent WHERE at < ?", (cutoff,)).rowcount
    while True:
        deleted = conn.execute(
            "DELETE FROM seen WHERE h IN (SELECT h FROM seen WHERE at < ? LIMIT ?)", (cutoff, chunk)
        ).rowcount
        total += deleted
        if deleted < chunk:
            return int(total)
