"""The tap: what the debugger page, ``relay tap`` and ``relay top`` watch, published by the
stages themselves.

Ingest publishes each event as stored (after the commit, so after the privacy plugins: what
they removed is never shown), each message refused at ingest (its dead letter and reason) and
each message an ingest plugin dropped (its plugin and reason, not its body). Each forwarder
publishes its destination's outcomes: delivered, retrying, dead-lettered.

With no viewer, a stage pays one attribute check (``tap.watched``) and builds nothing. Each
viewer has a bounded buffer of references to what was published (encoded only when the
viewer takes them); when it is full, what comes next is counted as lost for that viewer
alone, so a slow or stuck viewer costs neither memory nor anyone else's events.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from relay.types import DeadLetter, Event, Stored

VIEWER_BUFFER = 2000  # records held for one viewer at most
SEEN_IDS = 20_000  # messageIds a filtered viewer remembers, to pass their outcomes on
KINDS = ("event", "refused", "dropped", "outcome")
OUTCOMES = ("delivered", "retrying", "dead_lettered")
_encode = msgspec.json.Encoder().encode


def mask_key(key: str) -> str:
    """A write key as the debugger shows it: enough to tell keys apart, not to use one."""
    if not key:
        return ""
    if len(key) <= 6:
        return key[:1] + "•" * (len(key) - 1)
    return key[:4] + "•" * 4 + key[-2:]


def event_name(body: Mapping[str, Any]) -> str | None:
    name = body.get("event") if body.get("type") == "track" else body.get("name")
    return name if isinstance(name, str) else None


class Fields(msgspec.Struct, gc=False):
    """The few fields of a body a filter reads. Decoded from the body's bytes into this,
    every other field is skipped without being built."""

    type: Any = None
    event: Any = None
    name: Any = None
    userId: Any = None  # the message's own field names
    anonymousId: Any = None

    @property
    def event_name(self) -> str | None:
        name = self.event if self.type == "track" else self.name
        return name if isinstance(name, str) else None


_NO_FIELDS = Fields()
_decode_fields = msgspec.json.Decoder(Fields).decode


def fields_of(data: bytes) -> Fields:
    """A body's filter fields, from its encoded bytes (none when they are not a JSON object)."""
    try:
        return _decode_fields(data)
    except msgspec.DecodeError:
        return _NO_FIELDS


