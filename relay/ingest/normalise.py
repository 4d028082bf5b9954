"""The event envelope, and the normalisation that turns an SDK's message into one.

A message is decoded once (at the edge, by msgspec) into a plain dict; ``normalise``
validates it against the protocol, fills the fields the relay owns (messageId,
receivedAt, the corrected timestamp, context.ip, batch-level context) and wraps it in
an ``Event``: the one typed envelope that every later stage receives.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from relay import timestamps
from relay.errors import InvalidMessage
from relay.types import Arrival, Event

MESSAGE_TYPES = frozenset({"identify", "track", "page", "screen", "group", "alias"})
MAX_MESSAGE_BYTES = 32 * 1024
# Fields the relay adds (receivedAt, messageId, timestamps, context.ip, batch context)
# may take a message the SDK measured as under 32 KB slightly over; allow for them.
ADDED_FIELDS_ALLOWANCE = 1024
MAX_MESSAGE_ID_CHARS = 100
REQUIRED_BY_TYPE: dict[str, tuple[str, ...]] = {
    "track": ("event",),
    "group": ("groupId",),
    "alias": ("previousId", "userId"),
}
# Libraries that run on servers: their explicit timestamp is kept as given and the
# request's peer address is not the user's, so context.ip is not filled for them.
SERVER_LIBRARIES = frozenset(
    {
        "analytics-python",
        "analytics-node",
        "@segment/analytics-node",
        "analytics-go",
        "analytics-ruby",
        "analytics-java",
        "analytics-php",
        "analytics.net",
        "analytics-dotnet",
        "rudder-analytics-python",
        "@rudderstack/rudder-sdk-node",
        "rudder-sdk-go",
        "rudder-sdk-ruby",
        "rudder-sdk-java",
    }
)

_time = timestamps.field_time
_given = timestamps.given
_canonical = timestamps.canonical


def normalise(message: object, arrival: Arrival, type_hint: str | None = None) -> Event:
    """Validate one message and fill the relay's fields; raise InvalidMessage naming the fault.

    It runs once for every event on the ingest path, so the common cases (string ids, a
    messageId given, no batch-level context) take the shortest way through."""
    if not isinstance(message, dict):
        raise InvalidMessage("message must be a JSON object")
    msg_type = type_hint or message.get("type")
    if not isinstance(msg_type, str) or msg_type not in MESSAGE_TYPES:
        if msg_type is None:
            raise InvalidMessage("message has no type")
        raise InvalidMessage(f"type must be one of {', '.join(sorted(MESSAGE_TYPES))}")
    message["type"] = msg_type
    if not (_is_id(message.get("userId")) or _is_id(message.get("anonymousId"))):
        raise InvalidMessage("message needs a userId or an anonymousId")
    required = REQUIRED_BY_TYPE.get(msg_type)
    if required is not None:
        for name in required:
            if not _is_id(message.get(name)):
                raise InvalidMessage(f"{msg_type} needs {name}")
    message_id = message.get("messageId")
    if not (isinstance(message_id, str) and 0 < len(message_id) <= MAX_MESSAGE_ID_CHARS):
        message_id = _message_id(message)
    if "writeKey" in message:
        del message["writeKey"]
    context = message.get("context")
    if context is None:
        context = {}
        if "context" in message:  # "context": null becomes an object the relay can fill
            message["context"] = context
    elif not isinstance(context, dict):
        raise InvalidMessage("context must be an object")
    if arrival.context:
        context = message["context"] = {**arrival.context, **context}
    if arrival.integrations or "integrations" in message:
        _merge(message, "integrations", arrival.integrations)
    library = context.get("library")
    library_name = library.get("name") if isinstance(library, dict) else None
    server_side = isinstance(library_name, str) and library_name.lower() in SERVER_LIBRARIES
    if not server_side and arrival.peer_ip and context.get("ip") is None:
        context["ip"] = arrival.peer_ip
    if context and "context" not in message:
        message["context"] = context
    _set_times(message, arrival, server_side)
    return Event(message_id, arrival.write_key, msg_type, arrival.received_ts, message)


def _is_id(value: object) -> bool:
    if isinstance(value, str):
        return bool(value)
    return isinstance(value, int | float) and not isinstance(value, bool)


def _message_id(message: dict[str, Any]) -> str:
    value = message.get("messageId")
    if value is None or value == "":
        value = str(uuid.uuid4())
        message["messageId"] = value
        return value
    if not isinstance(value, str):
        raise InvalidMessage("messageId must be a string")
    if len(value) > MAX_MESSAGE_ID_CHARS:
        raise InvalidMessage(f"messageId is longer than {MAX_MESSAGE_ID_CHARS} characters")
    return value


def _merge(message: dict[str, Any], key: str, batch_level: dict[str, Any] | None) -> dict[str, Any]:
    own = message.get(key)
    if own is None:
        own = {}
    elif not isinstance(own, dict):
        raise InvalidMessage(f"{key} must be an object")
    if batch_level:
        own = {**batch_level, **own}
    if own or key in message:
        message[key] = own
    return own


TIME_FIELDS = ("receivedAt", "sentAt", "originalTimestamp", "timestamp")


def _set_times(message: dict[str, Any], arrival: Arrival, server_side: bool) -> None:
    """receivedAt, originalTimestamp, sentAt (written in UTC with a Z) and the corrected
    timestamp; each given time is parsed once, the batch's sentAt once per request. They
    are written last, in ``TIME_FIELDS`` order, so that forwarding can rewrite them on the
    encoded event without decoding it (``relay.sinks.segment``)."""
    message.pop("receivedAt", None)
    explicit = message.pop("timestamp", None)
    given = message.pop("originalTimestamp", None)
    sent = message.pop("sentAt", None)
    message["receivedAt"] = arrival.received_iso
    field = "originalTimestamp" if _given(given) else "timestamp"
    if not _given(given):
        given = explicit
    if not _given(given):
        if _given(sent):
            message["sentAt"] = sent  # nothing to correct without the event's own time: kept
        message["timestamp"] = arrival.received_iso
        return
    original = _time(given, field)
    original_iso = _canonical(given, original)
    sent_at: datetime | None = None
    if _given(sent):
        sent_at = _time(sent, "sentAt")
        message["sentAt"] = _canonical(sent, sent_at)
    elif _given(arrival.sent_at):
        sent_at = arrival.batch_sent_at or _time(arrival.sent_at, "sentAt")  # parsed once a request
        message["sentAt"] = arrival.batch_sent_iso
    message["originalTimestamp"] = original_iso
    if server_side and _given(explicit):
        message["timestamp"] = (original_iso if field == "timestamp"
                                else _canonical(explicit, _time(explicit, "timestamp")))
    elif sent_at is not None:
        try:
            corrected = timestamps.corrected(arrival.received_at, sent_at, original)
        except OverflowError:
            raise InvalidMessage("sentAt and the event's time are too far apart to correct") from None
        message["timestamp"] = timestamps.iso(corrected)
    else:
        message["timestamp"] = original_iso


def check_size(encoded: bytes) -> None:
    if len(encoded) > MAX_MESSAGE_BYTES + ADDED_FIELDS_ALLOWANCE:
        raise InvalidMessage(f"message is larger than {MAX_MESSAGE_BYTES} bytes")
