"""The shared vocabulary: what flows between the stages, and the status every reader shows.

    Arrival      what one request says about all of its messages
    Event        one accepted message, normalised, on its way into the queue
    Stored       an event read back from the queue
    DeadLetter   a message refused at ingest or by a destination, with the reason
    AppendResult what one request's append to the queue became
    StatusReport the queue's figures and each destination's (``relay status``, ``/status``,
                 the metrics and systemd's STATUS= all read this one struct)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple

import msgspec

from relay import timestamps
from relay.errors import InvalidMessage

_encoder = msgspec.json.Encoder()
_decode_body = msgspec.json.Decoder(dict[str, Any]).decode

DestinationState = Literal["ok", "retrying", "paused"]
DESTINATION_STATES: tuple[DestinationState, ...] = ("ok", "retrying", "paused")


class _Envelope(msgspec.Struct, gc=False):
    message_id: str
    write_key: str
    type: str
    received_at: float
    body: dict[str, Any] | None = None
    data: bytes = b""  # the body as stored, encoded once by ``encode``


_BODY = _Envelope.__dict__["body"]  # the slot that holds the body, under Event's property


class Event(_Envelope, gc=False):
    """One accepted message and the facts the relay keeps beside it.

    Built either from the message as a dict (``body``), encoded on first ``encode``; or
    from its final bytes (``data``, the typed ingest path), decoded on first read of
    ``body``. Either way ``body`` is the dict and ``encode()`` the bytes. (A Struct, not a
    slotted class: one is built for every event, and msgspec builds it three times faster;
    the property over the field keeps ``Event(..., body=...)`` working.)"""

    @property  # type: ignore[misc]  # (mypy reads a Struct as a dataclass: a property over a field)
    def body(self) -> dict[str, Any]:
        body: dict[str, Any] | None = _BODY.__get__(self, _Envelope)
        if body is None:
            body = _decode_body(self.data)
            _BODY.__set__(self, body)
        return body

    @body.setter
    def body(self, value: dict[str, Any]) -> None:
        _BODY.__set__(self, value)

    def encode(self) -> bytes:
        if not self.data:
            self.data = _encoder.encode(self.body)
        return self.data


class Arrival:
    """What one request says about all of its messages (read-only by convention; a plain
    slotted class, because one is built for every request)."""

    __slots__ = (
        "batch_sent_at",
        "batch_sent_iso",
        "context",
        "integrations",
        "peer_ip",
        "received_at",
        "received_iso",
        "received_ts",
        "sent_at",
        "write_key",
    )

    def __init__(self, write_key: str, received_at: datetime, peer_ip: str | None = None,
                 sent_at: object = None, context: dict[str, Any] | None = None,
                 integrations: dict[str, Any] | None = None, received_iso: str | None = None) -> None:
        self.write_key = write_key
        self.received_at = received_at
        self.peer_ip = peer_ip
        self.sent_at = sent_at
        self.context = context
        self.integrations = integrations
        self.received_iso: str = received_iso or timestamps.iso(received_at)
        self.received_ts: float = received_at.timestamp()
        # None too when sent_at is unreadable (each message's own sentAt is then used)
        self.batch_sent_at: datetime | None = None
        self.batch_sent_iso = ""
        if timestamps.given(sent_at):
            try:
                self.batch_sent_at = timestamps.field_time(sent_at, "sentAt")
            except InvalidMessage:
                return
            self.batch_sent_iso = timestamps.canonical(sent_at, self.batch_sent_at)


class Stored(NamedTuple):
    """An event read back from the queue (a named tuple: a backlog is read a million at a
    time, and a tuple is built three times faster than a frozen dataclass)."""

    id: int
    received_at: float
    write_key: str
    message_id: str
    type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: str
    write_key: str
    body: bytes
    message_id: str | None = None
    received_at: float | None = None
    destination: str | None = None
    status: int | None = None
    response: str | None = None
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class AppendResult:
    stored: int
    duplicates: int
    dead_lettered: int
    # Only when some were duplicates: for each event appended, True if it was stored.
    first_sightings: tuple[bool, ...] | None = None


class QueueFigures(msgspec.Struct, kw_only=True):
    """``bytes`` is the file's size in use, what ``queue.max_bytes`` caps."""

    events: int
    bytes: int
    oldest_age_s: float
    evicted_events: int
    corrupt_files: int
    last_corrupt_file: str | None
    path: str = ""
    max_bytes: int = 0


class DeadLetterFigures(msgspec.Struct, kw_only=True):
    events: int


class Live(NamedTuple):
    """A destination as a status read names it: its name and type, and the running
    forwarder's state and last error (None when only the file is read)."""

    name: str
    type: str
    state: DestinationState | None = None
    last_error: str | None = None


class DestinationStatus(msgspec.Struct, kw_only=True):
    name: str
    type: str
    pending: int
    delivered: int
    dead_lettered: int
    state: DestinationState
    last_error: str | None
    oldest_pending_age_s: float


class StatusReport(msgspec.Struct, kw_only=True):
    queue: QueueFigures
    dead_letter: DeadLetterFigures
    destinations: list[DestinationStatus] = msgspec.field(default_factory=list)

    def to_builtins(self) -> dict[str, Any]:
        data: dict[str, Any] = msgspec.to_builtins(self)
        return data
