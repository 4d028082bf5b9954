"""The two ways a request's body becomes events, run side by side without a socket: the dict
path (parse, the batch checks, ``admission.admit``) and the typed path (``typed.read_*`` and
``typed.admit_*``), with what each made of it in a form that can be compared."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from relay.errors import InvalidMessage
from relay.ingest import admission, bodies, routes, typed
from relay.ingest.normalise import TIME_FIELDS
from relay.ingest.responses import Rejection
from relay.sinks import segment
from relay.types import Arrival, Event

RECEIVED = datetime(2024, 6, 1, 12, 0, 0, 123000, tzinfo=UTC)
WRITE_KEY = "wk"
PEER_IP = "192.0.2.10"
_sorted = msgspec.json.Encoder(order="sorted").encode
_decode = msgspec.json.Decoder(dict[str, Any]).decode


@dataclass
class Outcome:
    """What the dict path made of a request: refused as a whole (``refused`` is the
    answer's code and message), or events and dead letters (their reasons)."""

    refused: tuple[str, str] | None = None
    events: list[Event] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    write_key: object = None  # the body's writeKey, as the write key is resolved from it


def dict_path(data: bytes, route: str, peer: str | None = None, query_key: str | None = None) -> Outcome:
    """``route`` is "batch" or a single message's type (as the route names it)."""
    try:
        body = bodies.parse_json(data)
    except Rejection as exc:
        return Outcome(refused=(exc.code, exc.message))
    if not isinstance(body, dict):
        return Outcome(refused=("invalid_json", "request body must be a JSON object"))
    if route != "batch":
        arrival = Arrival(WRITE_KEY, RECEIVED, peer)
        try:
            admitted = _run(admission.admit([body], arrival, None, type_hint=route, strict=True))
        except InvalidMessage as exc:
            return Outcome(refused=("invalid_message", str(exc)), write_key=body.get("writeKey"))
        return Outcome(events=admitted.events, dead=[d.reason for d in admitted.dead],
                       write_key=body.get("writeKey"))
    if query_key and not body.get("writeKey"):
        body["writeKey"] = query_key
    try:
        messages, context, integrations = routes.batch_parts(body)
    except Rejection as exc:
        return Outcome(refused=(exc.code, exc.message), write_key=body.get("writeKey"))
    arrival = Arrival(WRITE_KEY, RECEIVED, peer, sent_at=body.get("sentAt"), context=context,
                      integrations=integrations)
    admitted = _run(admission.admit(messages, arrival, None, indexed=True))
    return Outcome(events=admitted.events, dead=[d.reason for d in admitted.dead],
                   write_key=body.get("writeKey"))


@dataclass
class Typed:
    """What the typed path made of a request: None where it handed the request on."""

    events: list[Event] | None
    write_key: object = None
    read: bool = False  # whether the body was decoded (else it was declined on reading)


def typed_path(data: bytes, route: str, peer: str | None = None, query_key: str | None = None) -> Typed:
    if route == "batch":
        decoded = typed.read_batch(data, routes.MAX_BATCH_MESSAGES)
        if decoded is None:
            return Typed(None)
        key = decoded.writeKey if not query_key or decoded.writeKey else query_key
        arrival = Arrival(WRITE_KEY, RECEIVED, peer, sent_at=decoded.sentAt)
        return Typed(typed.admit_batch(decoded, arrival, data), key, True)
    message = typed.read_single(data)
    if message is None:
        return Typed(None)
    arrival = Arrival(WRITE_KEY, RECEIVED, peer)
    return Typed(typed.admit_single(message, route, arrival, data), message.writeKey, True)


def made_ids(data: bytes, route: str) -> list[bool]:
    """For each message of the request, whether the relay makes its messageId (it has none)."""
    body = msgspec.json.decode(data.removeprefix(b"\xef\xbb\xbf"))
    messages = body["batch"] if route == "batch" else [body]
    return [not isinstance(m.get("messageId"), str) or not m["messageId"] for m in messages]


def assert_same_events(fast: list[Event], slow: list[Event], made: list[bool]) -> None:
    """The same events, field for field: the same envelope, and bodies that decode to the
    same JSON (numbers of the same type), but for the messageIds the relay made, which must
    each be a fresh UUID, the same in the envelope and the body."""
    assert len(fast) == len(slow) == len(made)
    for new, old, was_made in zip(fast, slow, made, strict=True):
        assert (new.write_key, new.type, new.received_at) == (old.write_key, old.type, old.received_at)
        new_body, old_body = _decode(new.encode()), old.body
        if was_made:
            for event, body in ((new, new_body), (old, old_body)):
                assert body["messageId"] == event.message_id
                assert uuid.UUID(event.message_id).version == 4
                body["messageId"] = "made"
        else:
            assert new.message_id == old.message_id
        assert _sorted(new_body) == _sorted(old_body)
        assert new.body == _decode(new.data)  # the lazy body is the stored one
        assert list(new_body)[-len(_times(new_body)):] == _times(new_body)  # the times come last
        new_sent, old_sent = segment.retime(new.data), segment.retime(old.encode())
        assert (new_sent is None) == (old_sent is None)  # the segment sink rewrites both on the bytes
        if new_sent is not None and old_sent is not None:
            assert _sorted(_made(_decode(new_sent), was_made)) == _sorted(_made(_decode(old_sent), was_made))
        assert msgspec.json.format(new.data, indent=-1) == new.data  # stored compact
        assert len(old.encode()) * 2 <= len(new.data) * 9  # what the size check counts on


def _made(body: dict[str, Any], was_made: bool) -> dict[str, Any]:
    if was_made:
        body["messageId"] = "made"
    return body


def _times(body: dict[str, Any]) -> list[str]:
    return [name for name in TIME_FIELDS if name in body]


def _run(coroutine: Any) -> Any:
    """Run a coroutine that never waits (admission without plugins) to its result."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("admission without plugins waited")