@dataclass(frozen=True, slots=True)
class Filter:
    """Which records a viewer wants; a field left None matches everything."""

    type: str | None = None
    event: str | None = None
    user: str | None = None
    write_key: str | None = None
    destination: str | None = None
    outcome: str | None = None
    outcomes: bool = True  # destination outcomes at all
    # The event name and user as they appear in a body encoded without escapes (computed).
    _needles: tuple[bytes, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        needles = (_encode(v) for v in (self.event, self.user) if v is not None)
        object.__setattr__(self, "_needles", tuple(n for n in needles if b"\\" not in n))

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> Filter:
        def given(name: str) -> str | None:
            value = query.get(name, "").strip()
            return value or None

        return cls(type=given("type"), event=given("event"), user=given("user"),
                   write_key=given("writeKey"), destination=given("destination"),
                   outcome=given("outcome"), outcomes=query.get("outcomes", "1") not in ("0", "false", ""))

    @property
    def on_messages(self) -> bool:
        """True when the filter looks inside messages (then outcomes follow the messages seen)."""
        return any(v is not None for v in (self.type, self.event, self.user, self.write_key))

    def wants_message(self, write_key: str, body: Mapping[str, Any]) -> bool:
        if self.type is not None and body.get("type") != self.type:
            return False
        if self.event is not None and event_name(body) != self.event:
            return False
        if self.user is not None and self.user not in (body.get("userId"), body.get("anonymousId")):
            return False
        return self.write_key is None or self.write_key in (write_key, mask_key(write_key))

    def wants_event(self, event: Event) -> bool:
        """``wants_message`` for an event as stored: the envelope (type, write key) first; the
        body only when the filter names an event or a user, read from its encoded bytes."""
        if self.type is not None and event.type != self.type:
            return False
        if self.write_key is not None and self.write_key not in (event.write_key, _masked(event.write_key)):
            return False
        return (self.event is None and self.user is None) or self._wants_data(event.encode(), False)

    def wants_letter(self, letter: DeadLetter) -> bool:
        """``wants_message`` for a message refused at ingest (its body's bytes, as received)."""
        if self.write_key is not None and self.write_key not in (letter.write_key, _masked(letter.write_key)):
            return False
        return (self.type is None and self.event is None and self.user is None) or self._wants_data(
            letter.body, self.type is not None)

    def _wants_data(self, data: bytes, check_type: bool) -> bool:
        """The body's part of the filter, on its bytes. Where they hold no escape, a string
        value can only appear as its plain encoding: one missing means no match, without
        decoding. Otherwise only the filter's few fields are decoded."""
        if self._needles and b"\\" not in data:
            for needle in self._needles:
                if needle not in data:
                    return False
        found = fields_of(data)
        if check_type and found.type != self.type:
            return False
        if self.event is not None and found.event_name != self.event:
            return False
        return self.user is None or self.user in (found.userId, found.anonymousId)


class Viewer:
    """One watcher's bounded buffer and its count of records lost to it."""

    def __init__(self, flt: Filter, limit: int = VIEWER_BUFFER) -> None:
        self.filter = flt
        self.limit = limit
        self.lost = 0
        self._reported = 0
        self._items: deque[tuple[Any, ...]] = deque()
        self._wake = asyncio.Event()
        self._seen: OrderedDict[str, None] | None = OrderedDict() if flt.on_messages else None
        self.ended = False

    def end(self) -> None:
        """The relay stops: the viewer's next ``take`` returns None."""
        self.ended = True
        self._wake.set()

    def offer(self, item: tuple[Any, ...]) -> None:
        if len(self._items) >= self.limit:
            self.lost += 1
            return
        self._items.append(item)
        self._wake.set()

    def saw(self, message_id: str) -> None:
        if self._seen is not None:
            self._seen[message_id] = None
            if len(self._seen) > SEEN_IDS:
                self._seen.popitem(last=False)

    def follows(self, message_id: str) -> bool:
        return self._seen is None or message_id in self._seen

    async def take(self, timeout: float) -> list[bytes] | None:
        """The records waiting (encoded, oldest first), a ``lost`` record first when records
        were lost since the last take; [] after ``timeout`` seconds with nothing; None once
        the viewer was ended."""
        if self.ended:
            return None
        if not self._items and self.lost == self._reported:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                return []
            if self.ended:
                return None
        out: list[bytes] = []
        if self.lost != self._reported:
            self._reported = self.lost
            out.append(_encode({"kind": "lost", "count": self.lost}))
        items, self._items = self._items, deque()
        out.extend(encode(item) for item in items)
        return out


class Tap:
    """The bus. ``watched`` is True while at least one viewer is open."""

    __slots__ = ("_viewers", "watched")

    def __init__(self) -> None:
        self.watched = False
        self._viewers: list[Viewer] = []

    @property
    def viewers(self) -> int:
        return len(self._viewers)

    def open(self, flt: Filter, limit: int = VIEWER_BUFFER) -> Viewer:
        viewer = Viewer(flt, limit)
        self._viewers = [*self._viewers, viewer]
        self.watched = True
        return viewer

    def end_all(self) -> None:
        """Let every viewer's stream finish (at stop)."""
        for viewer in self._viewers:
            viewer.end()

    def close(self, viewer: Viewer) -> None:
        self._viewers = [v for v in self._viewers if v is not viewer]
        self.watched = bool(self._viewers)

    # --- publishers (call only when ``watched``) -------------------------------------------

    def stored(self, events: Sequence[Event], changes: Mapping[str, Any] | None = None) -> None:
        """Events committed, with what the ingest plugins changed in them (paths only)."""
        if changes:
            self._stored_changed(events, changes)
            return
        for viewer in self._viewers:
            flt = viewer.filter
            show = flt.outcome in (None, "stored")
            if not flt.on_messages:
                if show:
                    for event in events:
                        viewer.offer(("event", event))
                continue
            for event in events:
                if flt.wants_event(event):
                    viewer.saw(event.message_id)
                    if show:
                        viewer.offer(("event", event))

    def _stored_changed(self, events: Sequence[Event], changes: Mapping[str, Any]) -> None:
        for viewer in self._viewers:
            flt = viewer.filter
            show = flt.outcome in (None, "stored")
            for event in events:
                if flt.on_messages:
                    if not flt.wants_event(event):
                        continue
                    viewer.saw(event.message_id)
                if show:
                    viewer.offer(("event", event, changes.get(event.message_id)))

    def refused(self, letters: Sequence[DeadLetter]) -> None:
        """Messages dead-lettered at ingest (the protocol's checks, or a plugin's refusal)."""
        for letter in letters:
            for viewer in self._viewers:
                flt = viewer.filter
                if flt.outcome not in (None, "refused", "dead_lettered"):
                    continue
                if flt.on_messages and not flt.wants_letter(letter):
                    continue
                viewer.offer(("refused", letter))

    def dropped(self, write_key: str, received_at: float, drops: Sequence[tuple[str, str, Any]]) -> None:
        """Messages an ingest plugin dropped on purpose: (plugin, reason, message)."""
        for plugin, reason, message in drops:
            body = message if isinstance(message, dict) else {}
            record = {"kind": "dropped", "plugin": plugin, "reason": reason, "writeKey": mask_key(write_key),
                      "receivedAt": received_at, "messageId": body.get("messageId"),
                      "type": body.get("type"), "name": event_name(body)}
            for viewer in self._viewers:
                flt = viewer.filter
                if flt.outcome not in (None, "dropped"):
                    continue
                if flt.on_messages and not flt.wants_message(write_key, body):
                    continue
                viewer.offer(("record", record))

    def outcome(self, destination: str, rows: Sequence[Stored], outcome: str, detail: dict[str, Any]) -> None:
        """One destination's outcome for ``rows``: delivered, retrying or dead_lettered, with
        its detail (status, attempts, seconds, error, reason)."""
        for viewer in self._viewers:
            flt = viewer.filter
            if not flt.outcomes or flt.destination not in (None, destination):
                continue
            if flt.outcome is not None and flt.outcome != outcome:
                continue
            for row in rows:
                if viewer.follows(row.message_id):
                    viewer.offer(("outcome", destination, outcome, row, detail))


_KEYS: dict[str, tuple[str, bytes]] = {}


def _mask_of(key: str) -> tuple[str, bytes]:
    """A write key masked, and that as JSON (the few keys a relay sees, remembered)."""
    found = _KEYS.get(key)
    if found is None:
        if len(_KEYS) > 10_000:
            _KEYS.clear()
        masked = mask_key(key)
        found = _KEYS[key] = (masked, _encode(masked))
    return found


def _masked(key: str) -> str:
    return _mask_of(key)[0]


def _masked_json(key: str) -> bytes:
    return _mask_of(key)[1]


def encode(item: tuple[Any, ...]) -> bytes:
    """One record as a JSON line (the body as stored is spliced in, not encoded again)."""
    kind = item[0]
    if kind == "event":
        event: Event = item[1]
        changed = b',"changed":%b' % _encode(item[2]) if len(item) > 2 and item[2] else b""
        return b'{"kind":"event","writeKey":%b,"receivedAt":%b%b,"body":%b}' % (
            _masked_json(event.write_key), repr(event.received_at).encode(), changed, event.encode())
    if kind == "refused":
        letter: DeadLetter = item[1]
        return _encode({"kind": "refused", "writeKey": mask_key(letter.write_key),
                        "receivedAt": letter.received_at, "messageId": letter.message_id,
                        "reason": letter.reason, "body": msgspec.Raw(_raw_or_string(letter.body))})
    if kind == "outcome":
        _, destination, outcome, row, detail = item
        return _encode({"kind": "outcome", "destination": destination, "outcome": outcome,
                        "messageId": row.message_id, "type": row.type, **detail})
    return _encode(item[1])


def _raw_or_string(data: bytes) -> bytes:
    try:
        msgspec.json.decode(data)
    except msgspec.DecodeError:
        return _encode(data.decode("utf-8", "replace"))
    return data
