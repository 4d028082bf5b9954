"""Cutting the queue into upstream requests: a pure policy.

A batch holds at most ``max_events`` events and ``max_bytes`` of encoded events, never
mixes keys (a Segment batch carries one write key), and keeps queue order. When many keys
interleave, ``by_key`` groups a window of the queue by key instead, so that each request
still carries many events; order is kept within each key.
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


def by_key(items: Sequence[S], max_events: int, max_bytes: int) -> tuple[list[list[S]], int]:
    """The longest prefix of ``items`` whose events, grouped by key, fit one request per key;
    the groups (in order of each key's first event, queue order within a group) and the
    length of that prefix (at least one item)."""
    groups: dict[str, list[S]] = {}
    sizes: dict[str, int] = {}
    for taken, item in enumerate(items):
        group = groups.get(item.key)
        if group is None:
            group = groups[item.key] = []
            sizes[item.key] = ENVELOPE_BYTES + len(item.key.encode())
        elif len(group) >= max_events or sizes[item.key] + item.size + 1 > max_bytes:
            return list(groups.values()), taken
        group.append(item)
        sizes[item.key] += item.size + 1
    return list(groups.values()), len(items)


def halves(items: Sequence[S]) -> tuple[list[S], list[S]]:
    middle = len(items) // 2
    return list(items[:middle]), list(items[middle:])
