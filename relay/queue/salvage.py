"""Corrupt queue files: detection at start, moving aside, and salvaging readable rows.

A damaged file is never deleted or repaired in place: it is renamed (with its -wal and
-shm files) to ``<path>.corrupt-<UTC time>`` and a fresh queue starts, so the relay keeps
taking events. ``relay recover FILE`` later reads every row it still can from the old
file and adds what was not yet delivered to the live queue:

- **reading**: the old file is read page by page (``relay.queue.pages``), not through
  SQLite, so a zeroed header, a truncated file or a torn page lose only the rows they
  hold. Event ids are contiguous (AUTOINCREMENT, deleted only from the front), so the
  rows that could not be read are counted exactly: the id span minus the rows read
  (``unreadable_exact`` is false only when the first or last rows' pages are lost and
  nothing else bounds the span).
- **progress**: an event is queued again only for the destinations that had not finished
  it in the old file (its ``progress`` cursors and ``done_ranges``); see ``route``.
- **writing**: in transactions of ``CHUNK`` rows, with a pause after each one so that a
  running relay's writer takes the lock between them (its busy handler polls; ours waits
  up to ``BUSY_TIMEOUT_MS``). A row whose (writeKey, messageId) the live queue has
  already seen is skipped; dead letters are copied once per file.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from relay.queue import batches, pages, sightings, store

log = logging.getLogger(__name__)

CHUNK = 2000  # rows a recovery transaction writes
PAUSE_S = 0.05  # at least this long between two recovery transactions (the live writer's turn)
BUSY_TIMEOUT_MS = 60_000
SIDE_FILES = ("-wal", "-shm")
EVERY = None  # a route's target for "every destination" (events.target IS NULL)


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


# --- what the old file holds -------------------------------------------------------------------

def _is_event(r: pages.Record) -> bool:
    """id (the rowid: NULL in the record), received_at, write_key, message_id, type, body, target."""
    return (len(r) == 7 and r[0] is None and isinstance(r[1], int | float)
            and all(isinstance(v, str) for v in r[2:5]) and isinstance(r[5], bytes | str)
            and (r[6] is None or isinstance(r[6], str)))


def _is_dead_letter(r: pages.Record) -> bool:
    return (len(r) == 11 and r[0] is None and isinstance(r[1], int | float) and isinstance(r[3], str)
            and isinstance(r[8], str) and isinstance(r[10], bytes | str))


def _is_progress(r: pages.Record) -> bool:
    return len(r) == 7 and isinstance(r[0], str) and isinstance(r[1], int)


def _is_done_range(r: pages.Record) -> bool:
    return len(r) == 3 and isinstance(r[0], str) and isinstance(r[1], int) and isinstance(r[2], int)


def _is_schema(r: pages.Record) -> bool:
    return len(r) == 5 and isinstance(r[1], str) and isinstance(r[3], int)


def _is_batch(r: pages.Record) -> bool:
    """first (the rowid: NULL in the record), count, received_at, write_key, target, codec, ids, body."""
    return (len(r) == 8 and r[0] is None and isinstance(r[1], int) and r[1] > 0
            and isinstance(r[2], int | float) and isinstance(r[3], str)
            and (r[4] is None or isinstance(r[4], str))
            and isinstance(r[5], int) and isinstance(r[6], bytes) and isinstance(r[7], bytes))


def _is_meta(r: pages.Record) -> bool:
    return len(r) == 2 and isinstance(r[0], str)


def _is_sequence(r: pages.Record) -> bool:
    return len(r) == 2 and isinstance(r[0], str) and isinstance(r[1], int)


@dataclass(frozen=True, slots=True)
class Delivered:
    """What the old file says its destinations had finished (delivered or dead-lettered):
    every id up to its cursor, and the ranges it finished beyond it."""
    cursors: dict[str, int]
    done: dict[str, list[tuple[int, int]]] = field(default_factory=dict)

    def finished(self, destination: str, event_id: int) -> bool:
        if event_id <= self.cursors.get(destination, 0):
            return True
        return any(a <= event_id <= b for a, b in self.done.get(destination, ()))


Route = tuple[tuple[str | None, ...], tuple[str, ...]]


def route(event_id: int, target: str | None, old: Delivered, live: Sequence[str]) -> Route:
    """(the targets to queue an old event under, one row each, EVERY for one row that
    every destination reads; the old file's destinations that still needed it but are not
    in the live config). The policy:

    - only the destinations that had not finished it get it again; one every old
      destination had finished is not queued at all;
    - a live destination the old file never knew (added since) gets what some old
      destination still needed: the backlog the old file held;
    - an old destination the live config lacks gets nothing (a row for it would be
      deleted unread: every configured cursor passes it); it is counted and named, so
      the operator can configure it and recover again before anything is lost;
    - with no readable progress nothing is known to be delivered: every destination.
    """
    live_set = set(live)
    if target is not None:  # a replayed dead letter, for one destination only
        if target in old.cursors and old.finished(target, event_id):
            return (), ()
        return ((target,), ()) if target in live_set or not live else ((), (target,))
    if not old.cursors:
        return (EVERY,), ()
    still = [d for d in old.cursors if not old.finished(d, event_id)]
    if not still:
        return (), ()
    if not live:
        return (EVERY,), ()  # no destination configured yet: for whichever come
    wanted = [d for d in live if d in still or d not in old.cursors]
    unknown = tuple(d for d in still if d not in live_set)
    if len(wanted) == len(live_set):
        return (EVERY,), unknown
    return tuple(wanted), unknown


class OldQueue:
    """The tables of a moved-aside file, read through ``pages``."""

    def __init__(self, image: pages.Image) -> None:
        self.image = image
        self.claimed: set[int] = set()
        self.roots = self._roots()
        self.progress_read = False
        self.delivered = self._delivered()
        self.sequence = self._sequence()
        self.damaged_dead_letters = False
        self.lost_batches = 0
        self._events: pages.Tree | None = None

    def _tree(self, name: str, accept: Callable[[pages.Record], bool]) -> pages.Tree | None:
        root = self.roots.get(name)
        return pages.Tree(self.image, root, accept) if root else None

    def _roots(self) -> dict[str, int]:
        schema = pages.Tree(self.image, 1, _is_schema)
        roots = {str(r[1]): int(r[3]) for _, r in schema.rows() if r[0] in ("table", "index") and r[3]}
        self.claimed |= schema.visited
        return roots

    def _all(self, tree: pages.Tree | None) -> list[pages.Record]:
        if tree is None:
            return []
        rows = [row for _, row in tree.rows()]
        self.claimed |= tree.visited
        return rows

    def _delivered(self) -> Delivered:
        tree = self._tree("progress", _is_progress)
        rows = self._all(tree)
        cursors: dict[str, int] = {}
        if tree is not None and not tree.broken:
            self.progress_read = True
        elif tree is None or tree.broken:  # its pages lost: whatever copies of its rows remain
            ranges: list[pages.Range] = [(None, None)]
            rows += [row for _, row in pages.orphans(self.image, self._fenced(), ranges, _is_progress)]
            self.progress_read = bool(rows)
        for row in rows:  # cursors only grow: of several copies of a row, the newest is the largest
            cursors[row[0]] = max(cursors.get(row[0], 0), int(row[1]))
        done: dict[str, list[tuple[int, int]]] = {}
        for name, first, last in self._all(self._tree("sqlite_autoindex_done_ranges_1", _is_done_range)
                                           or self._tree("done_ranges", _is_done_range)):
            done.setdefault(name, []).append((first, last))
        return Delivered(cursors, done)

    def _sequence(self) -> int | None:
        """The last event id the old file gave, when it can be read."""
        if "batches" in self.roots:
            meta = self._tree("meta", _is_meta)
            rows = self._all(meta)
            if meta is None or meta.broken:
                return None
            return next((int(r[1]) for r in rows if r[0] == "last_event_id" and isinstance(r[1], int)), None)
        tree = self._tree("sqlite_sequence", _is_sequence)
        rows = self._all(tree)
        return next((int(r[1]) for r in rows if r[0] == "events"), None) if tree and not tree.broken else None

    @property
    def by_request(self) -> bool:
        """A version 2 file: a row per request (``batches``), not per event."""
        return "events" not in self.roots

    def _fenced(self) -> set[int]:
        return self.claimed | self.image.free_pages()

    def events(self) -> Iterator[tuple[int, pages.Record]]:
        """(id, row) of every event that could be read, in the version 1 row's shape
        (None, received_at, write_key, message_id, type, body, target): a version 2 file's
        rows are split into their events (a row whose body cannot be read counts its
        events as unreadable), a version 1 file's read as they are."""
        if "events" in self.roots:
            yield from self._event_rows()
            return
        for first, row in self._rows("batches", _is_batch):
            _, count, received_at, write_key, target, codec, index, body = row
            try:
                events = batches.unpack(first, received_at, write_key, index, body, codec)
            except Exception:  # a damaged row: each of its events is counted as unreadable
                self.lost_batches += 1
                for event_id in range(first, first + count):
                    yield event_id, (None, received_at, write_key, "", "track", b"", target)
                continue
            for e in events:
                yield e.id, (None, e.received_at, e.write_key, e.message_id, e.type, e.body, target)

    def _event_rows(self) -> Iterator[tuple[int, pages.Record]]:
        yield from self._rows("events", _is_event)

    def _rows(self, name: str, accept: Callable[[pages.Record], bool]) -> Iterator[tuple[int, pages.Record]]:
        """(key, row) of a table's tree in key order, then rows of orphaned leaves that
        fall where its tree was broken."""
        tree = self._tree(name, accept)
        self._events = tree
        ranges: list[pages.Range] = [(None, None)]
        if tree is not None:
            for key, row in tree.rows():
                if key is not None:
                    yield key, row
            self.claimed |= tree.visited
            ranges = tree.broken
        seen: set[int] = set()
        for key, row in pages.orphans(self.image, self._fenced(), ranges, accept):
            if key not in seen:
                seen.add(key)
                yield key, row

    def dead_letters(self) -> Iterator[pages.Record]:
        tree = self._tree("dead_letters", _is_dead_letter)
        if tree is None:  # no such table, or no schema to say where it is
            self.damaged_dead_letters = not self.roots
            return
        for _, row in tree.rows():
            yield row
        self.claimed |= tree.visited
        lost = sum(len(leaf.lost) for _, leaf in tree.leaves)
        self.damaged_dead_letters = bool(tree.broken or lost)

    @property
    def events_tree(self) -> pages.Tree | None:
        return self._events


