"""Dedup memory: which (writeKey, messageId) the queue has seen, and when.

A 64-bit hash of the pair (xxh3, about 0.2 µs) is kept in two generations:

- the **recent** generation: each commit appends one row to ``sightings_log`` holding the
  hashes of all its events (one row per commit, not per event) and keeps them in memory,
  hash -> time, for the lookups;
- the **old** generation: the ``sightings`` table, keyed by hash. Now and then the log is
  merged into it in key order, so that each of its pages is written once per rotation
  rather than once per commit. A rotation runs in steps between commits
  (``rotate_step``), so that no commit waits for a whole merge: the generation being
  merged is frozen in memory and read beside the new one until its last row is merged.

A lookup asks memory first and SQLite's ``sightings`` only for the hashes memory does not
hold. Memory changes only after the transaction that wrote the log committed, so a
rolled-back commit never leaves a sighting behind (its events would otherwise be taken for
duplicates when the client retries). ``Sightings`` is used by the queue's writer only; the
relay that owns the queue is the only writer of ``sightings_log``; other processes (``relay
recover``) record into ``sightings``, which the relay reads on every lookup.

A queue file of version 1 kept its sightings hashed with blake2b in ``seen``: while that
table holds entries inside the window, the keys memory does not know are looked up there
too (hashed as version 1 hashed them); the pruning that ages sightings out drops it once
it is empty.
"""

from __future__ import annotations

import hashlib
import sqlite3
from array import array
from collections.abc import Sequence

import xxhash

from relay.queue import store
from relay.queue.store import transaction

_xxh = xxhash.xxh3_64_intdigest
_SIGN = 1 << 63
ROTATE_ROWS_PER_STEP = 256  # log rows (commits) merged in one rotation step at most


def dedup_hash(write_key: str, message_id: str) -> int:
    """The pair's 64-bit hash, as a signed integer (SQLite's INTEGER)."""
    return hashes_of([(write_key, message_id)])[0]


def hashes_of(keys: Sequence[tuple[str, str]]) -> list[int]:
    """``dedup_hash`` of each pair, in one pass."""
    xxh, sign = _xxh, _SIGN
    return [xxh(f"{write_key}\0{message_id}".encode()) - sign for write_key, message_id in keys]


