"""Normalisation at the edge: times, messageId, batch-level context, context.ip, the write key."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay import timestamps
from relay.errors import InvalidMessage
from relay.ingest.normalise import normalise
from relay.types import Arrival

RECEIVED = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)
RECEIVED_ISO = "2024-06-01T12:00:00.000Z"
PYTHON_LIB = {"library": {"name": "analytics-python", "version": "2.4.0"}}
BROWSER_LIB = {"library": {"name": "analytics.js", "version": "next-1.70.0"}}


def arrival(**overrides: Any) -> Arrival:
    fields: dict[str, Any] = {"write_key": "wk", "received_at": RECEIVED, "peer_ip": "192.0.2.10"}
    return Arrival(**{**fields, **overrides})


def track(**extra: Any) -> dict[str, Any]:
    return {"type": "track", "userId": "u", "event": "E", **extra}


# --- timestamps -----------------------------------------------------------------------------------

TIME_CASES: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    # (id, message fields, arrival overrides, expected fields)
    ("no-times: timestamp is receivedAt",
     {}, {},
     {"timestamp": RECEIVED_ISO, "receivedAt": RECEIVED_ISO, "originalTimestamp": None, "sentAt": None}),
    ("device clock 10 s behind the relay's, 10 s in flight: corrected",
     {"timestamp": "2024-06-01T11:59:40.000Z", "sentAt": "2024-06-01T11:59:50.000Z"}, {},
     {"timestamp": "2024-06-01T11:59:50.000Z", "originalTimestamp": "2024-06-01T11:59:40.000Z",
      "sentAt": "2024-06-01T11:59:50.000Z", "receivedAt": RECEIVED_ISO}),
    ("device clock years behind: only the delay before sending survives",
     {"timestamp": "2020-01-01T00:00:00.000Z", "sentAt": "2020-01-01T00:00:05.250Z"}, {},
     {"timestamp": "2024-06-01T11:59:54.750Z", "originalTimestamp": "2020-01-01T00:00:00.000Z"}),
    ("device clock an hour ahead: corrected back",
     {"timestamp": "2024-06-01T13:00:00.000Z", "sentAt": "2024-06-01T13:00:02.000Z"}, {},
     {"timestamp": "2024-06-01T11:59:58.000Z", "originalTimestamp": "2024-06-01T13:00:00.000Z"}),
    ("originalTimestamp is the event time when both are given",
     {"originalTimestamp": "2024-06-01T08:00:00Z", "timestamp": "2024-06-01T09:00:00Z",
      "sentAt": "2024-06-01T08:00:01Z"}, {},
     {"timestamp": "2024-06-01T11:59:59.000Z", "originalTimestamp": "2024-06-01T08:00:00.000Z"}),
    ("batch-level sentAt applies to a message without its own",
     {"timestamp": "2024-06-01T00:00:00Z"}, {"sent_at": "2024-06-01T00:00:30Z"},
     {"timestamp": "2024-06-01T11:59:30.000Z", "sentAt": "2024-06-01T00:00:30.000Z"}),
    ("a message's own sentAt wins over the batch's",
     {"timestamp": "2024-06-01T00:00:00Z", "sentAt": "2024-06-01T00:00:01Z"},
     {"sent_at": "2024-06-01T00:00:30Z"},
     {"timestamp": "2024-06-01T11:59:59.000Z", "sentAt": "2024-06-01T00:00:01.000Z"}),
    ("no sentAt: the client's time is kept",
     {"timestamp": "2024-05-31T22:00:00Z"}, {},
     {"timestamp": "2024-05-31T22:00:00.000Z", "originalTimestamp": "2024-05-31T22:00:00.000Z"}),
    ("offsets are written in UTC with a Z",
     {"timestamp": "2024-06-01T09:30:00+02:00"}, {},
     {"timestamp": "2024-06-01T07:30:00.000Z", "originalTimestamp": "2024-06-01T07:30:00.000Z"}),
    ("a naive time is read as UTC",
     {"timestamp": "2024-06-01T07:30:00"}, {},
     {"timestamp": "2024-06-01T07:30:00.000Z"}),
    ("epoch milliseconds are read",
     {"timestamp": 1717243200000}, {},
     {"timestamp": "2024-06-01T12:00:00.000Z", "originalTimestamp": "2024-06-01T12:00:00.000Z"}),
    ("server library: an explicit timestamp is kept as given despite sentAt",
     {"timestamp": "2024-05-01T00:00:00.000Z", "sentAt": "2024-05-01T00:00:10.000Z",
      "context": PYTHON_LIB}, {},
     {"timestamp": "2024-05-01T00:00:00.000Z", "originalTimestamp": "2024-05-01T00:00:00.000Z",
      "sentAt": "2024-05-01T00:00:10.000Z"}),
    ("server library named only at batch level (analytics-go): timestamp kept",
     {"timestamp": "2024-05-01T00:00:00Z"},
     {"sent_at": "2024-05-01T00:00:10Z", "context": {"library": {"name": "analytics-go", "version": "3"}}},
     {"timestamp": "2024-05-01T00:00:00.000Z"}),
    ("server library without a timestamp: receivedAt",
     {"sentAt": "2024-05-01T00:00:10Z", "context": PYTHON_LIB}, {},
     {"timestamp": RECEIVED_ISO}),
    ("browser library: corrected like any client",
     {"timestamp": "2024-05-01T00:00:00Z", "sentAt": "2024-05-01T00:00:10Z", "context": BROWSER_LIB}, {},
     {"timestamp": "2024-06-01T11:59:50.000Z"}),
]


@pytest.mark.parametrize(("fields", "overrides", "expected"), [c[1:] for c in TIME_CASES],
                         ids=[c[0] for c in TIME_CASES])
def test_times_are_filled_and_the_timestamp_corrected_for_clock_skew(fields, overrides, expected):
    event = normalise(track(**fields), arrival(**overrides))
    for key, value in expected.items():
        assert event.body.get(key) == value, key
    assert event.received_at == RECEIVED.timestamp()


def test_the_corrected_timestamp_is_received_at_minus_the_delay_before_sending():
    original = datetime(2031, 3, 4, 5, 6, 7, 891000, tzinfo=UTC)
    for delay_ms in (0, 1, 999, 86_400_000):
        sent = original + timedelta(milliseconds=delay_ms)
        event = normalise(track(timestamp=timestamps.iso(original), sentAt=timestamps.iso(sent)), arrival())
        corrected = timestamps.parse(event.body["timestamp"])
        assert RECEIVED - corrected == timedelta(milliseconds=delay_ms)


@pytest.mark.parametrize(
    ("fields", "overrides", "reason"),
    [
        ({"timestamp": "yesterday"}, {}, "timestamp is not an ISO-8601 date-time"),
        ({"originalTimestamp": "2024-13-45T99:00:00Z"}, {}, "originalTimestamp is not an ISO-8601 date-time"),
        ({"timestamp": "2024-06-01T00:00:00Z", "sentAt": "soon"}, {}, "sentAt is not an ISO-8601 date-time"),
        ({"timestamp": "2024-06-01T00:00:00Z"}, {"sent_at": ["x"]}, "sentAt is not an ISO-8601 date-time"),
        ({"timestamp": True}, {}, "timestamp is not an ISO-8601 date-time"),
        ({"timestamp": 1e20}, {}, "timestamp is not an ISO-8601 date-time"),
        ({"originalTimestamp": "0001-01-01T00:00:00Z", "sentAt": "9999-12-31T00:00:00Z"}, {},
         "sentAt and the event's time are too far apart to correct"),
    ],
    ids=["words", "impossible-date", "bad-sentAt", "bad-batch-sentAt", "boolean", "out-of-range",
         "correction-out-of-range"],
)
def test_an_unreadable_time_is_an_invalid_message_naming_the_field(fields, overrides, reason):
    with pytest.raises(InvalidMessage) as caught:
        normalise(track(**fields), arrival(**overrides))
    assert str(caught.value) == reason


async def test_skewed_sent_at_is_corrected_on_the_stored_event(relay):
    # The device's clock is 3 years behind; it sent the event 4.5 s after it happened.
    status, body, _ = await relay.post("/v1/batch", {
        "batch": [track(messageId="skewed", timestamp="2021-02-03T04:05:06.000Z")],
        "sentAt": "2021-02-03T04:05:10.500Z",
    })
    assert (status, body["accepted"]) == (200, 1)
    [event] = relay.events()
    received = timestamps.parse(event["receivedAt"])
    assert received - timestamps.parse(event["timestamp"]) == timedelta(milliseconds=4500)
    assert event["originalTimestamp"] == "2021-02-03T04:05:06.000Z"
    assert event["sentAt"] == "2021-02-03T04:05:10.500Z"
    [(received_at,)] = relay.rows("SELECT received_at FROM events")
    assert abs(received_at - received.timestamp()) < 0.001


async def test_an_impossible_time_on_a_single_route_is_a_400_not_a_500(relay):
    status, body, _ = await relay.post("/v1/track", track(originalTimestamp="0001-01-01T00:00:00Z",
                                                          sentAt="9999-12-31T00:00:00Z"))
    message = "sentAt and the event's time are too far apart to correct"
    assert (status, body) == (400, {"success": False, "code": "invalid_message", "message": message,
                                    "error": message})


# --- messageId ------------------------------------------------------------------------------------


@pytest.mark.parametrize("given", [None, ""], ids=["missing", "empty"])
def test_a_message_id_is_generated_when_missing(given):
    message = track() if given is None else track(messageId=given)
    first = normalise(message, arrival())
    second = normalise(track(), arrival())
    assert uuid.UUID(first.message_id).version == 4
    assert first.body["messageId"] == first.message_id
    assert first.message_id != second.message_id


@pytest.mark.parametrize("length", [1, 36, 100])
def test_a_message_id_up_to_100_characters_is_kept(length):
    event = normalise(track(messageId="m" * length), arrival())
    assert event.message_id == event.body["messageId"] == "m" * length


@pytest.mark.parametrize(
    ("message_id", "reason"),
    [("m" * 101, "messageId is longer than 100 characters"), (42, "messageId must be a string"),
     ({"id": 1}, "messageId must be a string")],
)
def test_a_message_id_that_is_too_long_or_not_text_is_invalid(message_id, reason):
    with pytest.raises(InvalidMessage) as caught:
        normalise(track(messageId=message_id), arrival())
    assert str(caught.value) == reason


# --- validation by type ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "hint", "reason"),
    [
        (["not", "an", "object"], None, "message must be a JSON object"),
        ({"userId": "u"}, None, "message has no type"),
        ({"type": "Track", "userId": "u", "event": "E"}, None,
         "type must be one of alias, group, identify, page, screen, track"),
        ({"type": ["track"], "userId": "u"}, None,
         "type must be one of alias, group, identify, page, screen, track"),
        ({"type": "identify"}, None, "message needs a userId or an anonymousId"),
        ({"type": "identify", "userId": "", "anonymousId": None}, None,
         "message needs a userId or an anonymousId"),
        ({"type": "identify", "userId": True}, None, "message needs a userId or an anonymousId"),
        ({"userId": "u"}, "track", "track needs event"),
        ({"userId": "u", "event": ""}, "track", "track needs event"),
        ({"userId": "u"}, "group", "group needs groupId"),
        ({"userId": "u", "groupId": "g"}, "alias", "alias needs previousId"),
        ({"anonymousId": "a", "previousId": "p"}, "alias", "alias needs userId"),
        ({"userId": "u", "context": "web"}, "identify", "context must be an object"),
        ({"userId": "u", "integrations": ["All"]}, "identify", "integrations must be an object"),
    ],
)
def test_an_invalid_message_is_refused_naming_the_problem(message, hint, reason):
    with pytest.raises(InvalidMessage) as caught:
        normalise(message, arrival(), hint)
    assert str(caught.value) == reason


@pytest.mark.parametrize(
    ("message", "hint"),
    [
        ({"userId": 42}, "identify"),
        ({"anonymousId": "a"}, "page"),
        ({"anonymousId": "a"}, "screen"),
        ({"userId": "u", "groupId": 7}, "group"),
        ({"userId": "u", "previousId": "a"}, "alias"),
        ({"type": "track", "anonymousId": "a", "event": "E"}, None),
    ],
)
def test_a_message_with_the_fields_its_type_needs_is_accepted(message, hint):
    event = normalise(message, arrival(), hint)
    assert event.type == (hint or message["type"]) == event.body["type"]


# --- batch-level context and integrations -----------------------------------------------------------


MERGE_CASES: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    # (id, message fields, arrival overrides, expected context, expected integrations)
    ("batch context and integrations fill a message without them",
     {}, {"context": {"locale": "en-GB"}, "integrations": {"All": False, "Amplitude": True}},
     {"locale": "en-GB", "ip": "192.0.2.10"}, {"All": False, "Amplitude": True}),
    ("the message's own keys win, the batch's others are added",
     {"context": {"locale": "fr-FR", "timezone": "Europe/Paris"}, "integrations": {"Amplitude": False}},
     {"context": {"locale": "en-GB", "app": {"name": "shop"}},
      "integrations": {"All": True, "Amplitude": True}},
     {"locale": "fr-FR", "timezone": "Europe/Paris", "app": {"name": "shop"}, "ip": "192.0.2.10"},
     {"All": True, "Amplitude": False}),
    ("no batch level: the message's own are kept",
     {"context": {"page": {"path": "/"}}, "integrations": {"All": True}}, {},
     {"page": {"path": "/"}, "ip": "192.0.2.10"}, {"All": True}),
]


@pytest.mark.parametrize(("fields", "overrides", "context", "integrations"), [c[1:] for c in MERGE_CASES],
                         ids=[c[0] for c in MERGE_CASES])
def test_batch_level_context_and_integrations_merge_into_each_message(fields, overrides, context,
                                                                      integrations):
    event = normalise(track(**fields), arrival(**overrides))
    assert event.body["context"] == context
    assert event.body["integrations"] == integrations


def test_the_merge_gives_each_message_its_own_context():
    shared = {"context": {"locale": "en"}}
    first = normalise(track(), arrival(peer_ip="198.51.100.1", **shared))
    second = normalise(track(context={"ip": "203.0.113.2"}), arrival(peer_ip="198.51.100.1", **shared))
    assert first.body["context"] == {"locale": "en", "ip": "198.51.100.1"}
    assert second.body["context"] == {"locale": "en", "ip": "203.0.113.2"}
    assert shared["context"] == {"locale": "en"}


def test_no_integrations_key_is_added_when_there_are_none():
    event = normalise(track(), arrival())
    assert "integrations" not in event.body


async def test_batch_level_library_context_and_integrations_reach_every_stored_message(relay):
    status, body, _ = await relay.post("/v1/batch", {
        "batch": [track(messageId="a"), track(messageId="b", context={"library": {"name": "mine"}},
                                                integrations={"Mixpanel": False})],
        "context": {"library": {"name": "analytics-go", "version": "3.3.0"}, "locale": "de"},
        "integrations": {"All": True},
        "messageId": "batch-1",
    })
    assert (status, body["accepted"]) == (200, 2)
    first, second = relay.events()
    assert first["context"] == {"library": {"name": "analytics-go", "version": "3.3.0"}, "locale": "de"}
    assert first["integrations"] == {"All": True}
    assert second["context"] == {"library": {"name": "mine"}, "locale": "de", "ip": "127.0.0.1"}
    assert second["integrations"] == {"All": True, "Mixpanel": False}


# --- context.ip ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("context", "peer", "expected"),
    [
        (None, "192.0.2.10", "192.0.2.10"),
        ({"ip": "203.0.113.7"}, "192.0.2.10", "203.0.113.7"),
        ({"ip": None}, "192.0.2.10", "192.0.2.10"),
        (BROWSER_LIB, "192.0.2.10", "192.0.2.10"),
        (PYTHON_LIB, "192.0.2.10", None),
        ({"library": {"name": "Analytics-Ruby"}}, "192.0.2.10", None),
        ({**PYTHON_LIB, "ip": "203.0.113.7"}, "192.0.2.10", "203.0.113.7"),
        (None, None, None),
    ],
    ids=["from-peer", "message-sets-it", "null-is-filled", "browser-library", "server-library",
         "server-library-any-case", "server-library-sets-it", "no-peer"],
)
def test_context_ip_is_the_peer_for_client_events_unless_the_message_sets_it(context, peer, expected):
    message = track() if context is None else track(context=dict(context))
    event = normalise(message, arrival(peer_ip=peer))
    assert event.body.get("context", {}).get("ip") == expected


async def test_context_ip_is_the_peer_address_over_http(relay):
    status, _, _ = await relay.post("/v1/t", track(messageId="a"),
                                    headers={"X-Forwarded-For": "203.0.113.50"})
    assert status == 200
    status, _, _ = await relay.post("/v1/t", track(messageId="b", context={"ip": "198.51.100.4"}))
    assert status == 200
    assert [e["context"]["ip"] for e in relay.events()] == ["127.0.0.1", "198.51.100.4"]


async def test_context_ip_comes_from_x_forwarded_for_when_the_peer_is_a_trusted_proxy(start_relay):
    relay = await start_relay(server={"trusted_proxies": ["127.0.0.1/32", "10.0.0.0/8"]})
    cases = [
        ("203.0.113.50", "203.0.113.50"),
        ("203.0.113.50, 10.0.0.3", "203.0.113.50"),
        ("6.6.6.6, 203.0.113.51, 10.0.0.3", "203.0.113.51"),
        (None, "127.0.0.1"),
    ]
    for i, (forwarded, _) in enumerate(cases):
        headers = {"X-Forwarded-For": forwarded} if forwarded else {}
        status, _, _ = await relay.post("/v1/t", track(messageId=f"m{i}"), headers=headers)
        assert status == 200
    assert [e["context"]["ip"] for e in relay.events()] == [expected for _, expected in cases]


async def test_server_library_events_over_http_get_no_context_ip(relay):
    status, _, _ = await relay.post("/v1/batch", {"batch": [track(context=PYTHON_LIB)]})
    assert status == 200
    [event] = relay.events()
    assert "ip" not in event["context"]


# --- the write key and the stored form --------------------------------------------------------------


def test_the_write_key_is_kept_beside_the_event_not_in_its_body():
    event = normalise(track(writeKey="from-body"), arrival(write_key="resolved"))
    assert event.write_key == "resolved"
    assert "writeKey" not in event.body


async def test_the_stored_event_is_compact_json_with_every_relay_field(relay):
    status, _, _ = await relay.post("/v1/track", track(properties={"a": [1, 2]}),
                                    headers={"Authorization": "Basic " + base64.b64encode(b"k:").decode()})
    assert status == 200
    [(body, write_key, message_id, kind)] = relay.rows("SELECT body, write_key, message_id, type FROM events")
    text = body.decode() if isinstance(body, bytes) else body
    assert ", " not in text and ": " not in text
    assert (write_key, kind) == ("k", "track")
    [event] = relay.events()
    assert event["messageId"] == message_id
    for key in ("type", "userId", "event", "messageId", "receivedAt", "timestamp", "context", "properties"):
        assert key in event


# --- the short way to the canonical form must agree with formatting the parsed time -----------

SPELLINGS = [
    lambda d: d.isoformat(timespec="microseconds"),  # ...00.123456+00:00 (the server SDKs)
    lambda d: d.isoformat(timespec="milliseconds"),  # ...00.123+00:00
    lambda d: d.isoformat(timespec="milliseconds").replace("+00:00", "Z"),  # analytics.js
    lambda d: d.isoformat(timespec="microseconds").replace("+00:00", "Z"),
    lambda d: d.isoformat(timespec="seconds"),  # no fraction
    lambda d: d.isoformat(sep=" ", timespec="microseconds"),  # a space, not a T
    lambda d: d.astimezone(timezone(timedelta(hours=2))).isoformat(timespec="microseconds"),
    lambda d: d.astimezone(timezone(timedelta(hours=-5, minutes=-30))).isoformat(),
    lambda d: d.isoformat(timespec="microseconds").replace("+00:00", "-00:00"),
    lambda d: d.replace(tzinfo=None).isoformat(timespec="microseconds"),  # naive: taken as UTC
]


@settings(max_examples=300, deadline=None)
@given(moment=st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(9998, 12, 31),
                           timezones=st.just(UTC)),
       spelling=st.sampled_from(range(len(SPELLINGS))))
def test_canonical_time_matches_formatting_the_parsed_time(moment: datetime, spelling: int) -> None:
    given_text = SPELLINGS[spelling](moment)
    parsed = timestamps.parse(given_text)
    assert timestamps.canonical(given_text, parsed) == timestamps.iso(parsed)
    assert timestamps.canonical(given_text, parsed).endswith("Z")


@pytest.mark.parametrize(("given_text", "expected"), [
    ("2024-05-01T12:00:00.123456+00:00", "2024-05-01T12:00:00.123Z"),
    ("2024-05-01T12:00:00.1239Z", "2024-05-01T12:00:00.123Z"),  # cut, not rounded
    ("2024-05-01T12:00:00.123Z", "2024-05-01T12:00:00.123Z"),
    ("2024-05-01T14:00:00.123456+02:00", "2024-05-01T12:00:00.123Z"),
    ("2024-05-01T12:00:00.5+00:00", "2024-05-01T12:00:00.500Z"),
    ("2024-05-01 12:00:00.123456+00:00", "2024-05-01T12:00:00.123Z"),
])
def test_canonical_time_table(given_text: str, expected: str) -> None:
    assert timestamps.canonical(given_text, timestamps.parse(given_text)) == expected


def test_a_null_context_is_filled_like_a_missing_one() -> None:
    event = normalise(track(context=None), arrival())
    assert event.body["context"] == {"ip": "192.0.2.10"}