@dataclass(slots=True)
class Span:
    """The ids of the rows read, and where they sat in their leaves: enough to count the
    rows that could not be read exactly (ids are contiguous)."""
    rows: int = 0  # rows decoded (a body that is not JSON counts here and as unreadable)
    low: int | None = None
    high: int | None = None

    def add(self, key: int) -> None:
        self.rows += 1
        self.low = key if self.low is None else min(self.low, key)
        self.high = key if self.high is None else max(self.high, key)

    def unreadable_by_request(self, tree: pages.Tree | None, sequence: int | None) -> tuple[int, bool]:
        """``unreadable`` for a file with a row per request: a lost cell is a lost row of
        unknown size. Ids are contiguous, so what lies between the first and last event
        read is exact, and so is what lies after the last one when the file's last id
        could be read; rows lost before the first read make the count a lower bound."""
        leaves = [leaf for _, leaf in tree.leaves] if tree is not None else []
        lost_cells = sum(len(leaf.lost) for leaf in leaves)
        if self.low is None or self.high is None:
            return lost_cells, tree is not None and not tree.broken and lost_cells == 0
        before = 0
        for leaf in leaves:
            if len(leaf.lost) < leaf.cells:
                before += _leading(leaf.lost)
                break
            before += leaf.cells
        after_cells = 0
        for leaf in reversed(leaves):
            if len(leaf.lost) < leaf.cells:
                after_cells += _leading([leaf.cells - 1 - i for i in reversed(leaf.lost)])
                break
            after_cells += leaf.cells
        inside = self.high - self.low + 1 - self.rows
        after = max(0, sequence - self.high) if sequence is not None else after_cells
        broken = tree.broken if tree is not None else [(None, None)]
        exact = (before == 0 and not any(lo is None or lo < self.low - 1 for lo, _ in broken)
                 and (sequence is not None
                      or (after_cells == 0 and not any(hi is None or hi > self.high for _, hi in broken))))
        return before + inside + after, exact

    def unreadable(self, tree: pages.Tree | None, sequence: int | None) -> tuple[int, bool]:
        """(rows that could not be read, whether that count is exact)."""
        if tree is None:  # no schema: only the span of what was found
            return (self.high - self.low + 1 - self.rows if self.low is not None and self.high is not None
                    else 0), False
        leaves = [leaf for _, leaf in tree.leaves]
        lost_cells = sum(len(leaf.lost) for leaf in leaves)
        if self.low is None or self.high is None:
            return lost_cells, not tree.broken
        before = after = 0  # cells lost before the first row read, after the last
        for leaf in leaves:
            if len(leaf.lost) < leaf.cells:
                before += _leading(leaf.lost)
                break
            before += leaf.cells
        for leaf in reversed(leaves):
            if len(leaf.lost) < leaf.cells:
                after += _leading([leaf.cells - 1 - i for i in reversed(leaf.lost)])
                break
            after += leaf.cells
        first = self.low - before
        last = max(self.high + after, sequence or 0)
        exact = not any(lo is None or lo < first - 1 for lo, _ in tree.broken)
        exact = exact and (sequence is not None or not any(hi is None or hi > last for _, hi in tree.broken))
        return last - first + 1 - self.rows, exact