def legacy_hash(write_key: str, message_id: str) -> int:
    """How a version 1 queue file hashed the pair."""
    digest = hashlib.blake2b(f"{write_key}\0{message_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _json_array(hashes: Sequence[int]) -> str:
    """Hashes as one JSON array, read back by SQLite's json_each: one bound parameter for
    a whole group instead of a row per hash in a temporary table."""
    return "[" + ",".join(map(str, hashes)) + "]"


def _pack(hashes: Sequence[int]) -> bytes:
    return array("q", hashes).tobytes()


def _unpack(blob: bytes) -> array[int]:
    out = array("q")
    out.frombytes(blob)
    return out


def seen_in_old_generation(conn: sqlite3.Connection, hashes: Sequence[int], cutoff: float,
                           table: str = "sightings") -> set[int]:
    if not hashes:
        return set()
    return {h for (h,) in conn.execute(
        f"SELECT value FROM json_each(?2)"
        f" WHERE EXISTS (SELECT 1 FROM {table} WHERE {table}.h = value AND {table}.at >= ?1)",
        (cutoff, _json_array(hashes)))}


def _seen_in_legacy(conn: sqlite3.Connection, keys: Sequence[tuple[str, str]], ask: Sequence[bool],
                    cutoff: float) -> list[bool]:
    """For each key with ``ask`` set: whether a version 1 file's ``seen`` holds it."""
    wanted = {i: legacy_hash(*keys[i]) for i, a in enumerate(ask) if a}
    found = seen_in_old_generation(conn, list(wanted.values()), cutoff, "seen")
    return [i in wanted and wanted[i] in found for i in range(len(keys))]


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
        self.logged = 0  # hashes in sightings_log: the recent generation's size on disk
        self.legacy = False  # a version 1 file's ``seen`` is still read
        self._staged: list[int] = []
        self._staged_at = 0.0
        self._reload = False  # memory may hold less than the log: read it again before use
        self._forgot = False  # the open transaction deleted sightings
        self._frozen_through = 0  # the frozen generation's last rowid in sightings_log
        self._merged_through = 0  # rowids of sightings_log up to this one are merged

    def load(self, conn: sqlite3.Connection) -> None:
        """Read the recent generation back into memory (after a restart). Inside the
        caller's transaction when there is one."""
        if conn.in_transaction:
            self._load(conn)
        else:
            with transaction(conn):
                self._load(conn)

    def _load(self, conn: sqlite3.Connection) -> None:
        self.recent, self.logged = _read_log(conn)
        self.legacy = store.has_table(conn, "seen")
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
        hashes = hashes_of(keys)
        recent, frozen, never = self.recent, self.frozen, cutoff - 1
        last = [recent.get(h) or frozen.get(h, never) for h in hashes]
        ask = [h for h, at in zip(hashes, last, strict=True) if at < cutoff]
        old = seen_in_old_generation(conn, ask, cutoff)
        unseen = [at < cutoff and h not in old for h, at in zip(hashes, last, strict=True)]
        if self.legacy and any(unseen):
            in_legacy = _seen_in_legacy(conn, keys, unseen, cutoff)
            unseen = [new and not found for new, found in zip(unseen, in_legacy, strict=True)]
        conn.execute("INSERT INTO sightings_log (at, hashes) VALUES (?, ?)", (now, _pack(hashes)))
        self._staged, self._staged_at = hashes, now
        return _first_in_group(hashes, unseen)

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
        """Merge about ``chunk`` hashes of the log into the old generation, in key order, in
        a transaction of their own; return how many. The first step of a rotation freezes
        the recent generation (what the log holds now); new sightings go to a fresh one."""
        if self._reload:
            self._load(conn)
        if not self.rotating:
            low, high = conn.execute("SELECT min(rowid), max(rowid) FROM sightings_log").fetchone()
            if high is None:
                return 0
            self.frozen, self.recent = self.recent, {}
            self._merged_through, self._frozen_through = int(low) - 1, int(high)
        merged = 0
        with transaction(conn):
            rows = conn.execute(
                "SELECT rowid, at, hashes FROM sightings_log WHERE rowid > ?1 AND rowid <= ?2 ORDER BY rowid"
                " LIMIT ?3", (self._merged_through, self._frozen_through, ROTATE_ROWS_PER_STEP)).fetchall()
            hashes: list[int] = []
            newest = 0.0
            through = self._frozen_through
            for rowid, at, blob in rows:
                hashes += _unpack(blob)
                newest = max(newest, at)
                through = int(rowid)
                if len(hashes) >= chunk:
                    break
            merged = len(hashes)
            # one statement for the step, in key order; every hash of it takes the step's
            # newest time (a few seconds later at most: the window is not shortened)
            conn.execute("INSERT INTO sightings (h, at) SELECT value, ?1 FROM json_each(?2) WHERE true"
                         " ON CONFLICT(h) DO UPDATE SET at = max(at, excluded.at)",
                         (newest, _json_array(sorted(set(hashes)))))  # in key order already
            if not rows or (len(rows) < ROTATE_ROWS_PER_STEP and merged < chunk):
                through = self._frozen_through
            conn.execute("DELETE FROM sightings_log WHERE rowid > ?1 AND rowid <= ?2",
                         (self._merged_through, through))
        self._merged_through = through
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
        """Forget about ``count`` of the oldest sightings (the legacy and old generations
        first), inside the caller's transaction. The memory follows the log: it is read
        again from it."""
        forgotten = 0
        if self.legacy:
            forgotten += int(conn.execute(
                "DELETE FROM seen WHERE h IN (SELECT h FROM seen ORDER BY at LIMIT ?)", (count,)).rowcount)
        if forgotten < count:
            forgotten += int(conn.execute(
                "DELETE FROM sightings WHERE h IN (SELECT h FROM sightings ORDER BY at LIMIT ?)",
                (count - forgotten,)).rowcount)
        if forgotten < count:
            dropped = 0
            rows = conn.execute("SELECT rowid, hashes FROM sightings_log ORDER BY rowid").fetchall()
            for rowid, blob in rows:
                conn.execute("DELETE FROM sightings_log WHERE rowid = ?", (rowid,))
                dropped += len(blob) // 8
                if forgotten + dropped >= count:
                    break
            forgotten += dropped
            self._reload = self._forgot = True  # memory is read again from the log
        return forgotten

    def forget_before(self, conn: sqlite3.Connection, cutoff: float, chunk: int) -> int:
        """Drop sightings older than ``cutoff`` (the old generations in chunks, by their time
        index; a version 1 file's ``seen`` dropped once empty)."""
        total = 0
        for (blob,) in conn.execute("SELECT hashes FROM sightings_log WHERE at < ?", (cutoff,)):
            total += len(blob) // 8
        if total:
            conn.execute("DELETE FROM sightings_log WHERE at < ?", (cutoff,))
            self.load(conn)  # memory (and a rotation under way) start again from the log
        tables = ["sightings", "seen"] if self.legacy else ["sightings"]
        for table in tables:
            while True:
                deleted = int(conn.execute(
                    f"DELETE FROM {table} WHERE h IN (SELECT h FROM {table} WHERE at < ? LIMIT ?)",
                    (cutoff, chunk)).rowcount)
                total += deleted
                if deleted < chunk:
                    break
        if self.legacy and conn.execute("SELECT 1 FROM seen LIMIT 1").fetchone() is None:
            conn.execute("DROP TABLE seen")
            self.legacy = False
        return total

    def refresh(self, conn: sqlite3.Connection) -> None:
        """Read the owning relay's recent generation again, outside any transaction (a
        read takes no lock): what another process (``relay recover``) looks up in memory."""
        self.recent, _ = _read_log(conn)
        self.legacy = store.has_table(conn, "seen")
        self.frozen = {}
        self._reload = False

    def record_in_old_generation(self, conn: sqlite3.Connection, keys: Sequence[tuple[str, str]],
                                 now: float) -> list[bool]:
        """``first_sightings`` with no window, for a process other than the relay that owns
        the queue (``relay recover``): the keys are recorded in ``sightings``, where the
        relay looks on every lookup, instead of the relay's own log."""
        hashes = hashes_of(keys)
        if self._reload:
            self._load(conn)
        old = seen_in_old_generation(
            conn, [h for h in hashes if h not in self.recent and h not in self.frozen], float("-inf"))
        unseen = [h not in self.recent and h not in self.frozen and h not in old for h in hashes]
        if self.legacy and any(unseen):
            in_legacy = _seen_in_legacy(conn, keys, unseen, float("-inf"))
            unseen = [new and not found for new, found in zip(unseen, in_legacy, strict=True)]
        conn.executemany("INSERT INTO sightings (h, at) VALUES (?, ?) ON CONFLICT(h)"
                         " DO UPDATE SET at = max(at, excluded.at)", [(h, now) for h in hashes])
        return _first_in_group(hashes, unseen)


def _read_log(conn: sqlite3.Connection) -> tuple[dict[int, float], int]:
    """The recent generation from the log: hash -> last time seen, and how many hashes."""
    recent: dict[int, float] = {}
    count = 0
    for at, blob in conn.execute("SELECT at, hashes FROM sightings_log ORDER BY rowid"):
        hashes = _unpack(blob)
        count += len(hashes)
        for h in hashes:
            recent[h] = at
    return recent, count
