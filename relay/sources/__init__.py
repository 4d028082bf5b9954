"""Sources: where the relay takes events from besides its HTTP listener (a stream's consumer).

A source is started after the queue and the ingest plugins and stopped before them; each
message it takes goes through ``relay.ingest.admission`` like an HTTP request's, and is
acknowledged to its origin only after the queue's transaction committed.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from relay.config import SourceConfig
from relay.types import AppendResult, Arrival


class Source(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


# What a source hands over: groups of messages, each with the Arrival they share (its write
# key above all); the relay admits and stores them in one queue transaction and returns
# once it committed (raising QueueFull, QueueClosed or QueueError when it did not).
Intake = Callable[[Sequence[tuple[Sequence[object], Arrival]]], Awaitable[AppendResult]]

# type name -> "module:Class"; a class is built with (SourceConfig, Intake) and raises
# ValueError naming the option when ``config.options`` is wrong.
SOURCE_TYPES: dict[str, str] = {
    "nats": "relay.sources.nats:NatsSource",
}


def _factory(config: SourceConfig) -> Any:
    spec = SOURCE_TYPES.get(config.type)
    if spec is None:
        raise ValueError(f"unknown source type {config.type!r}; known: {', '.join(sorted(SOURCE_TYPES))}")
    module_name, _, class_name = spec.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def make_source(config: SourceConfig, intake: Intake) -> Source:
    source: Source = _factory(config)(config, intake)
    return source


def check_source(config: SourceConfig) -> None:
    """A ValueError naming the key when the source's type or options are wrong."""
    _factory(config).check(config)
