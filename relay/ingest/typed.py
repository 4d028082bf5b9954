"""The typed ingest path: a request decoded once into Structs, checked and normalised
column by column, each event leaving with its final bytes.

Taken when no ingest plugin runs. msgspec decodes the body into ``Message`` Structs that
check the id types and messageId's length as they decode; the parts the relay does not
read (properties, traits, the values inside context and integrations, ...) stay the raw
bytes they arrived as (``msgspec.Raw``) and are written out as they came. The result is
what ``normalise`` + ``encode`` make of the same message, field for field; only the bytes
differ (key order, and the raw parts' own spacing and number forms).

Whatever this path does not take exactly goes to the dict path, which stays the one that
refuses: ``read_batch``/``read_single`` answer None for a body of any other shape (a field
not declared here, an id of another type, invalid UTF-8, a number out of range, ...), and
``admit`` answers None when any message would be refused. The caller then handles the
request as before, so every answer, error and dead letter is the dict path's own.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, Raw, Struct, UnsetType

from relay.errors import InvalidMessage
from relay.ingest import bodies, columns
from relay.ingest.normalise import MAX_MESSAGE_ID_CHARS
from relay.types import Arrival, Event

Id = str | int | float | None
Scalar = str | int | float | bool | None
Fields = dict[str, Raw]  # an object whose values stay raw


class Message(Struct, omit_defaults=True, forbid_unknown_fields=True):
    """One message as SDKs send it. An undeclared field fails the decode (and the request
    takes the dict path): a Struct would drop it. The time fields come last, so that they
    are encoded last, in ``normalise.TIME_FIELDS`` order (``relay.sinks.segment`` reads
    them at the end of the stored bytes)."""

    type: str | UnsetType = UNSET
    messageId: Annotated[str, Meta(max_length=MAX_MESSAGE_ID_CHARS)] | UnsetType | None = UNSET
    userId: Id | UnsetType = UNSET
    anonymousId: Id | UnsetType = UNSET
    event: Id | UnsetType = UNSET
    groupId: Id | UnsetType = UNSET
    previousId: Id | UnsetType = UNSET
    name: Raw | UnsetType = UNSET
    category: Raw | UnsetType = UNSET
    properties: Raw | UnsetType = UNSET
    traits: Raw | UnsetType = UNSET
    context: Fields | UnsetType | None = UNSET
    integrations: Fields | UnsetType | None = UNSET
    options: Raw | UnsetType = UNSET
    version: Raw | UnsetType = UNSET
    channel: Raw | UnsetType = UNSET
    _metadata: Raw | UnsetType = UNSET
    rudderId: Raw | UnsetType = UNSET
    writeKey: Scalar | UnsetType = UNSET  # removed; a scalar, so that nothing deep goes unseen
    receivedAt: Scalar | UnsetType = UNSET
    sentAt: Id | UnsetType = UNSET
    originalTimestamp: Id | UnsetType = UNSET
    timestamp: Id | UnsetType = UNSET


class Batch(Struct, forbid_unknown_fields=True):
    """A batch request's body; the fields the relay does not read are declared so that
    their nesting is checked as the dict path checks it."""

    batch: list[Message]
    writeKey: Any = None
    sentAt: Any = None
    context: Fields | None = None
    integrations: Fields | None = None
    messageId: Raw | UnsetType = UNSET  # analytics-go
    timestamp: Raw | UnsetType = UNSET  # the classic analytics-node
    _metadata: Raw | UnsetType = UNSET

    def extras(self) -> list[object]:
        """The body's fields besides the batch, for the nesting check."""
        return [value for value in (self.writeKey, self.sentAt, self.context, self.integrations,
                                    self.messageId, self.timestamp, self._metadata)
                if value is not UNSET]


_batch = msgspec.json.Decoder(Batch).decode
_single = msgspec.json.Decoder(Message).decode
_encode = msgspec.json.Encoder().encode

