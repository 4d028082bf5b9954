"""Per-second series for the debugger's charts and ``relay top``: the last 15 minutes of
events received, delivered per destination, and queue depth.

One task samples the relay's own counters once a second (the queue depth from a status read
on the queue's reader connection); nothing on the ingest or delivery path writes here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from relay.errors import QueueError
from relay.types import StatusReport

log = logging.getLogger(__name__)

WINDOW = 15 * 60  # seconds kept
INTERVAL = 1.0


class Counted(Protocol):
    """A destination as the series reads it (a Forwarder)."""

    @property
    def name(self) -> str: ...

    @property
    def state(self) -> str: ...

    @property
    def last_error(self) -> str | None: ...

    @property
    def counters(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # wall clock, seconds
    received: int  # events received during the second before
    delivered: Mapping[str, int]
    depth: int | None  # events in the queue; None when the queue could not be read


class Series:
    def __init__(self, received: Callable[[], int], destinations: Callable[[], Sequence[Counted]],
                 status: Callable[[], Any], window: int = WINDOW) -> None:
        self._received = received
        self._destinations = destinations
        self._status = status
        self.samples: deque[Sample] = deque(maxlen=window)
        self._last: tuple[int, dict[str, int]] | None = None
        self._task: asyncio.Task[None] | None = None
        self.oldest_age_s: float | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="debugger-series")

    async def stop(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        next_at = time.monotonic()
        while True:
            await self.sample()
            next_at += INTERVAL
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def sample(self) -> None:
        received = self._received()
        delivered = {d.name: int(d.counters.delivered) for d in self._destinations()}
        depth: int | None = None
        try:
            report: StatusReport = await self._status()
            depth = report.queue.events
            self.oldest_age_s = report.queue.oldest_age_s
        except QueueError as exc:
            log.debug("series without the queue depth: %s", exc)
        if self._last is not None:
            before_received, before = self._last
            self.samples.append(Sample(
                at=round(time.time(), 3),
                received=max(0, received - before_received),
                delivered={name: max(0, count - before.get(name, count))
                           for name, count in delivered.items()},
                depth=depth,
            ))
        self._last = (received, delivered)

    def report(self) -> dict[str, Any]:
        """What ``/debugger/series`` answers."""
        destinations = list(self._destinations())
        return {
            "interval": INTERVAL,
            "window": self.samples.maxlen,
            "samples": [{"at": s.at, "received": s.received, "delivered": dict(s.delivered), "depth": s.depth}
                        for s in self.samples],
            "oldest_age_s": self.oldest_age_s,
            "received_total": self._received(),
            "destinations": [
                {"name": d.name, "state": d.state, "last_error": d.last_error,
                 "delivered": d.counters.delivered, "dead_lettered": d.counters.dead_lettered,
                 "retries": d.counters.retries, "requests": d.counters.requests}
                for d in destinations
            ],
        }
