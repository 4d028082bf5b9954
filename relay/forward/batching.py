"""Cutting the queue into upstream requests: a pure policy.

A batch holds at most ``max_events`` events and ``max_bytes`` of encoded events, never
mixes keys (a Segment batch carries one write key), and keeps queue order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, TypeVar


class Sized(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def size(self) -> int: ...


S = TypeVar("S", bound=Sized)
# JSON punctuation and fields around the events in a batch body (sentAt, ...), besides the key.
ENVELOPE_BYTES = 128


def take(items: Iterable[S], max_events: int, max_bytes: int) -> list[S]:
    """The longest prefix of ``items`` that fits one request (at least one item)."""
    batch: list[S] = []
    total = ENVELOPE_BYTES
    for item in items:
        if not batch:
            total += len(item.key.encode())  # the body names the batch's key once
        elif len(batch) >= max_events or item.key != batch[0].key or total + item.size + 1 > max_bytes:
            break
        batch.append(item)
        total += item.size + 1
    return batch


def halves(items: Sequence[S]) -> tuple[list[S], list[S]]:
    middle = len(items) // 2
    return list(items[:middle]), list(items[middle:])