def _leading(positions: list[int]) -> int:
    """How many of the sorted cell ``positions`` are 0, 1, 2, ... (lost before the first kept)."""
    count = 0
    for expected, position in enumerate(positions):
        if position != expected:
            break
        count += 1
    return count


# --- writing into the live queue ------------------------------------------------------------------

@dataclass(slots=True)
class Recovery:
    events: int = 0  # old events queued again (each may be several rows: one per destination)
    rows: int = 0  # rows inserted into the live queue
    already_delivered: int = 0  # every destination had finished them in the old file
    duplicates: int = 0  # the live queue has already seen their (writeKey, messageId)
    for_unknown_destinations: dict[str, int] = field(default_factory=dict)
    read: int = 0  # events read from the old file (with a JSON body)
    unreadable: int = 0
    unreadable_exact: bool = True
    dead_letters: int = 0
    dead_letters_skipped: bool = False  # copied by an earlier recovery of the same file
    dead_letters_damaged: bool = False
    progress: str = "read"  # "read", or "unreadable": nothing known delivered, all queued for all
    empty: bool = False  # the old file provably held nothing

    @property
    def salvaged_nothing(self) -> bool:
        return not self.read and not self.dead_letters and not self.empty and not self.dead_letters_skipped

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_json(body: object) -> bool:
    try:
        msgspec.json.decode(body if isinstance(body, bytes | str) else b"")
    except msgspec.DecodeError:
        return False
    return True


