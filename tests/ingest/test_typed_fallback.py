"""When the typed path hands a request to the dict path, and that the dict path then answers
as it always has; when it takes one the dict path would take (however the body is written),
it makes the same events. Each case names the rule it pins."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from relay.ingest import typed
from relay.ingest.normalise import MAX_MESSAGE_BYTES
from tests.ingest.paths import PEER_IP, assert_same_events, dict_path, made_ids, typed_path

MID = "0b6f9f0e-8f0a-4d0c-9b8a-3a1f6f3f2d11"


def track(**fields: Any) -> dict[str, Any]:
    return {"type": "track", "userId": "u1", "event": "Signed Up", "messageId": MID,
            "timestamp": "2024-06-01T11:59:00.000Z", **fields}


def batch(*messages: Any, **fields: Any) -> bytes:
    return json.dumps({"batch": list(messages), **fields}, separators=(",", ":")).encode()


def raw_batch(message_json: bytes) -> bytes:
    return b'{"batch":[' + message_json + b"]}"


# (rule, body, route, what the dict path answers: ("refused", code) | ("dead", reason start) | ("accepted",))
HANDED_ON: list[tuple[str, bytes, str, tuple[str, ...]]] = [
    # read: shapes the typed decode does not take
    ("a message field the Struct does not declare would be lost: the dict path keeps it",
     batch(track(session_id=7)), "batch", ("accepted",)),
    ("a body field the Struct does not declare",
     batch(track(), requestId="r1"), "batch", ("accepted",)),
    ("a userId that is an object, with an anonymousId",
     batch(track(userId={"id": 1}, anonymousId="a1")), "batch", ("accepted",)),
    ("a boolean userId and no anonymousId",
     batch(track(userId=True)), "batch", ("dead", "message needs a userId or an anonymousId")),
    ("a messageId that is a number",
     batch(track(messageId=7)), "batch", ("dead", "messageId must be a string")),
    ("a messageId past 100 characters",
     batch(track(messageId="m" * 101)), "batch", ("dead", "messageId is longer than 100")),
    ("a message that is not an object",
     batch(track(), "not a message"), "batch", ("dead", "message must be a JSON object")),
    ("a context that is not an object",
     batch(track(context="ctx")), "batch", ("dead", "context must be an object")),
    ("integrations that are not an object",
     batch(track(integrations=[1])), "batch", ("dead", "integrations must be an object")),
    ("a timestamp that is a boolean",
     batch(track(timestamp=True)), "batch", ("dead", "timestamp is not an ISO-8601")),
    ("a writeKey in a message that is an object",
     batch(track(writeKey={"k": 1})), "batch", ("accepted",)),
    ("invalid UTF-8 inside properties (a raw part: msgspec does not check it)",
     raw_batch(b'{"type":"track","userId":"u","event":"E","properties":{"a":"\xff"}}'), "batch",
     ("refused", "invalid_json")),
    ("a number out of range inside properties",
     raw_batch(b'{"type":"track","userId":"u","event":"E","properties":{"a":1e400}}'), "batch",
     ("refused", "invalid_json")),
    ("a negative one, with a signed exponent, in a list",
     raw_batch(b'{"type":"track","userId":"u","event":"E","properties":{"a":[1,-2.5E+400]}}'), "batch",
     ("refused", "invalid_json")),
    ("text that reads as a number out of range after a separator: left to the dict path, which takes it",
     batch(track(properties={"note": "ratio: 1e400, roughly"})), "batch", ("accepted",)),
    ("a mantissa of 320 digits inside properties",
     raw_batch(b'{"type":"track","userId":"u","event":"E","properties":{"a":' + b"1" * 320 + b".5}}"),
     "batch", ("refused", "invalid_json")),
    ("an exponent of 3 digits in range (1e+100): left to the dict path, which takes it",
     raw_batch(b'{"type":"track","userId":"u","event":"E","properties":{"a":1e+100}}'), "batch",
     ("accepted",)),
    ("properties nested past the limit",
     raw_batch(b'{"type":"track","userId":"u","event":"E","properties":{"a":' + b"[" * 70 + b"]" * 70
               + b"}}"), "batch", ("refused", "nesting_too_deep")),
    ("a body-level field nested past the limit",
     b'{"batch":[{"type":"track","userId":"u","event":"E"}],"writeKey":' + b"[" * 70 + b"]" * 70 + b"}",
     "batch", ("refused", "nesting_too_deep")),
    ("an empty batch", batch(), "batch", ("refused", "invalid_batch")),
    ("a batch of 2,501 messages", batch(*[track(messageId=f"m{i}") for i in range(2501)]), "batch",
     ("refused", "batch_too_large")),
    ("a batch-level context that is not an object", batch(track(), context=[1]), "batch",
     ("refused", "invalid_batch")),
    ("a body that is an array", b"[]", "batch", ("refused", "invalid_json")),
    ("an empty body", b"", "batch", ("refused", "invalid_json")),
    ("a body that is not JSON", b'{"batch":[', "batch", ("refused", "invalid_json")),
    # admission: messages the dict path refuses
    ("a type that is none of the six", batch(track(type="bogus")), "batch", ("dead", "type must be one of")),
    ("a message without a type", batch({"userId": "u"}), "batch", ("dead", "message has no type")),
    ("neither userId nor anonymousId", batch(track(userId=None)), "batch",
     ("dead", "message needs a userId or an anonymousId")),
    ("an empty userId and no anonymousId", batch(track(userId="")), "batch",
     ("dead", "message needs a userId or an anonymousId")),
    ("a track without its event", batch(track(event="")), "batch", ("dead", "track needs event")),
    ("a group without its groupId", batch({"type": "group", "userId": "u"}), "batch",
     ("dead", "group needs groupId")),
    ("an alias without its previousId", batch({"type": "alias", "userId": "u"}), "batch",
     ("dead", "alias needs previousId")),
    ("a timestamp that is no time", batch(track(timestamp="yesterday")), "batch",
     ("dead", "timestamp is not an ISO-8601")),
    ("a time that is out of range once in UTC", batch(track(timestamp="0001-01-01T00:00:00+01:00")),
     "batch", ("dead", "timestamp is not an ISO-8601")),
    ("a message's sentAt that is no time", batch(track(sentAt="soon")), "batch",
     ("dead", "sentAt is not an ISO-8601")),
    ("a batch sentAt that is no time, for a message with its own time",
     batch(track(), sentAt="soon"), "batch", ("dead", "sentAt is not an ISO-8601")),
    ("a skew too large to correct",
     batch(track(timestamp="9999-12-31T00:00:00Z", sentAt="0001-01-01T00:00:00Z",
                 context={"library": {"name": "analytics.js"}})),
     "batch", ("dead", "sentAt and the event's time are too far apart")),
    ("a message over the size limit", batch(track(properties={"a": "x" * (MAX_MESSAGE_BYTES + 1024)})),
     "batch", ("dead", f"message is larger than {MAX_MESSAGE_BYTES}")),
    ("a message the dict path writes past the size limit, though its raw parts are shorter",
     raw_batch(b'{"type":"track","userId":"u","event":"E","properties":{"a":['
               + b",".join([b"1e15"] * 7000) + b"]}}"), "batch", ("dead", "message is larger than")),
    ("a single message that breaks the protocol: its route answers 400", json.dumps({"userId": "u"}).encode(),
     "track", ("refused", "invalid_message")),
]


@pytest.mark.parametrize(("rule", "data", "route", "expected"), HANDED_ON, ids=[c[0] for c in HANDED_ON])
def test_the_typed_path_hands_on_what_it_does_not_take_exactly(rule: str, data: bytes, route: str,
                                                               expected: tuple[str, ...]) -> None:
    assert typed_path(data, route, PEER_IP).events is None
    outcome = dict_path(data, route, PEER_IP)
    if expected[0] == "refused":
        assert outcome.refused is not None and outcome.refused[0] == expected[1], outcome.refused
    elif expected[0] == "dead":
        assert outcome.refused is None
        assert any(reason.startswith(expected[1]) for reason in outcome.dead), outcome.dead
    else:
        assert outcome.refused is None and not outcome.dead and outcome.events


SPACED = json.dumps({"batch": [track(properties={"a": [1, 2], "b": {"c": "d, e: f"}})]}).encode()
TAKEN: list[tuple[str, bytes, str]] = [
    ("compact JSON", batch(track(properties={"a": [1, 2]})), "batch"),
    ("JSON as Python's json writes it (a space after , and :): stored compact", SPACED, "batch"),
    ("pretty-printed JSON: stored compact", json.dumps(json.loads(SPACED), indent=2).encode(), "batch"),
    ("a BOM and a final line break", b"\xef\xbb\xbf" + batch(track()) + b"\n", "batch"),
    ("unicode, escaped and not",
     raw_batch(b'{"type":"track","userId":"\\u00fc","event":"E",'
               b'"properties":{"k":"\\u2713 \xe2\x9c\x93","\\u00e9":1}}'), "batch"),
    ("numbers the dict path writes otherwise (1e15, 1.10, -0)",
     raw_batch(b'{"type":"track","userId":"u","event":"E",'
               b'"properties":{"a":1e15,"b":1.10,"c":-0,"d":1E2}}'), "batch"),
    ("an iPhone's user agent (Mobile/15E148): a string, not a number out of range",
     batch(track(context={"userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) "
                                        "AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 "
                                        "Mobile/15E148 Safari/604.1"})), "batch"),
    ("a key given twice in a raw part: the dict path keeps the later value, so does decoding it",
     raw_batch(b'{"type":"track","userId":"u","event":"E","properties":{"a":1,"a":2}}'), "batch"),
    ("a message field given twice: the later value, as in the dict path",
     raw_batch(b'{"type":"track","userId":"first","userId":"later","event":"E"}'), "batch"),
    ("two types for one message: the later", raw_batch(b'{"type":"track","type":"identify","userId":"u"}'),
     "batch"),
    ("context.ip null: filled from the peer", batch(track(context={"ip": None})), "batch"),
    ("context null: an object with the peer's address", batch(track(context=None)), "batch"),
    ("a server library at batch level only (analytics-go)",
     batch(track(), context={"library": {"name": "analytics-go"}}, messageId="b1"), "batch"),
    ("batch-level integrations merged under the message's own",
     batch(track(integrations={"A": False}), integrations={"All": True, "A": True}), "batch"),
    ("an explicit null integrations", batch(track(integrations=None)), "batch"),
    ("no event time: a message's sentAt kept as sent",
     batch(track(timestamp=None, sentAt="whenever")), "batch"),
    ("epoch milliseconds", batch(track(timestamp=1717243200000, sentAt=1717243210000.5)), "batch"),
    ("a mixed batch: server and client libraries, and times of every form", batch(
        track(context={"library": {"name": "analytics-python"}},
              timestamp="2024-06-01T11:00:00.123456+00:00"),
        track(messageId="m2", context={"library": {"name": "analytics.js"}},
              sentAt="2024-06-01T11:59:30.000Z"),
        track(messageId="m3", originalTimestamp="2024-06-01T09:30:00+02:00",
              timestamp="2024-06-01T08:00:00Z"),
        track(messageId="m4", timestamp="2024-06-01T07:30:00"),
        {"type": "identify", "anonymousId": "a", "traits": {"plan": "pro"}},
        sentAt="2024-06-01T11:59:50Z"), "batch"),
    ("a single event: the route's type wins over the body's",
     json.dumps(track(type="page")).encode(), "track"),
    ("a single browser event with writeKey, sentAt and _metadata", json.dumps(track(
        writeKey="wk", sentAt="2024-06-01T11:59:59.000Z", _metadata={"bundled": ["Segment.io"]},
        context={"library": {"name": "analytics.js", "version": "2.1"}})).encode(), "track"),
]


@pytest.mark.parametrize(("rule", "data", "route"), TAKEN, ids=[c[0] for c in TAKEN])
def test_the_typed_path_takes_these_and_makes_what_the_dict_path_makes(rule: str, data: bytes,
                                                                      route: str) -> None:
    fast = typed_path(data, route, PEER_IP)
    slow = dict_path(data, route, PEER_IP)
    assert fast.events is not None
    assert slow.refused is None and not slow.dead
    assert_same_events(fast.events, slow.events, made_ids(data, route))


def test_a_key_given_twice_keeps_the_later_value_and_stores_nothing_of_the_earlier() -> None:
    """The one place the paths differ: msgspec keeps the later of two equal keys as the dict
    path does, but the dict path refuses the whole request when the earlier value nests
    past the limit, where the typed path takes it and the earlier value is not stored."""
    data = raw_batch(b'{"type":"track","userId":"u","event":"E","properties":' + b"[" * 70 + b"]" * 70
                     + b',"properties":{"a":1}}')
    [event] = typed_path(data, "batch", PEER_IP).events or []
    assert event.body["properties"] == {"a": 1}
    assert b"[[" not in event.data


def test_a_message_near_the_size_limit_is_stored_as_the_dict_path_writes_it() -> None:
    """Past a few KB an event's raw parts are written in their compact form, so that the
    size checked and stored is the dict path's."""
    numbers = b",".join([b"1e15"] * 1500)
    data = raw_batch(b'{"type":"track","userId":"u","event":"E","messageId":"m","properties":{"a":['
                     + numbers + b"]}}")
    [event] = typed_path(data, "batch", PEER_IP).events or []
    [old] = dict_path(data, "batch", PEER_IP).events
    assert b"1e15" not in event.data and len(event.data) == len(old.encode())


def test_the_lazy_body_is_decoded_once_from_the_stored_bytes() -> None:
    [event] = typed_path(batch(track()), "batch", PEER_IP).events or []
    body = event.body
    assert body is event.body
    assert body == msgspec.json.decode(event.data)
    body["extra"] = 1  # a plugin's change is the body's, as on the dict path
    assert event.body["extra"] == 1


def test_the_body_is_read_into_the_declared_structs_only() -> None:
    """Every field the typed path stores comes from a declared field: a Struct drops what
    it does not declare, so an undeclared field must send the request on (and it does)."""
    declared = set(typed.Message.__struct_fields__)
    assert {"properties", "traits", "context", "integrations", "_metadata", "timestamp"} <= declared
    assert typed.read_batch(batch(track(somethingElse=1)), 2500) is None
