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
from dataclasses import dataclass
from typing import Any

import msgspec

from relay.types import DeadLetter, Event, Stored

VIEWER_BUFFER = 2000  # records held for one viewer at most
SEEN_IDS = 20_000  # messageIds a filtered viewer remembers, to pass their outcomes on
KINDS = ("event", "refused", "dropped", "outcome")
OUTCOMES = ("delivered", "retrying", "dead_lettered")
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(dict[str, Any]).decode


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
                if flt.wants_message(event.write_key, event.body):
                    viewer.saw(event.message_id)
                    if show:
                        viewer.offer(("event", event))

    def _stored_changed(self, events: Sequence[Event], changes: Mapping[str, Any]) -> None:
        for viewer in self._viewers:
            flt = viewer.filter
            show = flt.outcome in (None, "stored")
            for event in events:
                if flt.on_messages:
                    if not flt.wants_message(event.write_key, event.body):
                        continue
                    viewer.saw(event.message_id)
                if show:
                    viewer.offer(("event", event, changes.get(event.message_id)))

    def refused(self, letters: Sequence[DeadLetter]) -> None:
        """Messages dead-lettered at ingest (the protocol's checks, or a plugin's refusal)."""
        for letter in letters:
            body: Mapping[str, Any] | None = None
            for viewer in self._viewers:
                flt = viewer.filter
                if flt.outcome not in (None, "refused", "dead_lettered"):
                    continue
                if flt.on_messages:
                    if body is None:
                        body = _body_of(letter.body)
                    if not flt.wants_message(letter.write_key, body):
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


def _body_of(data: bytes) -> Mapping[str, Any]:
    try:
        return _decode(data)
    except msgspec.DecodeError:
        return {}


_KEYS: dict[str, bytes] = {}


def _masked_json(key: str) -> bytes:
    found = _KEYS.get(key)
    if found is None:
        if len(_KEYS) > 10_000:
            _KEYS.clear()
        found = _KEYS[key] = _encode(mask_key(key))
    return found


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