def _bytes(body: bytes | str) -> bytes:
    return body if isinstance(body, bytes) else body.encode()


class _Writer:
    """Chunks of old events into the live queue, each its own short transaction."""

    def __init__(self, live: sqlite3.Connection, destinations: Sequence[str], old: Delivered,
                 result: Recovery, progress: Callable[[int], None] | None, pause: float) -> None:
        self.live, self.destinations, self.old = live, list(destinations), old
        self.result, self.progress, self.pause = result, progress, pause
        self.seen = sightings.Sightings()

    def write(self, batch: list[tuple[int, pages.Record]]) -> None:
        result = self.result
        wanted: list[tuple[pages.Record, tuple[str | None, ...]]] = []
        for key, row in batch:
            targets, unknown = route(key, row[6], self.old, self.destinations)
            for name in unknown:
                result.for_unknown_destinations[name] = result.for_unknown_destinations.get(name, 0) + 1
            if targets:
                wanted.append((row, targets))
            else:
                result.already_delivered += 0 if unknown else 1
        if wanted:
            # the relay's recent sightings, read again before each chunk (a read: no lock taken)
            self.seen.refresh(self.live)
            began = time.monotonic()
            with store.transaction(self.live):
                firsts = self.seen.record_in_old_generation(
                    self.live, [(row[2], row[3]) for row, _ in wanted], time.time())
                rows = [(row[1], row[2], row[3], row[4], _bytes(row[5]), target)
                        for (row, targets), first in zip(wanted, firsts, strict=True) if first
                        for target in targets]
                store.insert_recovered(self.live, rows)
                queued = sum(firsts)
                store.bump_meta(self.live, "recovered_events", queued)
            held = time.monotonic() - began
            result.events += queued
            result.rows += len(rows)
            result.duplicates += len(wanted) - queued
            time.sleep(max(self.pause, held))  # the live relay's writer goes next
        if self.progress:
            self.progress(len(batch))


