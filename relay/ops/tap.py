"""The tap: what the debugger page, ``relay tap`` and ``relay top`` watch, published by the
stages themselves.

Ingest publishes each event as stored (after the commit, so after the privacy plugins: what
they removed is never shown), each message refused at ingest (its dead letter and reason) and
each message an ingest plugin dropped (its plugin and reason, not its body). Each forwarder
publishes its destination's outcomes: delivered, retrying, dead-lettered.

With no viewer, a stage pays one attribute check (``tap.watched``) and builds nothing. With
viewers, a publish call costs each viewer that wants everything one reference to a chunk
shared by all of them, whatever its size; a viewer whose filter looks inside messages picks
them from the envelope and the body's bytes (never the body dict). Nothing is encoded on
the publisher's path: the first viewer task to take a chunk encodes it, the bodies spliced in
as stored, and the others reuse those bytes. Each viewer's buffer is bounded in records;
when it is full, what comes next is counted as lost for that viewer alone (one addition a
publish call), so a slow or stuck viewer costs neither memory nor anyone else's events.
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
_BACKSLASH, _LF, _CR = 0x5C, 0x0A, 0x0D  # looked for in bytes as ints (memchr; far faster)


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
        """For a message held as a dict (what an ingest plugin dropped, before it was stored)."""
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
        if self._needles and _BACKSLASH not in data:
            for needle in self._needles:
                if data.find(needle) < 0:
                    return False
        found = fields_of(data)
        if check_type and found.type != self.type:
            return False
        if self.event is not None and found.event_name != self.event:
            return False
        return self.user is None or self.user in (found.userId, found.anonymousId)


class Chunk:
    """What one publish call gave the viewers: its records, by reference. Every viewer that
    wants all of them holds the same chunk, which is encoded once, by the first viewer task
    that takes it (never on the publisher's path), and the bytes are shared by the others."""

    __slots__ = ("_heads", "_lines", "_sse")

    def __init__(self) -> None:
        self._lines: list[bytes] | None = None
        self._sse: bytes | None = None
        self._heads: dict[int, Chunk] | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def head(self, count: int) -> Chunk:
        """The first ``count`` records, as a chunk of their own: the same one for every viewer
        with that much room (viewers emptied by their last take all have the same room)."""
        if self._heads is None:
            self._heads = {}
        found = self._heads.get(count)
        if found is None:
            found = self._heads[count] = self._first(count)
        return found

    def _first(self, count: int) -> Chunk:
        raise NotImplementedError

    def _encode_lines(self) -> list[bytes]:
        raise NotImplementedError

    def lines(self) -> list[bytes]:
        """Each record as one line of JSON."""
        if self._lines is None:
            self._lines = self._encode_lines()
        return self._lines

    def sse(self) -> bytes:
        """The records as Server-Sent Events: one ``data:`` frame each, in one piece."""
        if self._sse is None:
            self._sse = b"data: " + b"\n\ndata: ".join(self.lines()) + b"\n\n"
        return self._sse


class EventsChunk(Chunk):
    """Events as stored, each with what the ingest plugins changed in it (when they did)."""

    __slots__ = ("changes", "events")

    def __init__(self, events: Sequence[Event], changes: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.events = events
        self.changes = changes or None

    def __len__(self) -> int:
        return len(self.events)

    def _first(self, count: int) -> Chunk:
        return EventsChunk(self.events[:count], self.changes)

    def _runs(self) -> list[tuple[bytes, list[bytes]]]:
        """(the records' common start, the bodies as stored) for each run of events that
        share a write key and a time received (a request's); an event with changes is a run
        of its own. A record is the start, the body (spliced in, never encoded again), ``}``."""
        runs: list[tuple[bytes, list[bytes]]] = []
        changes = self.changes
        key: str | None = None
        at = 0.0
        bodies: list[bytes] = []
        for event in self.events:
            changed = changes.get(event.message_id) if changes is not None else None
            if changed or event.received_at != at or event.write_key != key:
                key, at, bodies = event.write_key, event.received_at, []
                if changed:
                    key = None  # the next event starts a run of its own
                runs.append((_event_start(event.write_key, at, changed), bodies))
            data = event.data or event.encode()
            bodies.append(data if _LF not in data and _CR not in data else _one_line(data))
        return runs

    def _encode_lines(self) -> list[bytes]:
        return [start + body + b"}" for start, bodies in self._runs() for body in bodies]

    def sse(self) -> bytes:
        if self._sse is None:
            parts: list[bytes] = []
            for start, bodies in self._runs():
                parts += (b"data: ", start, (b"}\n\ndata: " + start).join(bodies), b"}\n\n")
            self._sse = b"".join(parts)
        return self._sse


class RefusedChunk(Chunk):
    """Messages dead-lettered at ingest, with the reason."""

    __slots__ = ("letters",)

    def __init__(self, letters: Sequence[DeadLetter]) -> None:
        super().__init__()
        self.letters = letters

    def __len__(self) -> int:
        return len(self.letters)

    def _first(self, count: int) -> Chunk:
        return RefusedChunk(self.letters[:count])

    def _encode_lines(self) -> list[bytes]:
        return [_encode({"kind": "refused", "writeKey": _masked(letter.write_key),
                         "receivedAt": letter.received_at, "messageId": letter.message_id,
                         "reason": letter.reason, "body": msgspec.Raw(_raw_or_string(letter.body))})
                for letter in self.letters]


class RecordsChunk(Chunk):
    """Records built whole by the publisher (what ingest plugins dropped)."""

    __slots__ = ("records",)

    def __init__(self, records: Sequence[dict[str, Any]]) -> None:
        super().__init__()
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def _first(self, count: int) -> Chunk:
        return RecordsChunk(self.records[:count])

    def _encode_lines(self) -> list[bytes]:
        return [_encode(record) for record in self.records]


_OUTCOME_KEYS = frozenset(("kind", "destination", "outcome", "messageId", "type"))


class OutcomesChunk(Chunk):
    """One destination's outcome for some of its rows, with its detail."""

    __slots__ = ("destination", "detail", "outcome", "rows")

    def __init__(self, destination: str, outcome: str, rows: Sequence[Stored],
                 detail: dict[str, Any]) -> None:
        super().__init__()
        self.destination, self.outcome, self.rows, self.detail = destination, outcome, rows, detail

    def __len__(self) -> int:
        return len(self.rows)

    def _first(self, count: int) -> Chunk:
        return OutcomesChunk(self.destination, self.outcome, self.rows[:count], self.detail)

    def _encode_lines(self) -> list[bytes]:
        head = {"kind": "outcome", "destination": self.destination, "outcome": self.outcome}
        detail = self.detail
        if not _OUTCOME_KEYS.isdisjoint(detail):  # a detail that overrides the record's own keys
            return [_encode({**head, "messageId": row.message_id, "type": row.type, **detail})
                    for row in self.rows]
        start = _encode(head)[:-1] + b',"messageId":'
        end = b"," + _encode(detail)[1:] if detail else b"}"
        return [b'%b%b,"type":%b%b' % (start, _encode(row.message_id), _encode(row.type), end)
                for row in self.rows]


class Viewer:
    """One watcher's bounded buffer and its count of records lost to it. The buffer holds
    chunks (references to what was published); ``held`` counts their records."""

    def __init__(self, flt: Filter, limit: int = VIEWER_BUFFER) -> None:
        self.filter = flt
        self.limit = limit
        self.lost = 0
        self.held = 0
        self._reported = 0
        self._chunks: deque[Chunk] = deque()
        self._wake = asyncio.Event()
        self._seen: OrderedDict[str, None] | None = OrderedDict() if flt.on_messages else None
        self.ended = False

    def end(self) -> None:
        """The relay stops: the viewer's next ``take`` returns None."""
        self.ended = True
        self._wake.set()

    def offer(self, chunk: Chunk) -> None:
        """Hold ``chunk``, or as much of it as the buffer has room for; what has none is lost."""
        count = len(chunk)
        room = self.limit - self.held
        if count > room:
            if room <= 0:
                self.lost += count
                return
            self.lost += count - room
            chunk, count = chunk.head(room), room
        self._chunks.append(chunk)
        self.held += count
        self._wake.set()

    def saw(self, message_id: str) -> None:
        if self._seen is not None:
            self._seen[message_id] = None
            if len(self._seen) > SEEN_IDS:
                self._seen.popitem(last=False)

    @property
    def follows_all(self) -> bool:
        """True when every message's outcomes are wanted (the filter looks inside none)."""
        return self._seen is None

    def follows(self, message_id: str) -> bool:
        return self._seen is None or message_id in self._seen

    async def _wait(self, timeout: float) -> bool | None:
        """True when there is something to take, False after ``timeout`` seconds with
        nothing, None once the viewer was ended."""
        if self.ended:
            return None
        if not self._chunks and self.lost == self._reported:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                return False
            if self.ended:
                return None
        return True

    def _lost_record(self) -> bytes | None:
        if self.lost == self._reported:
            return None
        self._reported = self.lost
        return _encode({"kind": "lost", "count": self.lost})

    def _drain(self) -> deque[Chunk]:
        chunks, self._chunks, self.held = self._chunks, deque(), 0
        return chunks

    async def take(self, timeout: float) -> list[bytes] | None:
        """The records waiting (encoded, oldest first), a ``lost`` record first when records
        were lost since the last take; [] after ``timeout`` seconds with nothing; None once
        the viewer was ended."""
        ready = await self._wait(timeout)
        if not ready:
            return None if ready is None else []
        out: list[bytes] = []
        lost = self._lost_record()
        if lost is not None:
            out.append(lost)
        for chunk in self._drain():
            out += chunk.lines()
        return out

    async def take_sse(self, timeout: float) -> bytes | None:
        """``take`` as Server-Sent Events, in one piece (one ``data:`` frame a record), b""
        after ``timeout`` seconds with nothing."""
        ready = await self._wait(timeout)
        if not ready:
            return None if ready is None else b""
        parts: list[bytes] = []
        lost = self._lost_record()
        if lost is not None:
            parts.append(b"data: %b\n\n" % lost)
        parts += (chunk.sse() for chunk in self._drain())
        return b"".join(parts)


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
    # Each costs a viewer that wants everything one reference to a shared chunk, whatever the
    # number of records; only a filter that looks inside messages reads them one by one.

    def stored(self, events: Sequence[Event], changes: Mapping[str, Any] | None = None) -> None:
        """Events committed, with what the ingest plugins changed in them (paths only)."""
        if not events:
            return
        shared: Chunk | None = None
        for viewer in self._viewers:
            flt = viewer.filter
            show = flt.outcome in (None, "stored")
            if not flt.on_messages:
                if show:
                    if shared is None:
                        shared = EventsChunk(tuple(events), changes)
                    viewer.offer(shared)
                continue
            picked = [event for event in events if flt.wants_event(event)]
            for event in picked:
                viewer.saw(event.message_id)
            if picked and show:
                viewer.offer(EventsChunk(picked, changes))

    def refused(self, letters: Sequence[DeadLetter]) -> None:
        """Messages dead-lettered at ingest (the protocol's checks, or a plugin's refusal)."""
        if not letters:
            return
        shared: Chunk | None = None
        for viewer in self._viewers:
            flt = viewer.filter
            if flt.outcome not in (None, "refused", "dead_lettered"):
                continue
            if not flt.on_messages:
                if shared is None:
                    shared = RefusedChunk(tuple(letters))
                viewer.offer(shared)
                continue
            picked = [letter for letter in letters if flt.wants_letter(letter)]
            if picked:
                viewer.offer(RefusedChunk(picked))

    def dropped(self, write_key: str, received_at: float, drops: Sequence[tuple[str, str, Any]]) -> None:
        """Messages an ingest plugin dropped on purpose: (plugin, reason, message)."""
        bodies = [message if isinstance(message, dict) else {} for _, _, message in drops]
        records = [{"kind": "dropped", "plugin": plugin, "reason": reason, "writeKey": _masked(write_key),
                    "receivedAt": received_at, "messageId": body.get("messageId"),
                    "type": body.get("type"), "name": event_name(body)}
                   for (plugin, reason, _), body in zip(drops, bodies, strict=True)]
        if not records:
            return
        shared: Chunk | None = None
        for viewer in self._viewers:
            flt = viewer.filter
            if flt.outcome not in (None, "dropped"):
                continue
            if not flt.on_messages:
                if shared is None:
                    shared = RecordsChunk(records)
                viewer.offer(shared)
                continue
            picked = [record for record, body in zip(records, bodies, strict=True)
                      if flt.wants_message(write_key, body)]
            if picked:
                viewer.offer(RecordsChunk(picked))

    def outcome(self, destination: str, rows: Sequence[Stored], outcome: str, detail: dict[str, Any]) -> None:
        """One destination's outcome for ``rows``: delivered, retrying or dead_lettered, with
        its detail (status, attempts, seconds, error, reason)."""
        if not rows:
            return
        shared: Chunk | None = None
        for viewer in self._viewers:
            flt = viewer.filter
            if not flt.outcomes or flt.destination not in (None, destination):
                continue
            if flt.outcome is not None and flt.outcome != outcome:
                continue
            if viewer.follows_all:
                if shared is None:
                    shared = OutcomesChunk(destination, outcome, tuple(rows), detail)
                viewer.offer(shared)
                continue
            picked = [row for row in rows if viewer.follows(row.message_id)]
            if picked:
                viewer.offer(OutcomesChunk(destination, outcome, picked, detail))


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


def _event_start(write_key: str, received_at: float, changed: Any) -> bytes:
    """An event record up to its body: ``{"kind":"event","writeKey":...,"body":``."""
    return b'{"kind":"event","writeKey":%b,"receivedAt":%b%b,"body":' % (
        _mask_of(write_key)[1], repr(received_at).encode(),
        b',"changed":%b' % _encode(changed) if changed else b"")


def _one_line(data: bytes) -> bytes:
    """A body as stored, on one line (a line break would end its SSE frame): the relay's own
    encoding has none; bytes kept as received may hold some between the JSON's tokens."""
    return msgspec.json.format(data, indent=0) if _LF in data or _CR in data else data


def _raw_or_string(data: bytes) -> bytes:
    """A refused body as JSON: itself when it is JSON, else its text as a string."""
    try:
        msgspec.json.decode(data)
    except msgspec.DecodeError:
        return _encode(data.decode("utf-8", "replace"))
    return _one_line(data)
