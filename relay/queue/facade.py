"""The durable write-ahead queue: the only owner of the SQLite connection.

Requests hand their events to ``append`` and wait. One writer task takes everything that
is waiting, writes it in one transaction, commits with the configured durability, and
only then resolves each request's future: concurrent requests share a commit (group
commit), so fsync is paid once per group, not per event. A request's events become one
row (``relay.queue.batches``), compressed on the event loop before the transaction.

The transaction is written on the event loop itself and only its COMMIT (the fsync) runs
on the connection's thread (``Connection.staged``): a thread that ran every statement
would wait for the interpreter lock after each of them while the loop is busy, which
stretched commits and kept groups small. When the loop finds the connection busy, or
another process holding the write lock, the whole group is written on the thread instead.
A writer woken by a lone request waits up to ``GROUP_WAIT`` for others to join it while
requests keep arriving.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from relay import types
from relay.config import QueueConfig
from relay.errors import QueueClosed, QueueError, QueueFull
from relay.queue import batches, salvage, sightings, store
from relay.queue.batches import Packed
from relay.queue.connection import BUSY_TIMEOUT_MS, FULL_RETRY_AFTER, Connection
from relay.queue.lock import QueueLock
from relay.queue.reserve import Reserve
from relay.types import AppendResult, DeadLetter, Event, Live, StatusReport

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_GROUP_EVENTS = 20_000
FULL_CLEAR_RATIO = 0.9
DEDUP_PRUNE_INTERVAL = 60.0
DEDUP_PRUNE_CHUNK = 50_000
CHECKPOINT_INTERVAL = 0.5
DELETE_CHUNK = 10_000  # finished events deleted at once (sooner when the queue is caught up)
DEDUP_ROTATE_ROWS = 32_768  # recent sightings written out as a run of the old generation past this many
DEDUP_ROTATE_STEP = 2_048  # sightings written in each commit while a rotation runs
DEDUP_COMPACT_STEP = 4_096  # sightings compacted in each commit while a compaction runs
# Between two builds of the dedup filter in the background: while `relay recover` commits
# chunk after chunk, the filter is set aside at each, and lookups ask SQLite meanwhile.
DEDUP_FILTER_PAUSE = 5.0
# Estimated bytes on disk per stored row beyond its body and index (row header, index entries).
ROW_OVERHEAD = 96
GROUP_WAIT = 0.002  # seconds a writer woken by few requests waits for more to join the group
GROUP_ENOUGH = 8  # requests that make a group without waiting
# Estimated bytes on disk per dedup entry (row and index entry).
DEDUP_ROW_BYTES = 40


@dataclass(slots=True)
class _Staged:
    outcomes: list[AppendResult | QueueError]
    used: int


@dataclass(slots=True)
class _Pending:
    events: Sequence[Event]
    dead: Sequence[DeadLetter]
    future: asyncio.Future[AppendResult]
    rows: list[Packed] = field(default_factory=list)
    outcome: AppendResult | QueueError | None = None


def pack_events(events: Sequence[Event]) -> list[Packed]:
    """A request's events as rows: one, unless its events differ in arrival or exceed a
    row's size (a stream source's batch)."""
    out: list[Packed] = []
    start = 0
    count = len(events)
    while start < count:
        head = events[start]
        end = start + 1
        limit = min(count, start + batches.MAX_EVENTS)
        while (end < limit and events[end].write_key == head.write_key
               and events[end].received_at == head.received_at):
            end += 1
        run = events[start:end]
        out.append(batches.pack(head.received_at, head.write_key, [e.message_id for e in run],
                                [e.type for e in run], [e.data or e.encode() for e in run]))
        start = end
    return out


class Queue:
    def __init__(self, config: QueueConfig) -> None:
        self.config = config
        self._db = Connection(config.path, "relay-queue")
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None
        self._filter_build: asyncio.Task[None] | None = None
        self._filter_built_at = 0.0  # (monotonic) when the last build in the background ended
        self._checkpoints: asyncio.Task[None] | None = None
        # Checkpoints run on a second connection (its own thread), so that copying the WAL
        # back into the file never sits inside a commit that requests are waiting on.
        self._checkpointer = Connection(config.path, "relay-checkpoints")
        # Status reads (relay status, /status, /metrics) run on a third connection: a reader in
        # WAL mode never waits for the writer, and the writer never waits behind a status read.
        self._reader = Connection(config.path, "relay-status")
        self._reserve = Reserve(config.path)
        self._lock = QueueLock(config.path)
        self._closing = False
        self._used_bytes = 0
        self._full_since: float | None = None
        self.commit_seq = 0
        self.stored_events = 0  # events committed since start
        self.duplicates = 0  # events acknowledged but not stored again (dedup hits)
        self.dedup_forgotten = 0  # dedup entries dropped early to keep events under the cap
        self.sightings = sightings.Sightings()  # used under the connection's lock only
        self._compact_turn = False  # the last commit carried a compaction step
        self._committed = asyncio.Event()
        self._cursors: dict[str, int] = {}
        self._deleted_through = 0
        self._last_wake = 0.0

    @property
    def path(self) -> str:
        return self.config.path

    @property
    def used_bytes(self) -> int:
        return self._used_bytes

    async def start(self) -> None:
        if self._db.is_open:
            return
        Path(self.config.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()  # before anything reads or moves the file: one owner at a time
        self._closing = False
        damage = await asyncio.to_thread(salvage.problem, self.config.path)
        moved = None
        if damage is not None:
            moved = await asyncio.to_thread(salvage.move_aside, self.config.path)
            log.error("queue file is corrupt: moved aside intact, starting a fresh queue; "
                      "salvage it with `relay recover %s`", moved,
                      extra={"problem": damage, "moved_to": moved})
        try:
            await asyncio.to_thread(_create_private, self.config.path)
            await self._db.open()
            await self._db.call(store.prepare, self.config.durability, self.config.max_bytes)
            migrated = await self._db.call(store.migrate)
            if migrated:
                log.info("queue file migrated to a row per request", extra={"events": migrated})
            self._used_bytes = await self._db.call(store.used_bytes)
            await self._db.call(self.sightings.load)
            if self.config.dedup_window:
                await self._db.call(self.sightings.build_filter)
            if moved is not None:
                await self._db.call(store.note_corrupt_file, moved)
            await self._checkpointer.open()
            await self._reader.open()
            await self._reader.call(store.prepare_reader)
            await asyncio.to_thread(self._reserve.restore)
        except BaseException:
            await self.stop()
            raise
        self._writer = asyncio.create_task(self._write_loop(), name="queue-writer")
        self._pruner = asyncio.create_task(self._prune_loop(), name="queue-maintenance")
        self._checkpoints = asyncio.create_task(self._checkpoint_loop(), name="queue-checkpoints")

    async def stop(self) -> None:
        """Refuse new appends, commit what is waiting, close the file. Safe to call twice."""
        self._closing = True
        self._wake.set()
        for task in (self._pruner, self._checkpoints, self._filter_build):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._pruner = self._checkpoints = self._filter_build = None
        await self._checkpointer.close()
        await self._reader.close()
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        for pending in self._pending:
            if not pending.future.done():
                pending.future.set_exception(QueueClosed("the queue is closed"))
        self._pending.clear()
        await self._db.close()
        self._lock.release()

    async def ping(self) -> None:
        """Return once the connection's thread answers a read (readiness)."""
        await self._db.call(store.ping)

    async def append(self, events: Sequence[Event], dead: Sequence[DeadLetter] = ()) -> AppendResult:
        """Store events (and ingest dead letters); return once their transaction committed."""
        if self._closing or not self._db.is_open:
            raise QueueClosed("the queue is closed")
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(events, dead, future))
        self._wake.set()
        return await future

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            # One turn of the loop first: requests whose bytes have already arrived reach
            # ``append`` and join this group, so a commit carries more of them.
            await asyncio.sleep(0)
            await self._let_group_fill()
            while self._pending:
                group = self._take_group()
                for pending in group:
                    pending.rows = pack_events(pending.events)
                now = time.time()
                try:
                    outcomes = await self._write(group, now)
                except QueueError as exc:
                    outcomes = [self._failed(exc)] * len(group)
                except Exception as exc:  # never let the writer die: every waiter gets an answer
                    log.exception("queue write failed")
                    outcomes = [QueueError(f"the queue could not be written: {exc}")] * len(group)
                self._announce()
                for pending, outcome in zip(group, outcomes, strict=True):
                    if isinstance(outcome, AppendResult):
                        self.stored_events += outcome.stored
                        self.duplicates += outcome.duplicates
                    if pending.future.done():
                        continue
                    if isinstance(outcome, BaseException):
                        pending.future.set_exception(outcome)
                    else:
                        pending.future.set_result(outcome)
                if (self.sightings.want_filter and self._filter_build is None and not self._closing
                        and time.monotonic() - self._filter_built_at >= DEDUP_FILTER_PAUSE):
                    self._filter_build = asyncio.create_task(self._build_dedup_filter(), name="dedup-filter")
            if self._closing:
                return

    async def _let_group_fill(self) -> None:
        """A short, bounded wait while few requests wait and more keep arriving: a commit
        costs an fsync whatever it carries."""
        if self._closing or len(self._pending) >= GROUP_ENOUGH or not self._busy_recently():
            return
        deadline = time.monotonic() + GROUP_WAIT
        while len(self._pending) < GROUP_ENOUGH and not self._closing:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            before = len(self._pending)
            await asyncio.sleep(min(left, GROUP_WAIT / 4))
            if len(self._pending) == before:
                return  # nobody joined meanwhile: do not wait for nothing

    def _busy_recently(self) -> bool:
        """Whether the writer was last woken less than a few waits ago (requests are arriving)."""
        now = time.monotonic()
        busy = now - self._last_wake < GROUP_WAIT * 4
        self._last_wake = now
        return busy

    async def _write(self, group: list[_Pending], now: float) -> list[AppendResult | QueueError]:
        """The group's transaction, written here on the loop and committed on the
        connection's thread; on the thread altogether when the loop cannot have the
        connection or the write lock at once."""
        staged = await self._db.staged(self._stage, self._finish, group, now)
        if staged is None:
            return await self._db.call(self._commit, group, now)
        return staged

    def _commit(
        self, conn: sqlite3.Connection, group: list[_Pending], now: float
    ) -> list[AppendResult | QueueError]:
        """One transaction for the whole group, on the connection thread."""
        conn.execute("BEGIN IMMEDIATE")
        return self._finish(conn, self._fill(conn, group, now))

    def _stage(self, conn: sqlite3.Connection, group: list[_Pending],
               now: float) -> _Staged | None:
        """On the loop: BEGIN without waiting for a lock (None when another writer holds
        it), then the group's statements; the COMMIT is left to ``_finish``."""
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return None
            raise
        finally:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return self._fill(conn, group, now)

    def _fill(self, conn: sqlite3.Connection, group: list[_Pending], now: float) -> _Staged:
        """Inside the open transaction: the cap checked request by request, in arrival
        order, before anything of the group is written; then the accepted requests'
        events deduplicated and inserted together: a few statements per commit rather than
        per request. Rolled back on any error."""
        cap = self.config.max_bytes
        try:
            used = self._used_bytes
            accepted: list[_Pending] = []
            for pending in group:
                need = sum(len(r.body) + len(r.ids) + ROW_OVERHEAD for r in pending.rows)
                need += sum(len(d.body) + ROW_OVERHEAD for d in pending.dead)
                if used + need > cap and self.config.dedup_window:
                    used -= self._shrink_dedup(conn, used + need - cap)
                if used + need > cap:
                    if self.config.when_full == "reject" or need > cap:
                        pending.outcome = QueueFull("the queue is at its byte cap", FULL_RETRY_AFTER)
                        continue
                    evicted, freed = store.evict_oldest(conn, used + need - cap)
                    log.warning("queue at its cap: evicted the %d oldest events", evicted)
                    used -= freed  # the rows' bodies and indexes; used_bytes corrects it at the end
                used += need
                accepted.append(pending)
            firsts: list[bool] = []
            if self.config.dedup_window and accepted:
                keys = [(e.write_key, e.message_id) for pending in accepted for e in pending.events]
                if keys:
                    firsts = self.sightings.first_sightings(conn, keys, now, self.config.dedup_window)
            rows: list[Packed] = []
            start = 0
            for pending in accepted:
                count = len(pending.events)
                kept = firsts[start:start + count] if firsts else []
                stored = sum(kept) if firsts else count
                start += count
                if stored == count:
                    rows += pending.rows
                elif stored:
                    rows += pack_events([e for e, first in zip(pending.events, kept, strict=True) if first])
                pending.outcome = AppendResult(stored, count - stored, len(pending.dead),
                                               tuple(kept) if stored != count else None)
            store.insert_batches(conn, rows)
            dead = [d for pending in accepted for d in pending.dead]
            if dead:
                store.insert_dead_letters(conn, dead, now)
            outcomes = [pending.outcome or QueueError("the event was not written") for pending in group]
            return _Staged(outcomes, store.used_bytes(conn))
        except BaseException:
            self.sightings.rolled_back()  # first: even a failed ROLLBACK must not leave them staged
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _finish(self, conn: sqlite3.Connection, staged: _Staged) -> list[AppendResult | QueueError]:
        """COMMIT (on the connection's thread: the fsync), then what it means. While a
        dedup rotation is under way, each commit carries a step of it."""
        try:
            if self.config.dedup_window:
                self._dedup_maintenance(conn)
            conn.execute("COMMIT")
        except BaseException:
            self.sightings.rolled_back()
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.sightings.committed()
        self._used_bytes = staged.used
        outcomes = staged.outcomes
        if self.full_since is not None and not any(isinstance(o, QueueFull) for o in outcomes):
            self.full_since = None
        elif any(isinstance(o, QueueFull) for o in outcomes):
            self.full_since = self.full_since or time.time()
        return outcomes

    def _take_group(self) -> list[_Pending]:
        count = 0
        for i, pending in enumerate(self._pending):
            count += len(pending.events) + len(pending.dead)
            if count > MAX_GROUP_EVENTS and i > 0:
                group, self._pending = self._pending[:i], self._pending[i:]
                return group
        group, self._pending = self._pending, []
        return group

    @property
    def full_since(self) -> float | None:
        """When the queue began refusing writes (its cap or a full disk), or None."""
        return self._full_since

    @full_since.setter
    def full_since(self, value: float | None) -> None:
        """Turning full and clearing are logged once each, not once per refused write."""
        was, self._full_since = self._full_since, value
        if was is None and value is not None:
            log.warning("queue is full: writes are refused (503 + Retry-After) until there is room",
                        extra={"max_bytes": self.config.max_bytes})
        elif was is not None and value is None:
            log.info("queue has room again: writes are taken",
                     extra={"full_for_s": round(time.time() - was, 3)})

    def _failed(self, exc: QueueError) -> QueueError:
        if isinstance(exc, QueueFull):
            if self.full_since is None:
                log.debug("queue write refused: %s", exc)
            self.full_since = self.full_since or time.time()
        else:
            log.error("queue write failed: %s", exc)
        return exc

    def _announce(self) -> None:
        self.commit_seq += 1
        committed, self._committed = self._committed, asyncio.Event()
        committed.set()

    async def wait_for_commit(self, seen_seq: int, timeout: float) -> None:
        """Return once a commit newer than ``seen_seq`` happened, or after ``timeout``."""
        if self.commit_seq > seen_seq:
            return
        try:
            await asyncio.wait_for(self._committed.wait(), timeout)
        except TimeoutError:
            pass

    # --- destinations' progress --------------------------------------------------------------

    async def register(self, names: Sequence[str]) -> dict[str, int]:
        """Declare the configured destinations (all of them); return their cursors."""
        cursors = await self._db.call(store.register_destinations, list(names), time.time())
        self._cursors = dict(cursors)
        return cursors

    async def read(self, destination: str, after: int, limit: int) -> tuple[list[types.Stored], int]:
        """Events for ``destination`` after ``after``, and the id it has read through (see
        ``store.read_for``)."""
        return await self._db.call(store.read_for, destination, after, limit)

    async def record_progress(
        self, destination: str, cursor: int, delivered: int, dead: Sequence[DeadLetter] = ()
    ) -> None:
        """Advance a destination's cursor (with its dead letters) and delete what every
        destination has finished. Committed without fsync even in "fsync" mode: losing it
        to a power cut only means a resend, never a lost event."""
        if destination in self._cursors:
            self._cursors[destination] = max(self._cursors[destination], cursor)
        through = min(self._cursors.values()) if self._cursors else 0
        if through <= self._deleted_through:
            through = 0
        # Deleting in chunks rewrites each page once rather than at every batch; a queue
        # that has caught up is emptied at once.
        chunked = through - self._deleted_through >= DELETE_CHUNK
        args = (destination, cursor, delivered, dead, through, chunked)
        try:
            deleted = await self._db.call(self._record, *args)
        except QueueFull:  # the disk is full: its reserve makes room to delete what was delivered
            if not await asyncio.to_thread(self._reserve.release):
                raise
            deleted = await self._db.call(self._record, *args)
        if deleted:
            self._deleted_through = through

    def _record(self, conn: sqlite3.Connection, destination: str, cursor: int, delivered: int,
                dead: Sequence[DeadLetter], through: int, chunked: bool) -> bool:
        relaxed = self.config.durability == "fsync"
        if relaxed:
            conn.execute("PRAGMA synchronous = NORMAL")
        if through and not chunked and through < store.id_range(conn)[1]:
            through = 0  # not a full chunk and more events follow: delete later
        try:
            store.record_progress(conn, destination, cursor, delivered, dead, through, time.time())
            if through and store.is_empty(conn):
                store.reclaim_space(conn)
        finally:
            if relaxed:
                conn.execute("PRAGMA synchronous = FULL")
        self._used_bytes = store.used_bytes(conn)
        if self.full_since is not None and self._used_bytes < self.config.max_bytes * FULL_CLEAR_RATIO:
            self.full_since = None  # deliveries made room: ready again before the next write proves it
        return bool(through)

    async def record_done_range(self, destination: str, first: int, last: int, delivered: int,
                                dead: Sequence[DeadLetter]) -> None:
        await self._db.call(store.record_done_range, destination, first, last, delivered, dead, time.time())

    async def done_ranges(self, destination: str) -> list[tuple[int, int]]:
        return await self._db.call(store.done_ranges, destination)

    async def set_state(self, destination: str, state: str, last_error: str | None) -> None:
        await self._db.call(store.set_state, destination, state, last_error)


    # --- maintenance ---------------------------------------------------------------------------

    async def _build_dedup_filter(self) -> None:
        """The dedup filter read again (larger, or after another process wrote to the file)
        on the status connection, beside the writer: a million sightings take about a
        second to read, which no commit waits for. Lookups use the old filter, or ask
        SQLite, meanwhile."""
        try:
            version = await self._db.call(self.sightings.start_filter)
            built = await self._reader.call(sightings.read_filter)
            await self._db.call(lambda _conn: self.sightings.adopt_filter(built, version))
        except Exception as exc:  # tried again after the next commit; lookups stay exact meanwhile
            log.warning("the dedup filter could not be built: %s", exc)
        finally:
            self._filter_build = None
            self._filter_built_at = time.monotonic()

    def _dedup_maintenance(self, conn: sqlite3.Connection) -> None:
        """A step of the dedup rotation (when the recent generation has grown past its size)
        or of a compaction of the runs (when a level holds enough of them), inside the
        commit; when both are due, commits take turns, so that neither waits for the other,
        unless memory holds twice a rotation's sightings (then memory comes first)."""
        step = dedup_step(self.sightings.rotating or self.sightings.logged > DEDUP_ROTATE_ROWS,
                          self.sightings.compaction_due, self.sightings.logged, self._compact_turn)
        self._compact_turn = step == "compact"
        if step == "rotate":
            self._dedup_step(conn, lambda: self.sightings.merge_step(conn, DEDUP_ROTATE_STEP),
                             compaction=False)
        elif step == "compact":
            cutoff = time.time() - self.config.dedup_window
            self._dedup_step(conn, lambda: self.sightings.compact_step(conn, DEDUP_COMPACT_STEP, cutoff),
                             compaction=True)

    def _dedup_step(self, conn: sqlite3.Connection, step: Callable[[], int], *, compaction: bool) -> None:
        """A step of a dedup rotation or compaction inside the open transaction, in a
        savepoint: a step that fails (the file at its cap) is undone and tried again later,
        and never fails the commit that carries it. (When SQLite has rolled the whole
        transaction back, as it may on a full disk, there is no savepoint to return to: the
        commit fails, and memory is read back from the log.)"""
        conn.execute("SAVEPOINT rotation")
        try:
            step()
        except sqlite3.Error as exc:
            self.sightings.step_failed(compaction)  # first: whatever the rollback does
            conn.execute("ROLLBACK TO rotation")
            log.warning("a dedup rotation or compaction step failed, tried again later: %s", exc)
        conn.execute("RELEASE rotation")

    def _shrink_dedup(self, conn: sqlite3.Connection, over: int) -> int:
        """Queued events come before dedup memory: at the cap, forget the oldest sightings
        (enough to free ``over`` bytes) before refusing or evicting events. Returns bytes freed."""
        before = store.used_bytes(conn)
        forgotten = self.sightings.forget_oldest(conn, over // DEDUP_ROW_BYTES + 1)
        if forgotten:
            self.dedup_forgotten += forgotten
            log.warning("queue at its cap: forgot the %d oldest dedup entries", forgotten)
        return max(0, before - store.used_bytes(conn))

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(DEDUP_PRUNE_INTERVAL)
            try:
                await self.prune_seen()
                await self._db.call(store.reclaim_space)
                if self.full_since is None:
                    await asyncio.to_thread(self._reserve.restore)
            except QueueError as exc:
                log.warning("queue maintenance failed: %s", exc)

    async def _checkpoint_loop(self) -> None:
        while self._checkpointer.is_open:
            await asyncio.sleep(CHECKPOINT_INTERVAL)
            try:
                await self._checkpointer.call(store.checkpoint)
            except QueueError as exc:  # PASSIVE never waits for a lock; the next one catches up
                log.debug("checkpoint skipped: %s", exc)

    async def prune_seen(self, now: float | None = None) -> int:
        if not self.config.dedup_window:
            return 0
        cutoff = (time.time() if now is None else now) - self.config.dedup_window
        return await self._db.call(self.sightings.forget_before, cutoff, DEDUP_PRUNE_CHUNK)

    async def status(self, destinations: Sequence[Live] = ()) -> StatusReport:
        return await self._reader.call(store.report, destinations, self.config.path,
                                       self.config.max_bytes, time.time())


def dedup_step(rotate: bool, compact: bool, logged: int, compacted_last: bool) -> str | None:
    """Which dedup step a commit carries ("rotate", "compact" or None), given what is due,
    the sightings memory holds and whether the last commit carried a compaction step: when
    both are due they take turns, unless memory holds more than twice a rotation's."""
    if rotate and (not compact or logged > 2 * DEDUP_ROTATE_ROWS or compacted_last):
        return "rotate"
    return "compact" if compact else None


def _create_private(path: str) -> None:
    """Create a new queue file readable by its owner only (it holds personal data); SQLite
    gives its -wal and -shm files the same mode."""
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
