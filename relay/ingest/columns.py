"""``normalise``'s rules, applied to a request's typed messages column by column.

Each rule reads the same fields and gives the same result as ``relay.ingest.normalise``
does on the dict; a message that rule would refuse raises InvalidMessage, and the caller
hands the whole request to the dict path. What repeats across a request is worked out
once: the batch's sentAt, each distinct time string, the library (server or client side).
"""

from __future__ import annotations

import operator
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import msgspec
from msgspec import UNSET, Raw, Struct

from relay import timestamps
from relay.errors import InvalidMessage
from relay.ingest import bodies
from relay.ingest.normalise import (
    ADDED_FIELDS_ALLOWANCE,
    MAX_MESSAGE_BYTES,
    MESSAGE_TYPES,
    REQUIRED_BY_TYPE,
    SERVER_LIBRARIES,
)
from relay.types import Arrival, Event

if TYPE_CHECKING:
    from relay.ingest.typed import Fields, Message

MAX_EVENT_BYTES = MAX_MESSAGE_BYTES + ADDED_FIELDS_ALLOWANCE
# A raw part re-encoded from its value is at most 4.5 times as long (1e15 is written
# 1000000000000000.0), the rest of an event the same length: an event this short is
# within the size limit however the dict path would have written it. A longer one is
# written as the dict path writes it, and measured.
SURELY_SMALL_BYTES = MAX_EVENT_BYTES * 2 // 9
_NULL = Raw(b"null")
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(dict[str, Any]).decode
_time = timestamps.field_time
_canonical = timestamps.canonical
_fromisoformat = datetime.fromisoformat
# A UTC time to the millisecond or finer, in the extended format: written as its first 23
# characters and a Z (what ``timestamps.canonical`` makes of it, without formatting it).
_UTC_MILLIS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\d*(?:Z|\+00:00)", re.ASCII)
_MILLIS = [".%03dZ" % ms for ms in range(1000)]  # noqa: UP031
_MINUTES_SECONDS = ["%02d:%02d" % divmod(s, 60) for s in range(3600)]  # noqa: UP031
EPOCH = timestamps.EPOCH
MICROSECOND = timestamps.MICROSECOND
_HOUR = 3_600_000_000  # microseconds
_HOURS: dict[int, str] = {}  # "YYYY-MM-DDTHH:" of the hours (since the epoch) met lately
_HOURS_KEPT = 10_000
_FIRST_MICROS = (datetime.min.replace(tzinfo=UTC) - EPOCH) // MICROSECOND
_LAST_MICROS = (datetime.max.replace(tzinfo=UTC) - EPOCH) // MICROSECOND


class _Library(Struct):
    name: Any = None


_library = msgspec.json.Decoder(_Library).decode


def brackets(data: bytes) -> int:
    """Objects and arrays opened in ``data``: never fewer than the levels it nests.
    (Counted as what removing them takes away: ``replace`` finds them at memchr speed,
    ``count`` looks at every byte.)"""
    return 2 * len(data) - len(data.replace(b"{", b"")) - len(data.replace(b"[", b""))


def normalise(messages: Sequence[Message], arrival: Arrival, type_hint: str | None,
              batch_context: Fields | None, batch_integrations: Fields | None,
              body: bytes, max_levels: int) -> list[Event]:
    """The events the messages become (``max_levels`` is how deep a message may nest in
    ``body``, the request); InvalidMessage if any message would be refused."""
    if len(messages) == 1:  # a single-event route: the columns' own upkeep would cost more
        return [_one(messages[0], arrival, type_hint, batch_context, batch_integrations, body, max_levels)]
    kinds = _check(messages, type_hint)
    ids = _ids(messages)
    peer = Raw(_encode(arrival.peer_ip)) if arrival.peer_ip else None
    libraries: list[tuple[Raw, bool]] = []
    server_side = [_context(m, peer, batch_context, batch_integrations, libraries) for m in messages]
    _Times(arrival).set(messages, server_side)
    return _events(messages, kinds, ids, arrival, body, max_levels)


