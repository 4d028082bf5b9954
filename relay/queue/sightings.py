"""Dedup memory: which (writeKey, messageId) the queue has seen, and when.

A 64-bit hash of the pair is kept in two generations:

- the **recent** generation: every new sighting is appended to ``seen_log`` (a plain rowid
  table, so a commit writes a few sequential pages however random the hashes are) and kept
  in memory, hash -> time, for the lookups;
- the **old** generation: the ``seen`` table, keyed by hash. Now and then the log is merged
  into it in key order, so that each of its pages is written once per rotation rather than
  once per commit. A rotation runs in steps of a few thousand rows between commits
  (``rotate_step``), so that no commit waits for a whole merge: the generation being merged
  is frozen in memory and read beside the new one until its last row is merged.

A lookup asks memory first and SQLite's ``seen`` only for the hashes memory does not hold.
Memory changes only after the transaction that wrote the log committed, so a rolled-back
commit never leaves a sighting behind (its events would otherwise be taken for duplicates
when the client retries). ``Sightings`` is used on the queue connection's thread only; the
relay that owns the queue is the only writer of ``seen_log``; other processes (``relay
recover``) record into ``seen``, which the relay reads on every lookup.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence

from relay.queue.store import transaction


def dedup_hash(write_key: str, message_id: str) -> int:
    digest = hashlib.blake2b(f"{write_key}\0{message_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _json_array(hashes: Sequence[int]) -> str:
    """Hashes as one JSON array, read back by SQLite's json_each: one bound parameter for
    a whole group instead of a row per hash in a temporary table."""
    return "[" + ",".join(map(str, hashes)) + "]"


def seen_in_old_generation(conn: sqlite3.Connection, hashes: Sequence[int], cutoff: float) -> set[int]:
    if not hashes:
        return set()
    return {h for (h,) in conn.execute(
        "SELECT value FROM json_each(?2)"
        " WHERE EXISTS (SELECT 1 FROM seen WHERE seen.h = value AND seen.at >= ?1)",
        (cutoff, _json_array(hashes)))}


def _first_in_group(hashes: Sequence[int], unseen: Sequence[bool]) -> list[bool]:
    """``unseen`` as the answer, except that of a key repeated inside the group only the
    first copy counts as new."""
    out: list[bool] = []
    in_group: set[int] = set()
    for h, new in zip(hashes, unseen, strict=True):
        out.append(new and h not in in_group)
        in_group.add(h)
    return out


class Sightings:
    def __init__(self) -> None:
        self.recent: dict[int, float] = {}
        self.frozen: dict[int, float] = {}  # the generation a rotation is merging
        self.logged = 0  # rows in seen_log: the recent generation's size on disk
        self._staged: list[int] = []
        self._staged_at = 0.0
        self._reload = False  # memory may hold less than the log: read it again before use
        self._forgot = False  # the open transaction deleted sightings
        self._frozen_through = 0  # the frozen generation's last rowid in seen_log
        self._merged_through = 0  # rowids of seen_log up to this one are merged

    def load(self, conn: sqlite3.Connection) -> None:
        """Read the recent generation back into memory (after a restart), first merging the
        generation an older version of the queue kept in ``seen_recent``. Inside the
        caller's transaction when there is one."""
        if conn.in_transaction:
            self._load(conn)
        else:
            with transaction(conn):
                self._load(conn)

    def _load(self, conn: sqlite3.Connection) -> None:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'seen_recent'").fetchone():
            conn.execute(
                "INSERT INTO seen (h, at) SELECT h, at FROM seen_recent WHERE true ORDER BY h"
                " ON CONFLICT(h) DO UPDATE SET at = max(at, excluded.at)")
            conn.execute("DROP TABLE seen_recent")
        self.recent = {int(h): float(at) for h, at in conn.execute(
            "SELECT h, max(at) FROM seen_log GROUP BY h")}
        self.logged = int(conn.execute("SELECT count(*) FROM seen_log").fetchone()[0])
        self.frozen = {}
        self._frozen_through = self._merged_through = 0
        self._staged = []
        self._reload = False

    @property
    def rotating(self) -> bool:
        return self._frozen_through > self._merged_through

    def first_sightings(self, conn: sqlite3.Connection, keys: Sequence[tuple[str, str]], now: float,
                        window: float = 0) -> list[bool]:
        """Record each key as seen (inside the caller's transaction); True where it was not
        seen before or, when ``window`` is set, was last seen more than ``window`` seconds
        ago. The first of a repeat inside ``keys`` wins. Call ``committed`` or
        ``rolled_back`` once the transaction ended."""
        if self._reload:
            self._load(conn)
        cutoff = now - window if window else float("-inf")
        hashes = [dedup_hash(write_key, message_id) for write_key, message_id in keys]
        recent, frozen, never = self.recent, self.frozen, cutoff - 1
        last = [recent.get(h) or frozen.get(h, never) for h in hashes]
        ask = [h for h, at in zip(hashes, last, strict=True) if at < cutoff]
        old = seen_in_old_generation(conn, ask, cutoff)
        conn.execute("INSERT INTO seen_log (h, at) SELECT value, ?1 FROM json_each(?2)",
                     (now, _json_array(hashes)))
        self._staged, self._staged_at = hashes, now
        return _first_in_group(hashes, [at < cutoff and h not in old
                                        for h, at in zip(hashes, last, strict=True)])

    def committed(self) -> None:
        recent, at = self.recent, self._staged_at
        for h in self._staged:
            recent[h] = at
        self.logged += len(self._staged)
        self._staged = []
        self._forgot = False

    def rolled_back(self) -> None:
        """The transaction's sightings never reached the log; anything it forgot is back."""
        self._staged = []
        if self._forgot:
            self._reload, self._forgot = True, False

    def rotate_step(self, conn: sqlite3.Connection, chunk: int) -> int:
        """Merge up to ``chunk`` rows of the log into the old generation, in key order, in a
        transaction of their own; return how many. The first step of a rotation freezes
        the recent generation (what the log holds now); new sightings go to a fresh one."""
        if self._reload:
            self._load(conn)
        if not self.rotating:
            low, high = conn.execute("SELECT min(rowid), max(rowid) FROM seen_log").fetchone()
            if high is None:
                return 0
            self.frozen, self.recent = self.recent, {}
            self._merged_through, self._frozen_through = int(low) - 1, int(high)
        low = self._merged_through
        high = min(low + chunk, self._frozen_through)
        with transaction(conn):
            conn.execute(
                "INSERT INTO seen (h, at) SELECT h, at FROM seen_log WHERE rowid > ?1 AND rowid <= ?2"
                " ORDER BY h ON CONFLICT(h) DO UPDATE SET at = max(at, excluded.at)", (low, high))
            merged = int(conn.execute(
                "DELETE FROM seen_log WHERE rowid > ?1 AND rowid <= ?2", (low, high)).rowcount)
        self._merged_through = high
        self.logged -= merged
        if not self.rotating:
            self.frozen = {}
        return merged

    def rotate(self, conn: sqlite3.Connection, chunk: int = 1 << 62) -> int:
        """A whole rotation: every row the log holds now, merged into the old generation."""
        moved = self.rotate_step(conn, chunk)
        while self.rotating:
            moved += self.rotate_step(conn, chunk)
        return moved

    def forget_oldest(self, conn: sqlite3.Connection, count: int) -> int:
        """Forget about ``count`` of the oldest sightings (old generation first), inside the
        caller's transaction. The memory follows the log: it is read again from it."""
        forgotten = int(conn.execute(
            "DELETE FROM seen WHERE h IN (SELECT h FROM seen ORDER BY at LIMIT ?)", (count,)
        ).rowcount)
        if forgotten < count:
            forgotten += int(conn.execute(
                "DELETE FROM seen_log WHERE rowid IN (SELECT rowid FROM seen_log ORDER BY at LIMIT ?)",
                (count - forgotten,),
            ).rowcount)
            self._reload = self._forgot = True  # memory is read again from the log
        return forgotten

    def forget_before(self, conn: sqlite3.Connection, cutoff: float, chunk: int) -> int:
        """Drop sightings older than ``cutoff`` (the old generation in chunks, by its time index)."""
        total = int(conn.execute("DELETE FROM seen_log WHERE at < ?", (cutoff,)).rowcount)
        if total:
            self.load(conn)  # memory (and a rotation under way) start again from the log
        while True:
            deleted = int(conn.execute(
                "DELETE FROM seen WHERE h IN (SELECT h FROM seen WHERE at < ? LIMIT ?)", (cutoff, chunk)
            ).rowcount)
            total += deleted
            if deleted < chunk:
                return total

    def refresh(self, conn: sqlite3.Connection) -> None:
        """Read the owning relay's recent generation again, outside any transaction (a
        read takes no lock): what another process (``relay recover``) looks up in memory."""
        rows = conn.execute("SELECT h, max(at) FROM seen_log GROUP BY h")
        self.recent = {int(h): float(at) for h, at in rows}
        self.frozen = {}
        self._reload = False

    def record_in_old_generation(self, conn: sqlite3.Connection, keys: Sequence[tuple[str, str]],
                                 now: float) -> list[bool]:
        """``first_sightings`` with no window, for a process other than the relay that owns
        the queue (``relay recover``): the keys are recorded in ``seen``, where the relay
        looks on every lookup, instead of the relay's own log."""
        hashes = [dedup_hash(write_key, message_id) for write_key, message_id in keys]
        if self._reload:
            self._load(conn)
        old = seen_in_old_generation(
            conn, [h for h in hashes if h not in self.recent and h not in self.frozen], float("-inf"))
        conn.execute("INSERT INTO seen (h, at) SELECT value, ?1 FROM json_each(?2) WHERE true"
                     " ON CONFLICT(h) DO UPDATE SET at = max(at, excluded.at)", (now, _json_array(hashes)))
        return _first_in_group(hashes, [h not in self.recent and h not in self.frozen and h not in old
                                        for h in hashes])
