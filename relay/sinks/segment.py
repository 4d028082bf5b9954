"""The ``segment`` type: any Segment-compatible collector (Segment, RudderStack, a relay).

Each event is sent with its own time: the relay's corrected ``timestamp`` also becomes
its ``originalTimestamp`` and the request carries a fresh ``sentAt``, so the upstream's
skew correction (``receivedAt - (sentAt - originalTimestamp)``) lands on that same time
however long the event waited in the queue.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from relay import timestamps
from relay.config import DestinationConfig
from relay.forward.retry import Answer
from relay.sinks import Outgoing
from relay.sinks.http import HttpClient, HttpSink
from relay.types import Stored

_decode = msgspec.json.Decoder(dict[str, Any]).decode
_encode = msgspec.json.Encoder().encode


AUTH_CACHE_KEYS = 4096
_RECEIVED = b',"receivedAt":"'
# The tail ingest writes: receivedAt, then sentAt and originalTimestamp when present, then
# timestamp, and the object's end. A value with a quote in it (an escape) does not match.
_TAIL = re.compile(rb',"receivedAt":"[^"]*"(?:,"sentAt":"[^"]*")?(?:,"originalTimestamp":"[^"]*")?'
                   rb',"timestamp":"([^"]*)"\}\Z')


def retime(body: bytes) -> bytes | None:
    """The event with ``originalTimestamp`` := ``timestamp`` and no ``sentAt``, rewritten on
    the encoded bytes: decoding and encoding every event of a backlog costs more than the
    rest of the drain. Ingest writes the time fields last, in ``relay.ingest.normalise.TIME_FIELDS``
    order, so the last ``,"receivedAt":"`` starts them (a quote inside a JSON string is
    escaped, so the pattern only matches a key). None when the tail is not exactly those
    fields, for the caller to decode the event instead."""
    at = body.rfind(_RECEIVED)
    if at < 0:
        return None
    tail = _TAIL.match(body, at)
    if tail is None:
        return None
    when = tail[1]
    head = memoryview(body)[:body.index(b'"', at + len(_RECEIVED)) + 1]  # through receivedAt's value
    return b"".join((head, b',"originalTimestamp":"', when, b'","timestamp":"', when, b'"}'))


@functools.lru_cache(maxsize=AUTH_CACHE_KEYS)
def _basic(key: str) -> str:
    """Basic auth for a write key; the most recent keys' headers are kept (bounded, whatever
    the number of sources)."""
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode("ascii")


def as_sent(body: bytes) -> bytes:
    """The event as it is forwarded: its own time as ``originalTimestamp``, no ``sentAt``."""
    data = retime(body)
    if data is None:  # not the shape ingest writes (a plugin changed it): decode
        message = _decode(body)
        message.pop("sentAt", None)
        if "timestamp" in message:
            message["originalTimestamp"] = message["timestamp"]
        data = _encode(message)
    return data


class SegmentSink(HttpSink):
    def __init__(self, config: DestinationConfig) -> None:
        self.config = config
        self._http = HttpClient(config, config.endpoint.rstrip("/") + "/v1/batch")

    @property
    def url(self) -> str:
        return self._http.url

    def prepare(self, event: Stored) -> Outgoing:
        return Outgoing(event, as_sent(event.body), self.config.write_key or event.write_key)

    def payload(self, batch: Sequence[Outgoing], sent_at: datetime) -> bytes:
        return b"".join((
            b'{"batch":[', b",".join(o.data for o in batch), b'],"sentAt":',
            _encode(timestamps.iso(sent_at)), b',"writeKey":', _encode(batch[0].key), b"}",
        ))

    def _authorization(self, key: str) -> str:
        return _basic(key)

    async def send(self, batch: Sequence[Outgoing]) -> Answer:
        body = self.payload(batch, datetime.now(UTC))
        return await self._http.request(body, {"Authorization": self._authorization(batch[0].key)})
