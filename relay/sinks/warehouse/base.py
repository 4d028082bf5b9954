"""What the warehouse types share: options, mapping events to rows, and loads run one at a time.

Events wait for their load as the bytes the queue holds; a load maps them into rows (off the
event loop, with its memory gone once the load is done). An event that cannot be mapped
fails its load with a 400 answer, so that the forwarder bisects the batch and dead-letters
that event alone, with the reason. ``send`` hands its batch to the loader and waits for the
load that holds it to commit: batches that arrive while a load runs (``concurrency > 1``) go
into the next load together, so a load is one transaction over all of them. ``send`` answers
only after the commit, and the forwarder records progress only after ``send`` answers, so a
crash can only make the forwarder send again what the warehouse may already hold, which the
``id`` key (or, for Parquet, the load journal) keeps from being written twice.

A backend's ``_load`` answers 200 once committed; ``Answer(None, error)`` for what passes
(a lock, a connection, the disk): retried, never failed; ``Answer(400, body)`` for data the
engine refuses, which makes the forwarder bisect the batch and dead-letter only that event.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

import msgspec

from relay import timestamps
from relay.config import DestinationConfig
from relay.forward.retry import Answer
from relay.sinks import Outgoing
from relay.sinks.warehouse import schema
from relay.sinks.warehouse.columns import Builder
from relay.sinks.warehouse.load import Catalog, Mapped, Plan, plan_columns
from relay.types import Stored

DEFAULT_SCHEMA = "events"
EXTRA = "warehouse"
MAX_LOAD_EVENTS = 20_000  # events in one load at most, whatever ``concurrency`` lets arrive

_decode = msgspec.json.Decoder(dict[str, Any]).decode


class WarehouseOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    schemas: dict[str, str] = msgspec.field(default_factory=dict)  # write key -> schema name
    default_schema: str = DEFAULT_SCHEMA  # the schema of every write key not in ``schemas``


def require(*modules: str, type_name: str) -> None:
    """A ValueError naming the extra to install when a library the type needs is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"type {type_name} needs the Python package(s) {', '.join(missing)}: "
                         f"install the relay with its `{EXTRA}` extra (pip install 'relay[{EXTRA}]')")


def schema_names(options: WarehouseOptions) -> dict[str, str]:
    if schema.schema_name(options.default_schema) is None:
        raise ValueError(f"`options.default_schema`: {options.default_schema!r} is not a usable schema name "
                         "(lowercase letters, digits and single underscores, not a reserved word)")
    for name in options.schemas.values():
        if schema.schema_name(name) is None:
            raise ValueError(f"`options.schemas`: the schema {name!r} (for a write key) is not a usable "
                             "schema name (lowercase letters, digits and single underscores)")
    return dict(options.schemas)


class Unmappable(ValueError):
    """An event that has no warehouse rows (``properties`` not an object, a track without a name)."""


def _received(event: Stored, message: dict[str, Any]) -> str | None:
    """The queue's receive time for a message that has no ``receivedAt`` of its own."""
    return None if "receivedAt" in message else timestamps.iso(timestamps.from_epoch(event.received_at))


def mapped(events: Sequence[Stored], schema_for: Any) -> list[Mapped]:
    """The events as rows of their schemas; Unmappable names the first that cannot be mapped."""
    out = []
    for event in events:
        try:
            message = _decode(event.body)
            rows = schema.map_message(message, _received(event, message))
        except (ValueError, msgspec.DecodeError) as exc:
            raise Unmappable(f"event {event.message_id} cannot be loaded: {exc}") from None
        out.append(Mapped(schema_for(event.write_key), str(rows[0][1]["id"]), rows))
    return out


def built(events: Sequence[Stored], schema_for: Any) -> Builder:
    """The events as the columns of their schemas' tables (each body decoded once, no dict per
    row); Unmappable names the first that cannot be mapped."""
    builder = Builder()
    add = builder.add_json
    for event in events:
        try:
            add(schema_for(event.write_key), event.body, event.received_at)
        except (ValueError, msgspec.DecodeError) as exc:
            raise Unmappable(f"event {event.message_id} cannot be loaded: {exc}") from None
    return builder


class WarehouseSink:
    type_name: ClassVar[str]

    def __init__(self, config: DestinationConfig, options: WarehouseOptions) -> None:
        self.config = config
        self.schemas = schema_names(options)
        self.default_schema = options.default_schema
        self._pending: list[tuple[list[Stored], asyncio.Future[Answer]]] = []
        self._loader: asyncio.Task[None] | None = None

    def schema_for(self, write_key: str) -> str:
        return self.schemas.get(write_key, self.default_schema)

    def prepare(self, event: Stored) -> Outgoing:
        # no bytes of its own: a load is sized by ``max_events`` alone, not by ``max_bytes``
        # (a limit for HTTP requests); the body is read from the event when it is loaded
        return Outgoing(event, b"", "")

    def mapped(self, events: Sequence[Stored]) -> list[Mapped]:
        return mapped(events, self.schema_for)

    def plan(self, events: Sequence[Stored], catalog: Catalog, loaded_at: datetime) -> Plan:
        """The load of these events against what the destination holds (Unmappable if one
        cannot be mapped)."""
        return plan_columns(built(events, self.schema_for).tables.values(), catalog, loaded_at)

    async def send(self, batch: Sequence[Outgoing]) -> Answer:
        items = [o.event for o in batch]
        done: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._pending.append((items, done))
        if self._loader is None or self._loader.done():
            self._loader = asyncio.create_task(self._drain(), name=f"load-{self.config.name}")
        return await asyncio.shield(done)  # a cancelled send leaves the load to finish

    async def _drain(self) -> None:
        while self._pending:
            take: list[tuple[list[Stored], asyncio.Future[Answer]]] = []
            count = 0
            while self._pending and (not take or count + len(self._pending[0][0]) <= MAX_LOAD_EVENTS):
                items, done = self._pending.pop(0)
                take.append((items, done))
                count += len(items)
            try:
                answer = await self._load([items for items, _ in take])
                if answer.status == 400 and len(take) > 1:  # each batch on its own, for its own answer
                    for items, done in take:
                        _answer(done, await self._load([items]))
                    continue
            except Exception as exc:  # a fault of the relay's own: retried, and logged by the forwarder
                answer = Answer(None, error=f"load failed: {type(exc).__name__}: {exc}")
            for _, done in take:
                _answer(done, answer)

    async def stop(self) -> None:
        """Let a load in flight finish (its data is then committed whether or not recorded)."""
        if self._loader is not None:
            await asyncio.gather(self._loader, return_exceptions=True)
            self._loader = None

    async def _load(self, batches: list[list[Stored]]) -> Answer:
        """Load the batches in one transaction, mapping and writing one batch at a time (so
        memory holds the rows of one batch, whatever ``concurrency``, but for DuckDB's
        ``users``, ``accounts`` and ``discards``, held until the load's one merge of each); the
        answer says how it went."""
        raise NotImplementedError


def _answer(done: asyncio.Future[Answer], answer: Answer) -> None:
    if not done.done():
        done.set_result(answer)


def now() -> datetime:
    return datetime.now(UTC)
