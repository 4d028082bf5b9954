"""One destination's delivery loop: read the queue after its cursor, send, record progress.

The loop holds at most ``READ_AHEAD x max_events`` events in memory whatever the backlog. Batches
are sent in queue order; with ``concurrency > 1`` several are in flight at once and the
cursor still advances only over a contiguous run of finished batches. A batch is finished
when all of its events are delivered or dead-lettered; until then it is retried (see
``relay.forward.retry`` for what each answer means), so a crash can only resend batches whose
progress was not yet recorded.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import msgspec

from relay.config import MASK, DestinationConfig
from relay.errors import QueueClosed, QueueError
from relay.forward import batching
from relay.forward.ledger import Finished, Ledger
from relay.forward.pacing import Pacer
from relay.forward.retry import Action, Answer, Decision, classify, wait_time
from relay.ops.tap import Tap
from relay.plugins.api import Delivery, Outcome
from relay.plugins.pipeline import Pipeline
from relay.queue import Queue
from relay.sinks import Outgoing, Sink
from relay.types import DeadLetter, DestinationState, Live, Stored

log = logging.getLogger(__name__)
_decode = msgspec.json.Decoder(dict[str, Any]).decode


class _Routing(msgspec.Struct):
    """The one field a destination without plugins or routers is routed by."""

    integrations: Any = None


_routing = msgspec.json.Decoder(_Routing).decode
_encode = msgspec.json.Encoder().encode

IDLE_POLL = 1.0  # seconds between looks at the queue when nothing was announced
PROBE_INTERVAL = 1.0  # seconds between reachability probes while an upstream is down
STATE_PERSIST_INTERVAL = 5.0
RESTART_DELAY = 1.0
PROGRESS_RETRY_INITIAL = 0.5  # seconds before a refused progress write is tried again
PROGRESS_RETRY_MAX = 30.0
MIN_MASKED_KEY = 4  # shorter write keys are not searched for in an upstream's answer
READ_AHEAD = 4  # batches of events held in memory at most, read ahead of the sends
MAX_RESPONSE_CHARS = 4096
# upper bounds (seconds) of the request latency histogram's buckets; the last bucket is +Inf
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(slots=True)
class Counters:
    delivered: int = 0
    dead_lettered: int = 0
    retries: int = 0
    requests: int = 0
    latency_sum: float = 0.0
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    outcomes: dict[str, int] = field(default_factory=dict)  # requests by the retry decision's action
    bytes_out: int = 0  # encoded event bytes sent (before gzip), retries included

    def observe(self, seconds: float) -> None:
        """One request's latency, counted in its histogram bucket."""
        self.latency_sum += seconds
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1


