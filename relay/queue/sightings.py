"""Dedup memory: which (writeKey, messageId) the queue has seen, and when.

A 64-bit hash of the pair (xxh3, about 0.2 µs) is kept in two generations:

- the **recent** generation: each commit appends one row to ``sightings_log`` holding the
  hashes of all its events (one row per commit, not per event) and keeps them in memory,
  hash -> time, for the lookups;
- the **old** generation: sorted runs in ``sighting_runs``, keyed by (run, hash), and the
  ``sightings`` table, keyed by hash. Past a size the recent generation is frozen and
  written as a new run, each step a range of keys in key order, so that the run's pages
  are written once, one after the other, whatever the old generation holds (merging it
  into one table keyed by hash wrote every page of that table again at each rotation: a
  cost that grew with the window's traffic). Sixteen runs of a level are compacted into one
  of the next level, so that a lookup reads a few runs a level, not one per rotation (more
  while a compaction runs, or while a large one keeps the lower levels waiting). Rotations
  and compactions run in steps, one inside each of the writer's commits (``merge_step``,
  ``compact_step``), so that no commit waits for a whole one: the generation being written
  is frozen in memory and read beside the new one until its last row is written.
  ``sightings`` holds what other processes record (``relay recover``) and what relays
  before runs merged there.

A lookup asks memory first, then, for the hashes memory does not hold, the old
generation's Bloom filter (``OldFilter``), and SQLite (``sightings`` and each run that holds
sightings inside the window) only for those the filter may hold: SQLite decides them, with
the window. Memory changes only after the
transaction that wrote the log committed, so a rolled-back commit never leaves a sighting
behind (its events would otherwise be taken for duplicates when the client retries).
``Sightings`` is used by the queue's writer only, under its connection's lock; the relay
that owns the queue is the only writer of ``sightings_log``; other processes (``relay
recover``) record into ``sightings``: a commit of theirs sets the filter aside (the file's
``data_version`` changed) until it is read again, so the relay finds their keys there.

A queue file of version 1 kept its sightings hashed with blake2b in ``seen``: while that
table holds entries inside the window, the keys memory does not know are looked up there
too (hashed as version 1 hashed them); the pruning that ages sightings out drops it once
it is empty.
"""

from __future__ import annotations

import hashlib
import math
import sqlite3
from array import array
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import xxhash

from relay.queue import store
from relay.queue.store import transaction

_xxh = xxhash.xxh3_64_intdigest
_SIGN = 1 << 63


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


def seen_in_old_generation(conn: sqlite3.Connection, hashes: Sequence[int], cutoff: float) -> set[int]:
    """Those of ``hashes`` the old generation saw at ``cutoff`` or later: in ``sightings``,
    or in a run that holds sightings that recent (a key probed in each)."""
    if not hashes:
        return set()
    return {h for (h,) in conn.execute(
        "SELECT value FROM json_each(?2)"
        " WHERE EXISTS (SELECT 1 FROM sightings WHERE sightings.h = value AND sightings.at >= ?1)"
        " OR EXISTS (SELECT 1 FROM sighting_runs WHERE run IN"
        " (SELECT run FROM sighting_run_info WHERE newest >= ?1) AND h = value AND at >= ?1)",
        (cutoff, _json_array(hashes)))}


def _seen_in_table(conn: sqlite3.Connection, hashes: Sequence[int], cutoff: float, table: str) -> set[int]:
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
    found = _seen_in_table(conn, list(wanted.values()), cutoff, "seen")
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


class OldFilter:
    """A Bloom filter over the old generation's hashes, two probes a hash (the hash's low
    and high halves): a key it does not hold, which is nearly every key, is known absent
    from the runs and ``sightings`` without a lookup there. A key it holds may be a false
    positive (1-4%), and its time is not kept: SQLite decides those. Deletions leave bits
    behind, so it only ever answers "maybe" too often, never "absent" wrongly."""

    MIN_BITS = 1 << 23  # 1 MiB
    BITS_PER_HASH = 16  # at least, when built: at most 1.4% false positives; 4.9% when full

    def __init__(self, expected: int) -> None:
        bits = self.MIN_BITS
        while bits < expected * self.BITS_PER_HASH:
            bits <<= 1
        self.bits = bytearray(bits >> 3)
        self.mask = bits - 1
        self.capacity = bits // 8  # past this many hashes it is built again, twice as large
        self.count = 0

    @property
    def full(self) -> bool:
        return self.count > self.capacity

    def add(self, hashes: Sequence[int]) -> None:
        bits, mask = self.bits, self.mask
        for h in hashes:
            low, high = h & mask, (h >> 32) & mask
            bits[low >> 3] |= 1 << (low & 7)
            bits[high >> 3] |= 1 << (high & 7)
        self.count += len(hashes)

    def maybe(self, hashes: Sequence[int]) -> list[int]:
        """Those of ``hashes`` the filter may hold."""
        bits, mask = self.bits, self.mask
        return [h for h in hashes
                if bits[(h & mask) >> 3] >> (h & 7) & 1
                and bits[((h >> 32) & mask) >> 3] >> ((h >> 32) & 7) & 1]