def _one(m: Message, arrival: Arrival, type_hint: str | None, batch_context: Fields | None,
         batch_integrations: Fields | None, body: bytes, max_levels: int) -> Event:
    """``normalise`` for one message, rule by rule."""
    kind = m.type if type_hint is None else type_hint
    if type(kind) is not str or kind not in MESSAGE_TYPES:
        raise InvalidMessage("type")
    m.type = kind
    if _no_id(m.userId) and _no_id(m.anonymousId):
        raise InvalidMessage("message needs a userId or an anonymousId")
    for name in REQUIRED_BY_TYPE.get(kind, ()):
        if _no_id(getattr(m, name)):
            raise InvalidMessage(f"{kind} needs {name}")
    message_id = m.messageId
    if message_id is None or message_id is UNSET or not message_id:
        message_id = m.messageId = str(uuid.uuid4())
    peer = Raw(_encode(arrival.peer_ip)) if arrival.peer_ip else None
    server = _context(m, peer, batch_context, batch_integrations, [])
    _Times(arrival).set_one(m, server)
    data = _as_dict_path_writes(_encode(m))
    if brackets(data) > max_levels and bodies.too_deep(body):
        raise InvalidMessage("nesting")
    return Event(message_id, arrival.write_key, kind, arrival.received_ts, None, data)


def _no_id(value: object) -> bool:
    return value is None or value is UNSET or value == ""


def _missing(values: list[Any]) -> int:
    """How many of ``values`` are no id: null, absent or empty (counted at C speed)."""
    return values.count(None) + values.count(UNSET) + values.count("")


def _check(messages: Sequence[Message], type_hint: str | None) -> list[str]:
    """Each message's type; InvalidMessage unless it is one, there is a userId or an
    anonymousId, and the fields the type requires are there."""
    if type_hint is None:
        kinds = [m.type for m in messages]
        if not MESSAGE_TYPES.issuperset(kinds):
            raise InvalidMessage("type")
    else:
        kinds = [type_hint] * len(messages)
        for m in messages:
            m.type = type_hint
    users = [m.userId for m in messages]
    if _missing(users):
        anonymous = [m.anonymousId for m in messages]
        if any(_missing([user, anon]) == 2 for user, anon in zip(users, anonymous, strict=True)):
            raise InvalidMessage("message needs a userId or an anonymousId")
    checked = cast(list[str], kinds)  # each one of MESSAGE_TYPES
    present = set(checked)
    for kind in present.intersection(REQUIRED_BY_TYPE):
        of_kind = messages if len(present) == 1 else [m for m, k in zip(messages, checked, strict=True)
                                                       if k == kind]
        for name in REQUIRED_BY_TYPE[kind]:
            if _missing([getattr(m, name) for m in of_kind]):
                raise InvalidMessage(f"{kind} needs {name}")
    return checked


def _ids(messages: Sequence[Message]) -> list[str]:
    """Each message's messageId, one made for those without (msgspec checked the length
    of the others)."""
    ids = [m.messageId for m in messages]
    if _missing(ids):
        for i, (m, given) in enumerate(zip(messages, ids, strict=True)):
            if given is None or given is UNSET or not given:
                ids[i] = m.messageId = str(uuid.uuid4())
    return cast(list[str], ids)


def _context(m: Message, peer: Raw | None, batch_context: Fields | None, batch_integrations: Fields | None,
             libraries: list[tuple[Raw, bool]]) -> bool:
    """A message's context (the batch's merged in, context.ip for client-side libraries)
    and integrations (the batch's merged in), its write key removed; whether it comes from
    a server-side library (``libraries``: those seen in this request, few)."""
    if m.writeKey is not UNSET:
        m.writeKey = UNSET
    own = m.context
    context: Fields | None
    if own is UNSET:
        context = None
    else:
        context = m.context = {} if own is None else own
    if batch_context:
        context = m.context = {**batch_context, **context} if context else dict(batch_context)
    server = False
    if context:
        library = context.get("library")
        if library is not None:
            for seen, flag in libraries:
                if library == seen:
                    server = flag
                    break
            else:
                server = _server_side(library)
                libraries.append((library, server))
    if peer is not None and not server:
        if context is None:
            m.context = {"ip": peer}
        else:
            ip = context.get("ip")
            if ip is None or ip == _NULL:
                context["ip"] = peer
    if batch_integrations or m.integrations is not UNSET:
        given = m.integrations
        integrations = {} if given is None or given is UNSET else given
        if batch_integrations:
            integrations = {**batch_integrations, **integrations}
        if integrations or given is not UNSET:
            m.integrations = integrations
    return server