def recover(source: str, live: sqlite3.Connection, destinations: Sequence[str],
            progress: Callable[[int], None] | None = None, chunk: int = CHUNK,
            pause: float = PAUSE_S) -> Recovery:
    """Queue again what the damaged file ``source`` holds and its destinations had not
    finished, for the live ``destinations``; copy its dead letters once."""
    result = Recovery()
    live.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if Path(source).stat().st_size == 0 and not Path(source + "-wal").exists():
        result.empty = True
        return result
    with pages.Image.open(source) as image:
        old = OldQueue(image)
        result.progress = "read" if old.progress_read else "unreadable"
        writer = _Writer(live, destinations, old.delivered, result, progress, pause)
        span = Span()
        batch: list[tuple[int, pages.Record]] = []
        for key, row in old.events():
            span.add(key)
            if not _is_json(row[5]):
                continue
            result.read += 1
            batch.append((key, row))
            if len(batch) >= chunk:
                writer.write(batch)
                batch = []
        if batch:
            writer.write(batch)
        unreadable, exact = (span.unreadable_by_request(old.events_tree, old.sequence) if old.by_request
                             else span.unreadable(old.events_tree, old.sequence))
        result.unreadable = unreadable + (span.rows - result.read)
        result.unreadable_exact = exact
        _copy_dead_letters(source, old, live, result, chunk)
        tree = old.events_tree
        result.empty = (tree is not None and not tree.broken and span.rows == 0 and unreadable == 0
                        and not result.dead_letters and not old.damaged_dead_letters)
    return result


def _copy_dead_letters(source: str, old: OldQueue, live: sqlite3.Connection, result: Recovery,
                       chunk: int) -> None:
    """The old file's dead letters, once: a second recovery of the same file skips them."""
    key = f"recovered_dead_letters:{Path(source).resolve()}"
    if store.meta_int(live, key):
        result.dead_letters_skipped = True
        return
    batch: list[pages.Record] = []
    for row in old.dead_letters():
        batch.append(row[1:])
        if len(batch) >= chunk:
            with store.transaction(live):
                store.insert_dead_letter_rows(live, batch)
            result.dead_letters += len(batch)
            batch = []
    with store.transaction(live):
        store.insert_dead_letter_rows(live, batch)
        store.bump_meta(live, key, 1)
    result.dead_letters += len(batch)
    result.dead_letters_damaged = old.damaged_dead_letters