class Sightings:
    def __init__(self) -> None:
        self.recent: dict[int, float] = {}
        self.frozen: dict[int, float] = {}  # the generation a rotation is merging
        self.logged = 0  # hashes in sightings_log: the recent generation's size on disk
        self.legacy = False  # a version 1 file's ``seen`` is still read
        self._staged: list[tuple[list[int], float]] = []  # the open transaction's (hashes, time)
        self._staged_rowid = 0  # the open transaction's first log row
        self._stepped = False  # the open transaction holds a rotation step
        self._reload = False  # memory may hold less than the log: read it again before use
        self._forgot = False  # the open transaction deleted sightings
        self._frozen_through = 0  # the frozen generation's last rowid in sightings_log
        self._merged_through = 0  # rowids of sightings_log up to this one are merged
        self._ranges: list[list[int]] = []  # the frozen generation's hashes by key range, in key order
        self._next = 0  # how many of those ranges are merged
        self._run = 0  # the run the rotation writes
        self._compaction: _Compaction | None = None  # the compaction under way
        self._levels: dict[int, int] = {}  # runs of each level
        self._relevel = False  # a compaction was given up: count the levels again before the next
        self._frozen_logged = 0  # the log's hashes (repeats too) memory counted when it was frozen
        self._times: dict[int, float] = {}  # the frozen log's hashes, each with its latest time
        # The old generation's filter; None while it is not built (every lookup then asks
        # SQLite), ``want_filter`` when the writer should build it (on its thread).
        self.filter: OldFilter | None = None
        self.want_filter = False
        self._data_version = -1  # what the file's data_version was when the filter was built
        self._merged_meanwhile: list[int] | None = None  # merged while a filter is being read

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
        self.frozen, self._ranges, self._next, self._times = {}, [], 0, {}
        self._frozen_through = self._merged_through = 0
        self._compaction, self._run = None, 0  # (one cut short leaves runs that mean what they meant)
        self._levels, self._relevel = self._finished_levels(conn), False
        self._staged = []
        self._reload = False

    @property
    def rotating(self) -> bool:
        return self._frozen_through > self._merged_through

    def build_filter(self, conn: sqlite3.Connection) -> None:
        """Build the old generation's filter from the runs and ``sightings``, here and now
        (at start)."""
        version = self.start_filter(conn)
        self.adopt_filter(read_filter(conn), version)

    def start_filter(self, conn: sqlite3.Connection) -> int:
        """Before a filter is read beside the writer (``read_filter`` on another connection):
        what is merged from now on is kept aside for it. Returns the file's data_version
        on this connection, which the filter will be trusted for."""
        self._merged_meanwhile = []
        return _data_version(conn)

    def adopt_filter(self, built: OldFilter, version: int) -> None:
        """Use ``built`` (read since ``start_filter``), with what was merged meanwhile."""
        built.add(self._merged_meanwhile or ())
        self._merged_meanwhile = None
        self.filter, self._data_version = built, version
        self.want_filter = built.full

    def _trusted_filter(self, conn: sqlite3.Connection) -> OldFilter | None:
        """The filter when it may be trusted: built, and no other process (``relay recover``
        recording into ``sightings``) committed to the file since; else None, and the
        writer is asked to build it again."""
        if self.filter is not None and _data_version(conn) != self._data_version:
            self.filter, self.want_filter = None, True
        return self.filter

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
        if ask and (old_filter := self._trusted_filter(conn)) is not None:
            ask = old_filter.maybe(ask)
        old = seen_in_old_generation(conn, ask, cutoff)
        unseen = [at < cutoff and h not in old for h, at in zip(hashes, last, strict=True)]
        if self.legacy and any(unseen):
            in_legacy = _seen_in_legacy(conn, keys, unseen, cutoff)
            unseen = [new and not found for new, found in zip(unseen, in_legacy, strict=True)]
        logged = conn.execute("INSERT INTO sightings_log (at, hashes) VALUES (?, ?)", (now, _pack(hashes)))
        if not self._staged:
            self._staged_rowid = logged.lastrowid or 0  # the transaction's first log row
        self._staged.append((hashes, now))
        return _first_in_group(hashes, unseen)

    def committed(self) -> None:
        recent = self.recent
        for hashes, at in self._staged:
            for h in hashes:
                recent[h] = at
            self.logged += len(hashes)
        self._staged = []
        self._forgot = self._stepped = False

    def rolled_back(self) -> None:
        """The transaction's sightings never reached the log; anything it forgot is back."""
        self._staged = []
        if self._forgot or self._stepped:
            self._reload, self._forgot, self._stepped = True, False, False

    def step_failed(self, compaction: bool = False) -> None:
        """A step was rolled back to a savepoint. After a rotation's, memory is read again
        from the log; after a compaction's, only the compaction is given up (the runs it
        wrote mean what they meant, as after a crash) and the rotation under way goes on."""
        if compaction:
            self._compaction, self._relevel, self._stepped = None, True, False
        else:
            self._reload, self._stepped = True, False

    def rotate_step(self, conn: sqlite3.Connection, chunk: int) -> int:
        """``merge_step`` in a transaction of its own."""
        try:
            with transaction(conn):
                merged = self.merge_step(conn, chunk)
        except BaseException:
            self.rolled_back()
            raise
        self.committed()
        return merged

    def merge_step(self, conn: sqlite3.Connection, chunk: int) -> int:
        """Write about ``chunk`` hashes of the frozen generation into the old one's new run,
        inside the caller's transaction (the queue's writer runs a step in each commit
        while a rotation is under way: no transaction or fsync of its own); return how many.

        The first step of a rotation freezes the recent generation (new sightings go to a
        fresh one): what the log holds of it (the rows committed before this transaction's
        own, which memory holds too) is what is written and then deleted, so memory and log
        cannot part. Its hashes are parted into key ranges, and each step writes the next
        range in key order, so that the run's pages are written once, one after the other.
        The run counts as one to compact (level 0) from its last step; one cut short is
        dropped when the next rotation starts. Each hash keeps its own time, rounded up to
        ``MERGE_TIME_STEP`` (a statement per distinct time: one when the generation took
        less than that, as it does under load), so the window is never shortened and
        lengthened by that step at most. The log rows go in
        the last step, so a rotation cut short is written again from the log after a
        restart; a step rolled back has memory read again from the log."""
        if self._reload:
            self._load(conn)
        self._stepped = True  # first: a step that fails after memory changed has it read back
        if not self.rotating:
            below = self._staged_rowid if self._staged else _NO_ROWID  # not this transaction's own
            rows = conn.execute("SELECT rowid, at, length(hashes) FROM sightings_log WHERE rowid < ?"
                                " ORDER BY rowid", (below,)).fetchall()
            if not rows:
                return 0
            stamps = [at for _, at, _ in rows]
            if stamps == sorted(stamps) and sum(size for _, _, size in rows) == 8 * self.logged:
                times = self.recent  # memory holds what the log does, each hash at its latest time
            else:  # the clock stepped back (memory kept each hash's last time), or memory missed a row
                logged = conn.execute("SELECT at, hashes FROM sightings_log WHERE rowid < ? ORDER BY rowid",
                                      (below,)).fetchall()
                times, _ = _latest_times(logged)
            self.frozen, self.recent = self.recent, {}
            self._times, self._ranges = times, _key_ranges(times, chunk)
            self._next, self._frozen_logged = 0, self.logged  # (what memory counts of the frozen rows)
            self._merged_through, self._frozen_through = int(rows[0][0]) - 1, int(rows[-1][0])
            for (unfinished,) in conn.execute("SELECT run FROM sighting_run_info WHERE level = ?",
                                              (_WRITING,)).fetchall():
                _drop_run(conn, unfinished, _DROP_CHUNK)  # a rotation cut short: the log still holds it
            self._run = _new_run(conn, _WRITING, max(stamps))
        keys = sorted(self._ranges[self._next]) if self._ranges else []
        last = self._next + 1 >= len(self._ranges)
        for at, group in _by_time(keys, self._times).items():
            conn.execute("INSERT INTO sighting_runs (run, h, at) SELECT ?3, value, ?1 FROM json_each(?2)",
                         (at, _json_array(group), self._run))
        conn.execute("UPDATE sighting_run_info SET rows = rows + ? WHERE run = ?", (len(keys), self._run))
        if last:
            conn.execute("DELETE FROM sightings_log WHERE rowid > ?1 AND rowid <= ?2",
                         (self._merged_through, self._frozen_through))
            conn.execute("UPDATE sighting_run_info SET level = 0 WHERE run = ?", (self._run,))
        self._next += 1
        if self.filter is not None:
            self.filter.add(keys)  # (a step rolled back leaves bits behind: false positives only)
            self.want_filter = self.want_filter or self.filter.full
        if self._merged_meanwhile is not None:
            self._merged_meanwhile += keys
        if last:
            self._merged_through = self._frozen_through
            self.logged -= self._frozen_logged
            self.frozen, self._ranges, self._times, self._run = {}, [], {}, 0
            self._levels[0] = self._levels.get(0, 0) + 1  # (the run is done: one to compact)
        return len(keys)

    @property
    def compaction_due(self) -> bool:
        """Whether a compaction is under way, or a level holds enough runs for one."""
        return (self._compaction is not None or self._relevel  # (levels to count again: a step looks)
                or any(n >= RUNS_PER_COMPACTION for n in self._levels.values()))

    def compact_step(self, conn: sqlite3.Connection, chunk: int, cutoff: float) -> int:
        """Compact about ``chunk`` sightings, inside the caller's transaction (as
        ``merge_step``, in the commits between rotations); return how many were written.

        The first step picks the lowest level that holds ``RUNS_PER_COMPACTION`` runs, and
        its oldest runs of it, and starts a run of the next level; each step moves the next
        range of keys of those runs into it, each key once at its latest time, and leaves
        out what is older than ``cutoff`` (the window). A compaction cut short (a crash, a
        step rolled back) leaves each sighting in one of the runs, where lookups find it;
        the runs are compacted again later."""
        if self._reload:
            self._load(conn)
        if self._relevel:
            self._levels, self._relevel = self._finished_levels(conn), False
        self._stepped = True
        if self._compaction is None:
            picked = _pick_compaction(conn, self._levels, self._run)
            if picked is None:
                return 0
            level, sources, total, newest = picked
            run = _new_run(conn, level + 1, newest)
            bits = max(0, min(16, (total // max(1, chunk)).bit_length() - 1))
            self._compaction = _Compaction(run, sources, bits)
        job = self._compaction
        shift = 64 - job.bits
        low = (job.next << shift) - _SIGN
        high = low + (1 << shift) - 1
        marks = ",".join("?" * len(job.sources))
        conn.execute(  # (an upsert, not a GROUP BY, which sorted the rows: 25% slower)
            f"INSERT INTO sighting_runs (run, h, at) SELECT ?, h, at FROM sighting_runs"
            f" WHERE run IN ({marks}) AND h BETWEEN ? AND ? AND at >= ? AND true"
            f" ON CONFLICT (run, h) DO UPDATE SET at = max(at, excluded.at)",
            (job.run, *job.sources, low, high, cutoff))
        (written,) = conn.execute("SELECT count(*) FROM sighting_runs WHERE run = ? AND h BETWEEN ? AND ?",
                                  (job.run, low, high)).fetchone()  # (a key in two runs is written once)
        for source in job.sources:
            moved = int(conn.execute("DELETE FROM sighting_runs WHERE run = ? AND h BETWEEN ? AND ?",
                                     (source, low, high)).rowcount)
            conn.execute("UPDATE sighting_run_info SET rows = rows - ? WHERE run = ?", (moved, source))
        conn.execute("UPDATE sighting_run_info SET rows = rows + ? WHERE run = ?", (written, job.run))
        job.next += 1
        if job.next >> job.bits:
            conn.execute(f"DELETE FROM sighting_run_info WHERE run IN ({marks})", job.sources)
            self._compaction = None
            self._levels = self._finished_levels(conn)
        return int(written)

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
            busy = self._busy_runs()
            oldest_first = conn.execute("SELECT run FROM sighting_run_info ORDER BY newest, run").fetchall()
            for (run,) in oldest_first:
                if run in busy:
                    continue
                forgotten += _drop_run(conn, run, _DROP_CHUNK, count - forgotten)
                self._forgot = True  # (rolled back: the levels are read again)
                if forgotten >= count:
                    break
            self._levels = self._finished_levels(conn)
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
        """Drop sightings older than ``cutoff``: the log's rows, each run whose newest
        sighting is older (a run that holds newer ones keeps its older ones, which lookups
        pass over, until then or its compaction), and from ``sightings`` by its time index,
        in chunks; a version 1 file's ``seen`` dropped once empty."""
        total = 0
        for (blob,) in conn.execute("SELECT hashes FROM sightings_log WHERE at < ?", (cutoff,)):
            total += len(blob) // 8
        if total:
            conn.execute("DELETE FROM sightings_log WHERE at < ?", (cutoff,))
            self.load(conn)  # memory (and a rotation under way) start again from the log
        busy = self._busy_runs()
        aged = conn.execute("SELECT run FROM sighting_run_info WHERE newest < ?", (cutoff,)).fetchall()
        for (run,) in aged:
            if run not in busy:
                total += _drop_run(conn, run, chunk)
        self._levels = self._finished_levels(conn)
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

    def _finished_levels(self, conn: sqlite3.Connection) -> dict[int, int]:
        """How many runs each level holds, less those a rotation or a compaction writes."""
        levels = _levels(conn)
        for (level,) in conn.execute("SELECT level FROM sighting_run_info WHERE run IN (?, ?) AND level >= 0",
                                     (self._run if self.rotating else 0,
                                      self._compaction.run if self._compaction else 0)):
            levels[level] -= 1
        return levels

    def _busy_runs(self) -> set[int]:
        """The runs a rotation or a compaction under way writes."""
        return {self._run if self.rotating else 0, self._compaction.run if self._compaction else 0} - {0}

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


_NO_ROWID = (1 << 63) - 1
# Runs of a level compacted into one of the next: a lookup reads about 15 runs a level
# (only for the keys the filter may hold, 1-5% of them, while it is trusted), and each
# sighting is written again once a level, about 1.1 µs.
RUNS_PER_COMPACTION = 16
# The level of the run a rotation writes, until its last step: one cut short (a crash, a
# rollback) is dropped when the next rotation starts, since the log still holds all of it.
_WRITING = -1


@dataclass(slots=True)
class _Compaction:
    run: int  # the run written
    sources: tuple[int, ...]  # the runs compacted into it
    bits: int  # 2 ** bits key ranges, one a step
    next: int = 0  # the next key range


def _levels(conn: sqlite3.Connection) -> dict[int, int]:
    """How many runs each level holds."""
    return dict(conn.execute("SELECT level, count(*) FROM sighting_run_info WHERE level >= 0"
                             " GROUP BY level").fetchall())


def _new_run(conn: sqlite3.Connection, level: int, newest: float) -> int:
    (run,) = conn.execute("SELECT coalesce(max(run), 0) + 1 FROM sighting_run_info").fetchone()
    conn.execute("INSERT INTO sighting_run_info (run, level, newest, rows) VALUES (?, ?, ?, 0)",
                 (run, level, newest))
    return int(run)


def _pick_compaction(conn: sqlite3.Connection, levels: dict[int, int],
                     busy: int) -> tuple[int, tuple[int, ...], int, float] | None:
    """The lowest level with ``RUNS_PER_COMPACTION`` runs: (level, its oldest runs but
    ``busy``, their sightings, their newest time); None when no level has that many."""
    for level in sorted(levels):
        if levels[level] < RUNS_PER_COMPACTION:
            continue
        picked = conn.execute("SELECT run, rows, newest FROM sighting_run_info WHERE level = ? AND run != ?"
                              " ORDER BY run LIMIT ?", (level, busy, RUNS_PER_COMPACTION)).fetchall()
        if len(picked) == RUNS_PER_COMPACTION:
            return (level, tuple(int(run) for run, _, _ in picked), sum(int(rows) for _, rows, _ in picked),
                    max(float(newest) for _, _, newest in picked))
    return None


def _drop_run(conn: sqlite3.Connection, run: int, chunk: int, limit: int | None = None) -> int:
    """Delete a run's sightings, ``chunk`` a statement, all of them or ``limit`` (its
    bookkeeping too once it is empty); return how many."""
    dropped = 0
    while limit is None or dropped < limit:
        take = chunk if limit is None else min(chunk, limit - dropped)
        deleted = int(conn.execute("DELETE FROM sighting_runs WHERE run = ?1 AND h IN (SELECT h"
                                   " FROM sighting_runs WHERE run = ?1 LIMIT ?2)", (run, take)).rowcount)
        dropped += deleted
        if deleted < take:
            conn.execute("DELETE FROM sighting_run_info WHERE run = ?", (run,))
            return dropped
    conn.execute("UPDATE sighting_run_info SET rows = max(0, rows - ?) WHERE run = ?", (dropped, run))
    return dropped
MERGE_TIME_STEP = 60.0  # seconds: merged sightings' times are rounded up to this
_DROP_CHUNK = 50_000


def _key_ranges(hashes: Collection[int], chunk: int) -> list[list[int]]:
    """``hashes`` parted into equal key ranges (a power of two of them), in key order, of
    about ``chunk`` hashes each: one pass, where sorting a rotation's 32,768 hashes at once
    held the interpreter 8 ms inside the commit that froze them; each range is sorted by
    the step that merges it."""
    bits = min(16, (len(hashes) // max(1, chunk)).bit_length() - 1)
    if bits <= 0:
        return [list(hashes)]
    ranges: list[list[int]] = [[] for _ in range(1 << bits)]
    into = [part.append for part in ranges]
    shift, sign = 64 - bits, _SIGN
    for h in hashes:
        into[(h + sign) >> shift](h)
    return ranges


def _by_time(keys: Sequence[int], times: dict[int, float]) -> dict[float, list[int]]:
    """``keys`` (in key order) grouped by their time rounded up to ``MERGE_TIME_STEP``, never
    past the newest: one group when they all fall within one step of it."""
    if not keys:
        return {}
    stamps = [times[h] for h in keys]
    newest, oldest = max(stamps), min(stamps)
    if newest - oldest <= MERGE_TIME_STEP:
        return {newest: list(keys)}
    groups: dict[float, list[int]] = {}
    step = MERGE_TIME_STEP
    for h, at in zip(keys, stamps, strict=True):
        groups.setdefault(min(newest, math.ceil(at / step) * step), []).append(h)
    return groups


def read_filter(conn: sqlite3.Connection) -> OldFilter:
    """A filter holding every hash in ``sightings`` and the runs (a read: 0.3-1 s a million
    sightings; the queue runs it on its status connection, beside the writer)."""
    (count,) = conn.execute("SELECT (SELECT count(*) FROM sightings)"
                            " + (SELECT count(*) FROM sighting_runs)").fetchone()
    built = OldFilter(int(count))
    for table in ("sightings", "sighting_runs"):
        rows = conn.execute(f"SELECT h FROM {table}")
        while chunk := rows.fetchmany(65536):
            built.add([h for (h,) in chunk])
    return built


def _data_version(conn: sqlite3.Connection) -> int:
    """Changes whenever another connection committed to the file (not on this one's commits)."""
    return int(conn.execute("PRAGMA data_version").fetchone()[0])


def _read_log(conn: sqlite3.Connection) -> tuple[dict[int, float], int]:
    """The recent generation from the log: hash -> last time seen, and how many hashes."""
    return _latest_times(conn.execute("SELECT at, hashes FROM sightings_log ORDER BY rowid").fetchall())


def _latest_times(rows: Sequence[tuple[float, bytes]]) -> tuple[dict[int, float], int]:
    """Log rows (time, hashes) in rowid order as hash -> its latest time, and how many
    hashes (repeats too)."""
    times: dict[int, float] = {}
    count = 0
    stamps = [at for at, _ in rows]
    if stamps == sorted(stamps):  # later rows, later times: each hash's last row wins (in C)
        for at, blob in rows:
            hashes = _unpack(blob)
            count += len(hashes)
            times.update(dict.fromkeys(hashes, at))
        return times, count
    for at, blob in rows:  # the clock stepped back meanwhile: each hash's latest time
        hashes = _unpack(blob)
        count += len(hashes)
        for h in hashes:
            if times.get(h, at) <= at:
                times[h] = at
    return times, count