def _server_side(library: Raw) -> bool:
    try:
        name = _library(library).name
    except msgspec.ValidationError:  # not an object: no library name
        return False
    return isinstance(name, str) and name.lower() in SERVER_LIBRARIES


class _Times:
    """receivedAt, sentAt, originalTimestamp and the corrected timestamp, as
    ``normalise._set_times`` writes them. The two shapes nearly every SDK sends (a server
    library's own timestamp with the batch's sentAt; a client's timestamp and sentAt) take
    a short way; sentAt strings, which repeat, are read once a request; a time already
    written as the relay writes times is not formatted again."""

    def __init__(self, arrival: Arrival) -> None:
        self.arrival = arrival
        self.sent: dict[str, tuple[datetime, str]] = {}

    def set(self, messages: Sequence[Message], server_side: list[bool]) -> None:
        explicit = [m.timestamp for m in messages]
        if (len(messages) > 1 and [m.originalTimestamp for m in messages].count(UNSET) == len(messages)
                and set(map(type, explicit)) == {str} and "" not in explicit):
            sent = [m.sentAt for m in messages]
            if all(server_side) and sent.count(UNSET) == len(messages):
                self.server_batch(messages, cast(list[str], explicit))
                return
            if not any(server_side) and set(map(type, sent)) == {str} and "" not in sent:
                self.client_batch(messages, cast(list[str], explicit), cast(list[str], sent))
                return
        self.mixed(messages, server_side)

    def mixed(self, messages: Sequence[Message], server_side: list[bool]) -> None:
        """A batch of several shapes (libraries of both sides, messages with and without
        their own sentAt): each of the two common shapes taken as a column of its own, a
        client's message without a sentAt corrected by the batch's; the rest one by one."""
        arrival = self.arrival
        batch_sent = arrival.sent_at if type(arrival.sent_at) is str and arrival.batch_sent_at else None
        if batch_sent is not None:  # read as the arrival read it
            self.sent.setdefault(batch_sent, (cast(datetime, arrival.batch_sent_at), arrival.batch_sent_iso))
        servers: list[Message] = []
        server_times: list[str] = []
        clients: list[Message] = []
        client_times: list[str] = []
        client_sent: list[str] = []
        others: list[Message] = []
        others_side: list[bool] = []
        for m, server in zip(messages, server_side, strict=True):
            explicit, sent = m.timestamp, m.sentAt
            if m.originalTimestamp is UNSET and type(explicit) is str and explicit:
                if server:
                    if sent is UNSET:
                        servers.append(m)
                        server_times.append(explicit)
                        continue
                else:
                    # its own sentAt, else (none at all) the batch's
                    corrected_by = (sent if type(sent) is str and sent
                                    else batch_sent if sent is UNSET else None)
                    if corrected_by is not None:
                        clients.append(m)
                        client_times.append(explicit)
                        client_sent.append(corrected_by)
                        continue
            others.append(m)
            others_side.append(server)
        if servers:
            self.server_batch(servers, server_times)
        if clients:
            self.client_batch(clients, client_times, client_sent)
        if others:
            self.each(others, others_side)

    def server_batch(self, messages: Sequence[Message], explicit: list[str]) -> None:
        """Server libraries' messages, each with its own timestamp and none with a sentAt
        (analytics-python, -node, -go, -java, ...): the timestamp is kept, in UTC with a Z."""
        arrival = self.arrival
        try:
            list(map(_fromisoformat, explicit))  # each one a time
        except ValueError:
            raise InvalidMessage("timestamp is not an ISO-8601 date-time") from None
        written = _written_all(explicit)
        received_iso = arrival.received_iso
        if timestamps.given(arrival.sent_at):
            if arrival.batch_sent_at is None:
                raise InvalidMessage("sentAt is not an ISO-8601 date-time")
            sent_iso = arrival.batch_sent_iso
            for m, value in zip(messages, written, strict=True):
                m.receivedAt, m.sentAt = received_iso, sent_iso
                m.originalTimestamp = m.timestamp = value
        else:
            for m, value in zip(messages, written, strict=True):
                m.receivedAt = received_iso
                m.originalTimestamp = m.timestamp = value

    def client_batch(self, messages: Sequence[Message], explicit: list[str], sent: list[str]) -> None:
        """Client libraries' messages, each with its timestamp and sentAt (analytics.js,
        the mobile SDKs): the timestamp corrected for the device's clock."""
        try:
            originals = list(map(_fromisoformat, explicit))
        except ValueError:
            raise InvalidMessage("timestamp is not an ISO-8601 date-time") from None
        if None in map(_tzinfo, originals):  # a time without an offset: read as UTC, one by one
            self.each(messages, [False] * len(messages))
            return
        written = _written_all(explicit, originals)
        received = self.micros(self.arrival.received_at)
        read = {value: self.read_sent(value) for value in set(sent)}
        skews = {value: received - self.micros(sent_at) for value, (sent_at, _) in read.items()}
        # receivedAt - (sentAt - timestamp)
        stamps = self.isos([skews[when] + (original - EPOCH) // MICROSECOND
                            for when, original in zip(sent, originals, strict=True)])
        received_iso = self.arrival.received_iso
        for m, when, value, stamp in zip(messages, sent, written, stamps, strict=True):
            m.receivedAt, m.sentAt = received_iso, read[when][1]
            m.originalTimestamp, m.timestamp = value, stamp

    def each(self, messages: Sequence[Message], server_side: list[bool]) -> None:
        set_one = self.set_one
        for m, server in zip(messages, server_side, strict=True):
            set_one(m, server)

    def set_one(self, m: Message, server: bool) -> None:
        """Any other shape, rule by rule as ``normalise._set_times``."""
        arrival = self.arrival
        explicit, given, sent = m.timestamp, m.originalTimestamp, m.sentAt
        m.receivedAt = arrival.received_iso
        field = "originalTimestamp"
        if given is None or given is UNSET or given == "":
            given, field = explicit, "timestamp"
            if given is None or given is UNSET or given == "":
                m.originalTimestamp = UNSET  # nothing to correct: sentAt kept as sent
                if sent is None or sent == "":
                    m.sentAt = UNSET
                m.timestamp = arrival.received_iso
                return
        original = _moment(given, field)
        original_iso = _written(given, original)
        sent_at: datetime | None = None
        if sent is not None and sent is not UNSET and sent != "":
            sent_at, m.sentAt = self.read_sent(sent)
        elif timestamps.given(arrival.sent_at):
            sent_at = arrival.batch_sent_at or _time(arrival.sent_at, "sentAt")
            m.sentAt = arrival.batch_sent_iso
        elif sent is not UNSET:
            m.sentAt = UNSET
        m.originalTimestamp = original_iso
        if server and explicit is not None and explicit is not UNSET and explicit != "":
            m.timestamp = (original_iso if field == "timestamp"
                           else _written(explicit, _moment(explicit, "timestamp")))
        elif sent_at is not None:
            try:
                corrected = arrival.received_at - (sent_at - original)
            except OverflowError:
                raise InvalidMessage("sentAt and the event's time are too far apart to correct") from None
            m.timestamp = _iso((corrected - EPOCH) // MICROSECOND)
        else:
            m.timestamp = original_iso

    def read_sent(self, value: str | int | float) -> tuple[datetime, str]:
        found = self.sent.get(value) if type(value) is str else None
        if found is None:
            moment = _moment(value, "sentAt")
            found = (moment, _written(value, moment))
            if type(value) is str:
                self.sent[value] = found
        return found

    @staticmethod
    def micros(moment: datetime) -> int:
        return (moment - EPOCH) // MICROSECOND

    @staticmethod
    def isos(micros: list[int]) -> list[str]:
        """``timestamps.iso`` of each time, given in microseconds since the epoch;
        InvalidMessage when one is not a time ``datetime`` can hold."""
        if min(micros) < _FIRST_MICROS or max(micros) > _LAST_MICROS:
            raise InvalidMessage("sentAt and the event's time are too far apart to correct")
        hours = _HOURS
        missing = {value // _HOUR for value in micros}.difference(hours)
        for hour in missing:
            _hour(hour)
        return [hours[value // _HOUR] + _MINUTES_SECONDS[value % _HOUR // 1_000_000]
                + _MILLIS[value % 1_000_000 // 1000] for value in micros]


def _iso(micros: int) -> str:
    """``timestamps.iso`` of a time ``datetime`` can hold, given in microseconds since the
    epoch: the hour formatted once, minutes, seconds and milliseconds from tables."""
    hour, within = divmod(micros, _HOUR)
    prefix = _HOURS.get(hour) or _hour(hour)
    return prefix + _MINUTES_SECONDS[within // 1_000_000] + _MILLIS[within % 1_000_000 // 1000]


def _hour(hour: int) -> str:
    if len(_HOURS) > _HOURS_KEPT:
        _HOURS.clear()
    prefix = _HOURS[hour] = timestamps.iso(EPOCH + timedelta(microseconds=hour * _HOUR))[:14]
    return prefix


_tzinfo = operator.attrgetter("tzinfo")


def _written_all(values: list[str], moments: list[datetime] | None = None) -> list[str]:
    """``_written`` of each time string (``moments`` as read), a column at a time."""
    if set(map(len, values)) == {24} and {value[19] + value[23] for value in values} == {".Z"}:
        return values  # as analytics.js writes times: kept
    if None not in map(_UTC_MILLIS.fullmatch, values):
        return [value[:23] + "Z" for value in values]
    if moments is None:
        return [_written(value) for value in values]
    return [_written(value, moment) for value, moment in zip(values, moments, strict=True)]


def _moment(value: object, field: str) -> datetime:
    """``timestamps.field_time``: the time in ``value`` (aware; in UTC when it names no offset)."""
    if type(value) is not str:
        return _time(value, field)
    try:
        moment = _fromisoformat(value)
    except ValueError:
        raise InvalidMessage(f"{field} is not an ISO-8601 date-time") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _written(value: object, moment: datetime | None = None) -> str:
    """``timestamps.canonical`` of a time ``_moment`` read: the common forms without
    formatting the time (``moment`` is read again when ``value`` is none of them)."""
    if type(value) is str:
        if len(value) == 24 and value[23] == "Z" and value[19] == ".":
            return value
        if _UTC_MILLIS.fullmatch(value):
            return value[:23] + "Z"
    return _canonical(value, moment or _moment(value, "timestamp"))


def _events(messages: Sequence[Message], kinds: list[str], ids: list[str], arrival: Arrival,
            body: bytes, max_levels: int) -> list[Event]:
    """Each message encoded once into its event; the size and nesting limits checked."""
    write_key, received = arrival.write_key, arrival.received_ts
    encoded = [_encode(m) for m in messages]
    if max(map(len, encoded)) > SURELY_SMALL_BYTES:
        encoded = [_as_dict_path_writes(data) for data in encoded]
    if max(map(brackets, encoded)) > max_levels and bodies.too_deep(body):
        raise InvalidMessage("nesting")
    return [Event(message_id, write_key, kind, received, None, data)
            for kind, message_id, data in zip(kinds, ids, encoded, strict=True)]


def _as_dict_path_writes(data: bytes) -> bytes:
    """An event's bytes as the dict path writes them (its raw parts in their compact
    form), refused past the size limit."""
    if len(data) <= SURELY_SMALL_BYTES:
        return data
    data = _encode(_decode(data))
    if len(data) > MAX_EVENT_BYTES:
        raise InvalidMessage(f"message is larger than {MAX_MESSAGE_BYTES} bytes")
    return data