# Numbers msgspec refuses as out of range (1e400, 400 digits): a raw part is not decoded,
# so they are looked for in the bytes, on a copy where each byte stands for its class:
# digits and "." -> 0; "-" -> m; e, E and + -> e; what may come before or after a number
# (":", "[", ",", "}", "]", a space) -> ","; all else -> x. A number with a positive exponent
# of 3 digits or more then reads ",m0...e000," (a negative one only underflows to 0, as
# the dict path reads it too), a mantissa that could overflow with a shorter one a run of
# 200 zeros. Inside a string these rarely occur (an iPhone's user agent, "Mobile/15E148
# Safari", does not: its number follows a "/"); when they do, the request takes the dict
# path, which decides. The scan looks for "e000...," (a literal start: sre runs through
# the bytes at C speed, where a pattern that starts at a separator would be tried at every
# one of them, 2 µs an event) and reads back from each exponent it finds.
_CLASSES = bytes(
    ord("0") if chr(c) in "0123456789." else ord("m") if c == ord("-") else ord("e") if chr(c) in "eE+"
    else ord(",") if chr(c) in ":[,}] \t" else ord("x")
    for c in range(256)
)
_EXPONENT = re.compile(rb"e000+,")
_LONG_MANTISSA = b"0" * 200


def _after_a_number(mapped: bytes, at: int) -> bool:
    """Whether the exponent at ``at`` in a body's classes ends a number, ",m?0+e+000+,"
    (and not a string's text). A mantissa longer than the 200 bytes read back is a long
    run of zeros, found anyway."""
    head = mapped[max(0, at - 200):at].rstrip(b"e")  # the exponent's sign: "e+" reads "ee"
    digits = head.rstrip(b"0")
    if len(digits) == len(head):
        return False  # no digit before the e
    return not digits or digits.removesuffix(b"m")[-1:] == b","


def plain(data: bytes) -> bytes | None:
    """The body when this path may read it, else None: without a BOM; compact (a raw part
    is stored as sent: a body with line breaks, or whose first key is followed by a space
    as Python's json writes it, is made compact first); valid UTF-8 (msgspec checks no raw
    part); no number out of range."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if not data:
        return None
    if b"\n" in data or b"\r" in data or not _compact_head(data):
        try:
            data = msgspec.json.format(data, indent=-1)
        except (msgspec.DecodeError, RecursionError):
            return None
    if not data.isascii():
        try:
            data.decode()
        except UnicodeDecodeError:
            return None
    mapped = data.translate(_CLASSES)
    if _LONG_MANTISSA in mapped:
        return None
    for found in _EXPONENT.finditer(mapped):
        if _after_a_number(mapped, found.start()):
            return None
    return data


def _compact_head(data: bytes) -> bool:
    """Whether the body opens as compact JSON does: ``{"key":`` and then no space."""
    end = data.find(b'"', 2)
    return (data[:2] == b'{"' and end > 0 and data[end - 1] != 0x5C  # (a backslash: an escaped quote)
            and data[end + 1:end + 2] == b":" and data[end + 2:end + 3] not in _SPACES)


_SPACES = (b" ", b"\t", b"")


def read_batch(data: bytes, max_messages: int) -> Batch | None:
    """A batch body decoded, or None for the dict path (which also refuses a batch that is
    empty or holds more than ``max_messages``)."""
    body = plain(data)
    if body is None:
        return None
    try:
        batch = _batch(body)
    except (msgspec.DecodeError, RecursionError):
        return None
    if not 0 < len(batch.batch) <= max_messages:
        return None
    if columns.brackets(_encode(batch.extras())) > bodies.MAX_NESTING and bodies.too_deep(body):
        return None
    return batch


def read_single(data: bytes) -> Message | None:
    """A single-message body decoded, or None for the dict path."""
    body = plain(data)
    if body is None:
        return None
    try:
        return _single(body)
    except (msgspec.DecodeError, RecursionError):
        return None


def admit_batch(batch: Batch, arrival: Arrival, data: bytes) -> list[Event] | None:
    """The events of a decoded batch, or None if any message would be refused."""
    try:
        return columns.normalise(batch.batch, arrival, None, batch.context or None,
                                 batch.integrations or None, data, bodies.MAX_NESTING - 2)
    except (InvalidMessage, OverflowError):  # (a time the dict path refuses when it reads it)
        return None


def admit_single(message: Message, kind: str, arrival: Arrival, data: bytes) -> list[Event] | None:
    """The event of a single-message route (``kind`` is the route's type), or None."""
    try:
        return columns.normalise([message], arrival, kind, None, None, data, bodies.MAX_NESTING)
    except (InvalidMessage, OverflowError):
        return None
