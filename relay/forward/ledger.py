"""A destination's progress bookkeeping, as pure data: what is finished and where the cursor may go.

The forwarder sends batches in queue order, several at once with ``concurrency > 1``; the
cursor moves only over a contiguous run of finished batches. The ledger keeps:

- ``Finished``: what became of one batch (delivered count, dead letters with their queue ids,
  and ``cut_after`` when a stop cut a split batch short);
- the batches in flight, last id -> first id;
- the id ranges finished beyond the cursor before a restart (skipped when read again);
- the copies this destination refused before sending (a plugin refused them, or they could
  not be prepared): dead-lettered once the cursor passes them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from relay.sinks import Outgoing
from relay.types import DeadLetter


@dataclass(slots=True)
class Finished:
    """What became of a batch. ``cut_after`` is set when a stop cut a split batch short: the
    queue id of the last event of its finished prefix (the rest is read again after a restart)."""

    delivered: int = 0
    dead: list[DeadLetter] = field(default_factory=list)
    dead_ids: list[int] = field(default_factory=list)  # the queue id of each of ``dead``
    cut_after: int | None = None

    def add(self, other: Finished) -> None:
        self.delivered += other.delivered
        self.dead.extend(other.dead)
        self.dead_ids.extend(other.dead_ids)

    def add_dead(self, batch: Sequence[Outgoing], letters: Sequence[DeadLetter]) -> None:
        self.dead.extend(letters)
        self.dead_ids.extend(o.event.id for o in batch)

    def cut(self, through: int | None) -> Finished | None:
        """Keep only what is finished at or below ``through``; None when nothing is."""
        if through is None:
            return None
        kept = [(i, d) for i, d in zip(self.dead_ids, self.dead, strict=True) if i <= through]
        self.dead_ids, self.dead = [i for i, _ in kept], [d for _, d in kept]
        self.cut_after = through
        return self


class Ledger:
    def __init__(self) -> None:
        self._starts: dict[int, int] = {}  # in flight: last id -> first id
        self._done: list[tuple[int, int]] = []  # id ranges finished beyond the cursor, in order
        self._refused: list[tuple[int, DeadLetter]] = []  # (queue id, letter), not yet recorded

    def restart(self, done: Iterable[tuple[int, int]], cursor: int) -> None:
        """Start over from ``cursor``, with the ranges a clean stop recorded beyond it."""
        self._starts.clear()
        self._refused.clear()
        self._done = sorted(r for r in done if r[1] > cursor)

    # --- batches in flight ---------------------------------------------------------------------

    def sent(self, first: int, last: int) -> None:
        self._starts[last] = first

    def settled(self, last: int) -> int | None:
        """The batch ending at ``last`` is no longer in flight; its first id."""
        return self._starts.pop(last, None)

    # --- ranges finished before a restart ------------------------------------------------------

    def already_done(self, event_id: int) -> bool:
        """True when ``event_id`` lies in a range finished beyond the cursor (ids are asked in
        increasing order, so ranges behind it are forgotten)."""
        while self._done and self._done[0][1] < event_id:
            self._done.pop(0)
        return bool(self._done) and self._done[0][0] <= event_id

    @property
    def has_done_ranges(self) -> bool:
        return bool(self._done)

    # --- copies refused before sending ---------------------------------------------------------

    def refuse(self, event_id: int, letter: DeadLetter) -> None:
        self._refused.append((event_id, letter))

    def refused_through(self, through: int) -> list[DeadLetter]:
        """The refused copies the cursor passes when it moves to ``through``, taken out."""
        if not self._refused:
            return []
        ready = [d for i, d in self._refused if i <= through]
        self._refused = [(i, d) for i, d in self._refused if i > through]
        return ready

    def refused_between(self, first: int, last: int) -> list[DeadLetter]:
        """The refused copies inside one finished batch's range, taken out."""
        inside = [d for i, d in self._refused if first <= i <= last]
        self._refused = [(i, d) for i, d in self._refused if not first <= i <= last]
        return inside
