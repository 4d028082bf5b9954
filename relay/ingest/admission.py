"""Admission: what a message must pass before it is stored, the same for every way in.

normalise (the protocol's checks and the relay's fields) -> the ``before`` and
``enrichment`` plugins -> the size check -> an event to store, or a dead letter with the
reason. The HTTP routes, a replay of ingest dead letters and the stream sources all admit
through ``admit``; none of them checks a message any other way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from relay.errors import InvalidMessage
from relay.ingest.normalise import MESSAGE_TYPES, check_size, normalise
from relay.plugins import paths
from relay.plugins.pipeline import Pipeline, Trace
from relay.types import Arrival, DeadLetter, Event

MAX_REPORTED_ERRORS = 20
_encode = msgspec.json.Encoder().encode


@dataclass(slots=True)
class Admitted:
    """What a request's messages became: events to store, dead letters, reported errors
    (at most ``MAX_REPORTED_ERRORS``, each with the message's index in a batch)."""

    events: list[Event] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    drops: list[tuple[str, str, Any]] = field(default_factory=list)  # (plugin, reason, message), for the tap
    # For the tap, when given: messageId -> the paths the ingest plugins removed, added, changed.
    changes: dict[str, dict[str, Any]] | None = None

    def refuse(self, message: object, arrival: Arrival, reason: str, index: int | None = None) -> None:
        letter = dead_letter(message, arrival, reason)
        self.dead.append(letter)
        if len(self.errors) < MAX_REPORTED_ERRORS:
            error: dict[str, Any] = {"messageId": letter.message_id, "reason": reason}
            if index is not None:
                error["index"] = index
            self.errors.append(error)


async def admit(messages: Sequence[object], arrival: Arrival, pipeline: Pipeline | None,
                admitted: Admitted | None = None, *, type_hint: str | None = None,
                indexed: bool = False, strict: bool = False) -> Admitted:
    """Validate and normalise each message, run the ingest plugins on it, and add what
    comes out to ``admitted``: events to store, or dead letters with the reason (and the
    message's index in the batch when ``indexed``). With ``strict`` (single-message
    routes) a protocol fault raises InvalidMessage instead. Without ingest plugins no
    coroutine is awaited per message."""
    admitted = Admitted() if admitted is None else admitted
    plugins = pipeline if pipeline is not None and pipeline.runs_at_ingest else None
    for position, message in enumerate(messages):
        index = position if indexed else None
        try:
            event = normalise(message, arrival, type_hint)
            if plugins is None:
                check_size(event.encode())
                admitted.events.append(event)
                continue
        except InvalidMessage as exc:
            if strict:
                raise
            await refuse(message, arrival, pipeline, admitted, str(exc), index)
            continue
        before = None if admitted.changes is None else paths.leaves(event.body)
        steps: Trace | None = None if before is None else []
        events, refused = await through_ingest_plugins(plugins, event, arrival, admitted.drops, steps)
        if before is not None and admitted.changes is not None:
            for out in events:
                change = paths.changed(before, paths.leaves(out.body))
                if change:  # the chain's change, and each plugin's own (when it stayed one message)
                    admitted.changes[out.message_id] = {"plugins": plugins.ingest_plugins, **change,
                                                        "steps": steps or []}
        admitted.events.extend(events)
        for body, reason in refused:
            admitted.refuse(body, arrival, reason, index)
    return admitted


async def refuse(message: object, arrival: Arrival, pipeline: Pipeline | None, admitted: Admitted,
                 reason: str, index: int | None = None) -> None:
    """Dead-letter a message that failed the protocol's checks; what a scrubbing plugin
    (privacy) removes is not stored, not even in a dead letter."""
    if pipeline is not None:
        message = await pipeline.scrub(message)
    admitted.refuse(message, arrival, reason, index)


async def through_ingest_plugins(
    pipeline: Pipeline, event: Event, arrival: Arrival, drops: list[tuple[str, str, Any]] | None = None,
    trace: Trace | None = None,
) -> tuple[list[Event], list[tuple[object, str]]]:
    """Run the ``before`` and ``enrichment`` plugins on a normalised event: the events to
    store (checked again, encoded), and the messages refused with the reason (and, into
    ``drops``, those a plugin dropped on purpose)."""
    result = await pipeline.run_ingest(event.body, trace)
    if drops is not None:
        drops.extend((d.plugin, d.reason, d.message) for d in result.drops)
    refused: list[tuple[object, str]] = [
        (r.message, f"refused by plugin {r.plugin}: {r.reason}") for r in result.rejected
    ]
    events: list[Event] = []
    for body in result.messages:
        try:
            out = _rewrap(event, body) if body is event.body else normalise(body, arrival)
            check_size(out.encode())
        except InvalidMessage as exc:
            refused.append((body, f"after the ingest plugins: {exc}"))
            continue
        events.append(out)
    return events, refused


def _rewrap(event: Event, body: dict[str, Any]) -> Event:
    """The envelope again after plugins changed the message in place."""
    kind, message_id = body.get("type"), body.get("messageId")
    if kind not in MESSAGE_TYPES or not isinstance(message_id, str) or not message_id:
        raise InvalidMessage("a plugin left the message without a valid type or messageId")
    if kind != event.type or message_id != event.message_id:
        return Event(message_id, event.write_key, kind, event.received_at, body)
    event.data = b""  # the plugins may have changed the body since it was last encoded
    return event


def dead_letter(message: object, arrival: Arrival, reason: str) -> DeadLetter:
    message_id = message.get("messageId") if isinstance(message, dict) else None
    return DeadLetter(
        reason=reason,
        write_key=arrival.write_key,
        body=_encode(message),
        message_id=message_id if isinstance(message_id, str) else None,
        received_at=arrival.received_at.timestamp(),
    )