class Forwarder:
    def __init__(self, config: DestinationConfig, queue: Queue, sink: Sink, pipeline: Pipeline | None = None,
                 rand: random.Random | None = None, mask: Callable[[str], str] | None = None,
                 tap: Tap | None = None) -> None:
        self.config = config
        self.tap = tap or Tap()
        self.queue = queue
        self.sink = sink
        self.pipeline = pipeline
        self.state: DestinationState = "ok"
        self.last_error: str | None = None
        self.counters = Counters()
        self._rand = rand or random.Random()
        self._pacer = Pacer(config.max_events_per_second)
        self._classify: Callable[[Answer], Decision] = getattr(sink, "classify", classify)
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._cursor = 0
        self._read_to = 0
        self._persisted: tuple[str, float] = ("ok", 0.0)
        self._ledger = Ledger()
        self._mask = mask or (lambda text: text)  # the configured secrets, as logs mask them
        self._head_seen = 0.0  # monotonic time the oldest buffered event was read

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def cursor(self) -> int:
        return self._cursor

    async def start(self, cursor: int) -> None:
        if self._task is not None:
            return
        await self.sink.start()
        self._stopping.clear()
        self._cursor = self._read_to = cursor
        self._ledger.restart(await self.queue.done_ranges(self.name), cursor)
        self._task = asyncio.create_task(self._supervise(), name=f"forward-{self.name}")

    async def stop(self, timeout: float) -> None:
        """Stop taking batches; let requests in flight finish (up to ``timeout``) and record
        their progress; then cancel whatever is left. Safe to call twice."""
        if self._task is not None:
            task, self._task = self._task, None
            self._stopping.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except TimeoutError:
                log.warning("destination did not finish in time", extra={"destination": self.name})
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self.sink.stop()

    # --- the loop ------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Run the loop; an unexpected error is logged and the loop restarts from the cursor."""
        while not self._stopping.is_set():
            try:
                await self._run()
                return
            except Exception:
                log.exception("delivery loop failed; restarting", extra={"destination": self.name})
                self.state, self.last_error = "retrying", "internal error; see the log"
                self._read_to = self._cursor
                self._ledger.restart((), self._cursor)  # read again from the cursor
                await self._pause_for(asyncio.sleep(RESTART_DELAY))

    async def _run(self) -> None:
        buffer: deque[Outgoing] = deque()
        inflight: deque[tuple[int, asyncio.Task[Finished | None]]] = deque()
        try:
            while not self._stopping.is_set():
                seen = self.queue.commit_seq
                if len(buffer) < self.config.max_events:
                    await self._fill(buffer)
                if not buffer:
                    if not inflight and self._read_to > self._cursor:
                        await self._record(self._read_to, Finished())  # only skipped events
                    await self._pause_for(self.queue.wait_for_commit(seen, IDLE_POLL))
                    await self._settle(inflight, block=False)
                    continue
                wait = self._flush_wait(buffer)
                if wait > 0:
                    await self._pause_for(self.queue.wait_for_commit(seen, wait))
                    await self._settle(inflight, block=False)
                    continue
                batch, delivery = self._next(buffer)
                delay = self._pacer.delay(len(batch), time.monotonic())
                if delay > 0:
                    await self._pause_for(asyncio.sleep(delay))
                inflight.append((batch[-1].event.id, asyncio.create_task(delivery)))
                self._ledger.sent(batch[0].event.id, batch[-1].event.id)
                full = len(inflight) >= self.config.concurrency
                if full and len(buffer) < self.config.max_events:
                    await self._fill(buffer)  # read ahead while the batch is in flight
                await self._settle(inflight, block=full)
            await self._settle(inflight, block=True, drain=True)
        except QueueClosed:
            pass
        finally:
            for _, task in inflight:
                task.cancel()
            await asyncio.gather(*(t for _, t in inflight), return_exceptions=True)

    def _next(self, buffer: deque[Outgoing]) -> tuple[list[Outgoing], Coroutine[Any, Any, Finished | None]]:
        """Take the next unit of progress off the buffer: the events it spans, in queue
        order, and the coroutine that delivers them. Usually one batch; when keys interleave
        so that the head's batch would be short, the buffered window grouped by key, one
        request per key, recorded as one unit."""
        batch = batching.take(buffer, self.config.max_events, self.config.max_bytes)
        if len(batch) < self.config.max_events and len(buffer) > len(batch):
            groups, taken = batching.by_key(buffer, self.config.max_events, self.config.max_bytes)
            if len(groups[0]) > len(batch):
                window = [buffer.popleft() for _ in range(taken)]
                return window, self._deliver_groups(groups)
        for _ in batch:
            buffer.popleft()
        return batch, self._deliver(batch)

    async def _deliver_groups(self, groups: list[list[Outgoing]]) -> Finished | None:
        """Deliver a window's key groups one after the other; None if stopped before the last
        finished (the window is then sent again after a restart, as one batch would be)."""
        done = Finished()
        for group in groups:
            part = await self._deliver(group)
            if part is None or part.cut_after is not None:
                return None
            done.add(part)
        return done

    async def _fill(self, buffer: deque[Outgoing]) -> None:
        limit = READ_AHEAD * self.config.max_events - len(buffer)
        if not buffer:
            self._head_seen = time.monotonic()
        rows, through = await self.queue.read(self.name, self._read_to, limit)
        pipeline = self.pipeline
        plain = pipeline is None or pipeline.passthrough(self.name)
        # no plugins and no routers: only ``integrations`` is read, the stored bytes go as they are
        light = not plain and pipeline is not None and pipeline.routed_by_integrations(self.name)
        for row in rows:
            if self._ledger.has_done_ranges and self._ledger.already_done(row.id):
                self._read_to = row.id
                continue
            if light and pipeline is not None:
                try:
                    integrations = _routing(row.body).integrations
                except msgspec.DecodeError:  # the full path refuses it, with the reason
                    copies = await self._through_plugins(row)
                else:
                    copies = [] if pipeline.skipped_by_integrations(self.name, integrations) else [row]
            else:
                copies = [row] if plain else await self._through_plugins(row)
            for copy in copies:
                outgoing = self._prepare(copy)
                if outgoing is not None:
                    buffer.append(outgoing)
            self._read_to = row.id
        self._read_to = max(self._read_to, through)  # past events only other destinations read

    async def _through_plugins(self, row: Stored) -> list[Stored]:
        """This destination's own copy of the event, after consent, ``integrations`` and its
        plugins: none (skipped or dropped), one, or several; refusals are dead-lettered."""
        assert self.pipeline is not None
        try:
            message = _decode(row.body)
        except msgspec.DecodeError as exc:
            self._refuse(row, f"cannot decode the stored event: {exc}")
            return []
        result = await self.pipeline.run_destination(self.name, message)
        for rejection in result.rejected:
            reason = f"refused by plugin {rejection.plugin}: {rejection.reason}"
            self._refuse(row, reason, _encode(rejection.message))
            await self.pipeline.run_after(Delivery(self.name, [rejection.message], "dead_lettered", reason))
        for drop in result.drops:
            await self.pipeline.run_after(Delivery(self.name, [drop.message], "dropped", drop.reason))
        copies = []
        for out in result.messages:
            message_id, kind = out.get("messageId"), out.get("type")
            copies.append(Stored(
                row.id, row.received_at, row.write_key,
                message_id if isinstance(message_id, str) else row.message_id,
                kind if isinstance(kind, str) else row.type, _encode(out),
            ))
        return copies

    def _prepare(self, row: Stored) -> Outgoing | None:
        try:
            return self.sink.prepare(row)
        except Exception as exc:  # an event this destination cannot encode: dead-letter it
            log.warning("cannot prepare event", extra={"destination": self.name, "error": str(exc)})
            self._refuse(row, f"cannot prepare: {exc}")
            return None

    def _refuse(self, row: Stored, reason: str, body: bytes | None = None) -> None:
        """Dead-letter this destination's copy once the cursor passes it (see ``_record``)."""
        letter = DeadLetter(reason=reason, write_key=row.write_key, body=row.body if body is None else body,
                            message_id=row.message_id, received_at=row.received_at,
                            destination=self.name)
        self._ledger.refuse(row.id, letter)
        if self.tap.watched:
            self.tap.outcome(self.name, [row], "dead_lettered", {"reason": reason, "at": time.time()})

    def _flush_wait(self, buffer: deque[Outgoing]) -> float:
        """Seconds a partial batch may still wait for more events."""
        if len(buffer) >= self.config.max_events:
            return 0.0
        if sum(o.size for o in buffer) >= self.config.max_bytes:
            return 0.0
        # The event's age on the wall clock, but never less than the time since the loop read
        # it (a monotonic clock): a clock stepped back must not hold a batch back by the step.
        age = max(time.time() - buffer[0].event.received_at, time.monotonic() - self._head_seen)
        return max(0.0, self.config.flush_interval - age)

    async def _pause_for(self, awaitable: Any) -> None:
        """Await ``awaitable`` unless a stop comes first."""
        waiter = asyncio.ensure_future(awaitable)
        stopper = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in (waiter, stopper):
                if not fut.done():
                    fut.cancel()
            await asyncio.gather(waiter, stopper, return_exceptions=True)

    async def _settle(self, inflight: deque[tuple[int, asyncio.Task[Finished | None]]],
                      block: bool, drain: bool = False) -> None:
        """Record progress for the finished batches at the head of ``inflight``."""
        while inflight:
            through, task = inflight[0]
            if not task.done():
                if not (block or drain):
                    return
                await asyncio.wait({task})
                block = False
            inflight.popleft()
            finished = task.result()
            if finished is None or finished.cut_after is not None:
                # stopped before it finished: what is unfinished is sent after a restart
                if finished is not None and finished.cut_after is not None:
                    await self._record(finished.cut_after, finished)
                self._ledger.settled(through)
                await self._keep_finished_beyond(inflight)
                return
            self._ledger.settled(through)
            await self._record(through, finished)

    async def _keep_finished_beyond(self, inflight: deque[tuple[int, asyncio.Task[Finished | None]]]) -> None:
        """At a stop, batches behind an unfinished one may be finished (concurrency > 1):
        record their ranges so that a restart does not send them again."""
        while inflight:
            through, task = inflight.popleft()
            await asyncio.wait({task})  # a stop makes each finish its attempt in flight, or give up
            finished = None if task.cancelled() or task.exception() else task.result()
            if finished is None:
                continue
            last = finished.cut_after if finished.cut_after is not None else through
            first = self._ledger.settled(through)
            if first is None or last < first:
                continue
            dead = [*self._ledger.refused_between(first, last), *finished.dead]
            await self._persist(partial(self.queue.record_done_range, self.name, first, last,
                                        finished.delivered, dead))
            self.counters.delivered += finished.delivered
            self.counters.dead_lettered += len(dead)

    async def _record(self, through: int, finished: Finished) -> None:
        refused = self._ledger.refused_through(through)  # those the cursor passes; others come later
        dead = [*refused, *finished.dead] if refused else finished.dead
        await self._persist(partial(self.queue.record_progress, self.name, through, finished.delivered, dead))
        self._cursor = max(self._cursor, through)
        self.counters.delivered += finished.delivered
        self.counters.dead_lettered += len(dead)

    async def _persist(self, write: Callable[[], Awaitable[None]]) -> None:
        """Record a finished batch's progress, however long the queue refuses it: the batch
        is delivered, so it is remembered here and the write retried with backoff before
        anything else is sent (sending on from the old cursor would deliver it again). A
        stop gives up; the batch then counts as in flight and is sent again after a restart."""
        attempt = 0
        while True:
            try:
                await asyncio.shield(write())
                if attempt:
                    log.info("progress recorded again", extra={"destination": self.name})
                return
            except QueueClosed:
                raise
            except QueueError as exc:
                if self._stopping.is_set():
                    raise QueueClosed("stopped while the queue refused progress") from exc
                if not attempt:
                    log.warning("cannot record progress; kept in memory and retried before sending more",
                                extra={"destination": self.name, "error": str(exc)})
                self.state, self.last_error = "retrying", f"cannot record progress: {exc}"
                wait = wait_time(attempt, PROGRESS_RETRY_INITIAL, PROGRESS_RETRY_MAX, None, self._rand)
                attempt += 1
                await self._pause_for(asyncio.sleep(wait))

    # --- one batch ------------------------------------------------------------------------------

    async def _deliver(self, batch: list[Outgoing]) -> Finished | None:
        """Send until every event of ``batch`` is delivered or dead-lettered; None if stopped
        first, or a result with ``cut_after`` if stopped after part of a split batch finished."""
        done = Finished()
        attempt = 0
        last: Answer | None = None
        began = time.monotonic()
        while True:
            if self.config.max_age and last is not None:
                batch = self._expire(batch, last, attempt, done)
                if not batch:
                    return done
            if self._stopping.is_set():
                return None
            started = time.monotonic()
            answer = await self.sink.send(batch)
            self.counters.requests += 1
            self.counters.observe(time.monotonic() - started)
            decision = self._classify(answer)
            outcome = decision.action.value
            self.counters.outcomes[outcome] = self.counters.outcomes.get(outcome, 0) + 1
            self.counters.bytes_out += sum(item.size for item in batch)
            if decision.action is Action.DELIVERED:
                await self._set_state("ok", None)
                done.delivered += len(batch)
                if self.tap.watched:
                    self.tap.outcome(self.name, [o.event for o in batch], "delivered", {
                        "status": answer.status, "attempts": attempt + 1, "at": time.time(),
                        "seconds": round(time.monotonic() - began, 4)})
                await self._tell_after(batch, "delivered")
                return done
            last = answer
            if decision.action in (Action.SPLIT, Action.REJECT):
                if len(batch) == 1:
                    letters = self._dead_letter(batch, answer, attempt + 1)
                    done.add_dead(batch, letters)
                    if self.tap.watched:
                        self.tap.outcome(self.name, [batch[0].event], "dead_lettered", {
                            "reason": letters[0].reason, "status": answer.status, "attempts": attempt + 1,
                            "at": time.time()})
                    await self._tell_after(batch, "dead_lettered", letters[0].reason)
                    return done
                finished_through: int | None = None  # the halves are prefixes, in queue order
                for half in batching.halves(batch):
                    part = await self._deliver(half)
                    if part is None:
                        return done.cut(finished_through)
                    done.add(part)
                    if part.cut_after is not None:
                        return done.cut(part.cut_after)
                    finished_through = half[-1].event.id
                return done
            state: DestinationState = "paused" if decision.action is Action.PAUSE else "retrying"
            self.counters.retries += 1  # before awaiting the state write: a reader sees both or neither
            await self._set_state(state, self._describe(answer, batch))
            if self.tap.watched:
                self.tap.outcome(self.name, [o.event for o in batch], "retrying", {
                    "error": self._describe(answer, batch), "status": answer.status,
                    "attempts": attempt + 1, "at": time.time()})
            wait = wait_time(attempt, self.config.retry_initial, self.config.retry_max,
                             answer.retry_after, self._rand)
            attempt += decision.counts_as_attempt
            log.info("retrying", extra={"destination": self.name, "state": state,
                                        "error": self._describe(answer, batch), "wait_s": round(wait, 3)})
            await self._wait_to_retry(wait, probe=answer.status is None)

    async def _tell_after(self, batch: Sequence[Outgoing], outcome: Outcome,
                          reason: str | None = None) -> None:
        """``after`` plugins see each delivery's outcome (they never hold it up by failing)."""
        if self.pipeline is None or not self.pipeline.wants_deliveries:
            return
        messages = [_decode(o.event.body) for o in batch]
        await self.pipeline.run_after(Delivery(self.name, messages, outcome, reason))

    async def _wait_to_retry(self, wait: float, probe: bool) -> None:
        """Sleep ``wait`` seconds (less if stopping); after a failure without an answer, end
        the wait early once an upstream that did not accept connections accepts them again.
        One that still accepts them (it timed out, reset the connection) gets the full backoff."""
        deadline = time.monotonic() + wait
        unreachable = probe and not await self.sink.probe()
        while not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            step = min(left, PROBE_INTERVAL) if unreachable else left
            await self._pause_for(asyncio.sleep(step))
            if unreachable and not self._stopping.is_set() and await self.sink.probe():
                return

    def _expire(self, batch: list[Outgoing], last: Answer, attempts: int, done: Finished) -> list[Outgoing]:
        cutoff = time.time() - self.config.max_age
        expired = [o for o in batch if o.event.received_at < cutoff]
        if expired:
            reason = f"not delivered within max_age {self.config.max_age:g} s"
            done.add_dead(expired, self._dead_letter(expired, last, attempts, reason))
            if self.tap.watched:
                self.tap.outcome(self.name, [o.event for o in expired], "dead_lettered",
                                 {"reason": reason, "attempts": attempts, "at": time.time()})
            return [o for o in batch if o.event.received_at >= cutoff]
        return batch

    def _describe(self, answer: Answer, batch: Sequence[Outgoing]) -> str:
        """The answer for a log line, ``last_error`` or a dead letter, with the batch's write
        keys and the configured secrets masked: an upstream may echo the key it refused."""
        text = answer.describe()
        for key in {o.key for o in batch} | {o.event.write_key for o in batch}:
            if len(key) >= MIN_MASKED_KEY:
                text = text.replace(key, MASK)
        return self._mask(text)

    def _dead_letter(self, batch: Sequence[Outgoing], answer: Answer, attempts: int,
                     reason: str | None = None) -> list[DeadLetter]:
        why = reason or f"rejected by {self.name}"
        return [
            DeadLetter(
                reason=f"{why}: {self._describe(answer, batch)}",
                write_key=o.event.write_key,
                body=o.event.body,
                message_id=o.event.message_id,
                received_at=o.event.received_at,
                destination=self.name,
                status=answer.status,
                response=(answer.body or answer.error or "")[:MAX_RESPONSE_CHARS],
                attempts=attempts,
            )
            for o in batch
        ]

    async def _set_state(self, state: DestinationState, error: str | None) -> None:
        changed = state != self.state
        self.state = state
        if error is not None:
            self.last_error = error
        now = time.monotonic()
        if changed or (error and now - self._persisted[1] > STATE_PERSIST_INTERVAL):
            self._persisted = (state, now)
            if changed:
                log.warning("destination state", extra={"destination": self.name, "state": state,
                                                       "error": error})
            try:
                await self.queue.set_state(self.name, state, error)
            except QueueError as exc:  # the state is shown from memory; persisting it is best effort
                log.debug("destination state not persisted: %s", exc)

    def live(self) -> Live:
        """What a status read takes from this running loop: its state and last error."""
        return Live(self.name, self.config.type, self.state, self.last_error)
