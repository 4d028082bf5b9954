"""The typed path makes what the dict path makes: the same events, field for field, or it
hands the request to the dict path (which then refuses, dead-letters or accepts as before).

Requests are generated across what SDKs and hand-written clients send: every type, ids
missing, empty, numeric or of odd types, messageIds absent, empty or too long, times in
many forms (and invalid ones), sentAt per message and per batch, context with and without
a library or ip, server-side libraries, batch-level context and integrations, writeKey in
the body, nested and unicode properties, unknown fields, compact and spaced JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from relay.ingest import auth
from relay.ingest.routes import SINGLE_ROUTES
from tests.ingest.paths import assert_same_events, dict_path, made_ids, typed_path

TYPES = ["identify", "track", "page", "screen", "group", "alias"]
ABSENT: Any = object()  # a field left out
PEER = "192.0.2.10"

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=10)
NAME = st.one_of(st.sampled_from(["a", "plan", "ip", "library", "name", "é", "ключ", "😀", ""]), TEXT)
SCALAR = st.one_of(
    st.none(), st.booleans(), TEXT,
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -0.0, 1e15, 1.5e-7, 1e300, 123456789012345678901234567890, 42.50]),
)
JSON = st.recursive(
    SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(NAME, inner, max_size=3)),
    max_leaves=8,
)
OBJECT = st.dictionaries(NAME, JSON, max_size=4)
# What SDKs put in properties: no number written with a 3-digit exponent (those the typed
# path leaves to the dict path, which decides whether they are in range)
PLAIN_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), TEXT, st.integers(-(2**70), 2**70),
              st.floats(-1e15, 1e15, allow_nan=False)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(NAME, inner, max_size=3)),
    max_leaves=8,
)
PLAIN_OBJECT = st.dictionaries(NAME, PLAIN_JSON, max_size=4)
ID = st.one_of(
    st.text(min_size=1, max_size=12), st.sampled_from(["u1", "user-1000", "ünïcode"]),
    st.integers(-(2**40), 2**40), st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from([ABSENT, None, "", True, False, {"id": 1}, ["u"]]),
)
MESSAGE_ID = st.one_of(
    st.uuids().map(str), st.text(min_size=1, max_size=8),
    st.sampled_from([ABSENT, None, "", "m" * 100, "m" * 101, 7, ["m"]]),
)


def _iso_forms(moment: datetime) -> list[str]:
    utc = moment.astimezone(UTC)
    return [
        utc.isoformat(timespec="milliseconds").replace("+00:00", "Z"),  # analytics.js
        utc.isoformat(timespec="milliseconds"),  # analytics-python
        utc.isoformat(timespec="microseconds"),  # the bench body
        utc.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        moment.astimezone(timezone(timedelta(hours=2))).isoformat(),
        moment.astimezone(timezone(timedelta(hours=-5, minutes=-30))).isoformat(timespec="milliseconds"),
        utc.replace(tzinfo=None).isoformat(timespec="seconds"),  # naive
        utc.strftime("%Y-%m-%d"),
        utc.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z",  # a space for the T
        utc.strftime("%G-W%V-%uT%H:%M:%S.%f")[:-3] + "Z",  # a week date
        utc.isoformat(timespec="milliseconds")[:21] + "Z",  # one fraction digit
        utc.strftime("%Y-%m-%dT%H:%M:%S.%f") + "9Z",  # seven
    ]


MOMENT = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))
VALID_TIME = st.one_of(
    st.builds(lambda moment, i: _iso_forms(moment)[i], MOMENT, st.integers(0, 11)),
    st.integers(0, 4_000_000_000_000),
)
TIME = st.one_of(
    VALID_TIME, st.floats(0, 4e12, allow_nan=False),
    st.sampled_from([
        ABSENT, None, "", "yesterday", "2024-13-01T00:00:00Z", True, {"at": 1}, 10**20, -1,
        "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59.999-01:00", "0001-01-01T00:00:00.000Z",
        "9999-12-31T23:59:59.999Z",
    ]),
)
SERVER_NAMES = ["analytics-python", "Analytics-Node", "@segment/analytics-node", "analytics-go",
                "rudder-sdk-java", "ANALYTICS-RUBY"]
CLIENT_NAMES = ["analytics.js", "analytics-ios", "analytics-kotlin", "rudder-sdk-js"]
LIBRARY = st.one_of(
    st.builds(lambda name, version: {"name": name, "version": version},
              st.sampled_from(SERVER_NAMES + CLIENT_NAMES), st.sampled_from(["1.0.0", 2])),
    st.sampled_from([ABSENT, None, "analytics-python", {"name": 5}, {"version": "1"}, {}]),
)


@st.composite
def context(draw: st.DrawFn, typical: bool = False) -> Any:
    shape = draw(st.sampled_from(["object"] * 8 + ["absent", "null", "empty"] + ([] if typical else ["odd"])))
    if shape != "object":
        odd = draw(st.sampled_from(["ctx", [1], 5]))
        return {"absent": ABSENT, "null": None, "empty": {}, "odd": odd}[shape]
    found: dict[str, Any] = draw(PLAIN_OBJECT if typical else OBJECT)
    library = draw(LIBRARY)
    if library is not ABSENT:
        found["library"] = library
    ip = draw(st.sampled_from([ABSENT, ABSENT, None, "203.0.113.9", 5]))
    if ip is not ABSENT:
        found["ip"] = ip
    if draw(st.booleans()):
        found["userAgent"] = draw(st.sampled_from([
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) Mobile/15E148 Safari/604.1",
        ]))
        found["page"] = {"path": "/", "url": "https://example.com/?q=[1]", "title": "Ünïcode ✓"}
    return found


INTEGRATIONS = st.one_of(st.sampled_from([ABSENT, ABSENT, None, {}, {"All": True, "Mixpanel": False}, "x"]),
                         st.dictionaries(NAME, st.booleans(), max_size=2))


@st.composite
def message(draw: st.DrawFn, typical: bool = False, kind: str | None = None) -> Any:
    """A message (of ``kind`` when given); with ``typical``, one any SDK could send (valid,
    known fields only)."""
    if not typical and draw(st.integers(0, 40)) == 0:
        return draw(st.sampled_from(["not a message", 5, None, ["track"]]))
    if kind is None:
        kind = draw(st.sampled_from(TYPES)) if typical else draw(st.one_of(
        st.sampled_from(TYPES), st.sampled_from(TYPES), st.sampled_from([ABSENT, "Track", "bogus", 5])))
    fields: dict[str, Any] = {"type": kind}
    ids = st.text(min_size=1, max_size=12) if typical else ID
    fields["userId"] = draw(ids)
    fields["anonymousId"] = draw(st.one_of(ids, st.just(ABSENT)) if typical else ID)
    fields["messageId"] = draw(st.one_of(st.uuids().map(str), st.just(ABSENT)) if typical else MESSAGE_ID)
    if kind == "track" or draw(st.integers(0, 5)) == 0:
        names = st.sampled_from(["Order Completed", "Signed Up", "Ünïcode"])
        fields["event"] = draw(names if typical else ID)
    if kind == "group" or draw(st.integers(0, 8)) == 0:
        fields["groupId"] = draw(st.text(min_size=1, max_size=5) if typical else ID)
    if kind == "alias" or draw(st.integers(0, 8)) == 0:
        fields["previousId"] = draw(st.text(min_size=1, max_size=5) if typical else ID)
    if typical and kind == "alias" and fields["userId"] is ABSENT:
        fields["userId"] = "u"
    if kind in ("page", "screen") or draw(st.integers(0, 8)) == 0:
        fields["name"] = draw(st.one_of(TEXT, PLAIN_JSON if typical else JSON))
    if draw(st.booleans()):
        fields["properties" if kind != "identify" else "traits"] = draw(PLAIN_OBJECT if typical else OBJECT)
    fields["context"] = draw(context(typical))
    fields["integrations"] = draw(INTEGRATIONS.filter(lambda value: not typical or value != "x"))
    for name in ("timestamp", "originalTimestamp", "sentAt", "receivedAt"):
        if draw(st.integers(0, 2)) or name == "timestamp":
            fields[name] = draw(TIME)
    if typical:
        for name in ("timestamp", "originalTimestamp", "sentAt", "receivedAt"):
            fields[name] = draw(st.one_of(st.just(ABSENT), VALID_TIME))
    if draw(st.integers(0, 6)) == 0:
        fields["writeKey"] = draw(st.sampled_from(["from-message", None, 5]))
    if draw(st.integers(0, 6)) == 0:
        fields["_metadata"] = {"bundled": ["Segment.io"], "unbundled": []}
    if draw(st.integers(0, 6)) == 0:
        fields[draw(st.sampled_from(["version", "channel", "options", "category"]))] = draw(
            PLAIN_JSON if typical else JSON)
    if not typical and draw(st.integers(0, 10)) == 0:
        fields[draw(st.sampled_from(["unknownField", "session_id", "extra"]))] = draw(JSON)
    return {name: value for name, value in fields.items() if value is not ABSENT}


@st.composite
def body(draw: st.DrawFn, typical: bool = False) -> tuple[dict[str, Any], str]:
    if draw(st.booleans()):
        route = draw(st.sampled_from(sorted(set(SINGLE_ROUTES.values()))))
        single = draw(message(typical=True, kind=route)) if typical else draw(message())
        if not isinstance(single, dict):
            single = {"value": single}
        return single, route
    found: dict[str, Any] = {"batch": draw(st.lists(message(typical=typical), min_size=1, max_size=6))}
    if draw(st.booleans()):
        found["sentAt"] = draw(TIME if not typical else MOMENT.map(lambda m: _iso_forms(m)[0]))
    if draw(st.integers(0, 2)) == 0:
        found["writeKey"] = draw(st.sampled_from(["wk-body", "", None]))
    if draw(st.integers(0, 3)) == 0:
        found["context"] = draw(st.one_of(st.just({"library": {"name": "analytics-go", "version": "3"}}),
                                          context(typical)))
    if draw(st.integers(0, 4)) == 0:
        found["integrations"] = draw(INTEGRATIONS.filter(lambda value: not typical or value != "x"))
    if draw(st.integers(0, 6)) == 0:
        found["messageId"] = "batch-1"  # analytics-go
    if not typical and draw(st.integers(0, 10)) == 0:
        found["extra"] = draw(JSON)
    if not typical and draw(st.integers(0, 30)) == 0:
        found["batch"] = draw(st.sampled_from([[], {}, "x", None]))
    return {name: value for name, value in found.items() if value is not ABSENT}, "batch"


@st.composite
def request(draw: st.DrawFn, typical: bool = False) -> tuple[bytes, str, str | None, str | None]:
    """(body bytes, route, peer address, beacon's query write key)."""
    found, route = draw(body(typical=typical))
    style = draw(st.sampled_from(["compact", "compact", "python", "ascii", "pretty"]))
    text = json.dumps(found, separators=(",", ":") if style in ("compact", "ascii") else None,
                      ensure_ascii=style == "ascii", indent=2 if style == "pretty" else None)
    data = text.encode()
    if not typical:
        mutation = draw(st.sampled_from(["none"] * 12 + ["bom", "newline", "huge", "digits", "utf8", "deep"]))
        data = _mutate(data, mutation)
    peer = draw(st.sampled_from([PEER, PEER, None]))
    query = draw(st.sampled_from([None, None, "wk-query"])) if route == "batch" else None
    return data, route, peer, query


def _mutate(data: bytes, how: str) -> bytes:
    """Bytes json.dumps never writes: a BOM, a final line break, a number out of range,
    invalid UTF-8 or nesting past the limit, in the first string value after a key."""
    if how == "bom":
        return b"\xef\xbb\xbf" + data
    if how == "newline":
        return data + b"\n"
    at = data.find(b'":"')
    if at < 0:
        return data
    end = data.find(b'"', at + 3)
    if end < 0:
        return data
    value = {"huge": b"1e400", "digits": b"1" * 320 + b".5", "utf8": b'"\xff\xfe"',
             "deep": b"[" * 70 + b"]" * 70}.get(how)
    if value is None:
        return data
    return data[:at + 2] + value + data[end + 1:]


@given(request())
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_typed_path_makes_the_events_the_dict_path_makes_or_hands_the_request_on(case: Any) -> None:
    data, route, peer, query = case
    fast = typed_path(data, route, peer, query)
    slow = dict_path(data, route, peer, query)
    if fast.events is None:
        event(f"handed on ({'after' if fast.read else 'before'} decoding); the dict path "
              + ("refused it" if slow.refused else "dead-lettered" if slow.dead else "accepted it"))
        return
    event("typed")
    assert slow.refused is None, slow.refused
    assert not slow.dead, slow.dead
    assert auth.write_key(None, fast.write_key) == auth.write_key(None, slow.write_key)
    assert_same_events(fast.events, slow.events, made_ids(data, route))


@given(request(typical=True))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_typed_path_takes_every_request_an_sdk_sends(case: Any) -> None:
    data, route, peer, query = case
    fast = typed_path(data, route, peer, query)
    slow = dict_path(data, route, peer, query)
    assert slow.refused is None and not slow.dead, (slow.refused, slow.dead)
    assert fast.events is not None, data
    assert_same_events(fast.events, slow.events, made_ids(data, route))


MIXED_BATCH = {
    "sentAt": "2024-05-01T12:00:01.000000+00:00",
    "batch": [
        # a browser's event with no sentAt of its own: corrected by the batch's
        {"type": "track", "event": "A", "userId": "u1", "messageId": "m1",
         "timestamp": "2024-05-01T11:57:17.565Z", "context": {"library": {"name": "analytics.js"}}},
        # a server library's: its timestamp kept
        {"type": "track", "event": "B", "userId": "u2", "messageId": "m2",
         "timestamp": "2024-05-01T11:58:45.781000+00:00", "context": {"library": {"name": "analytics-go"}}},
        # a client's with its own sentAt
        {"type": "page", "anonymousId": "a3", "messageId": "m3", "name": "Home",
         "timestamp": "2024-05-01T11:59:00.000+02:00", "sentAt": "2024-05-01T12:00:00.500Z",
         "context": {"library": {"name": "analytics-ios"}}},
        # RudderStack's originalTimestamp, no timestamp: one by one
        {"type": "identify", "userId": "u4", "messageId": "m4",
         "originalTimestamp": "2024-05-01T11:59:30.000Z",
         "context": {"library": {"name": "RudderLabs JavaScript SDK"}, "ip": "203.0.113.9"}},
    ],
}
NAIVE_TIME = {  # a time without an offset, read as UTC: the clients' column one by one
    "sentAt": "2024-05-01T12:00:01.000Z",
    "batch": MIXED_BATCH["batch"] + [
        {"type": "track", "event": "C", "userId": "u5", "messageId": "m5",
         "timestamp": "2024-05-01T11:59:59.250",
         "context": {"library": {"name": "analytics-android"}}},
    ],
}


@pytest.mark.parametrize("found", [MIXED_BATCH, NAIVE_TIME])
def test_a_batch_of_several_shapes_is_taken_in_columns_and_makes_what_the_dict_path_makes(found: Any) -> None:
    data = json.dumps(found, separators=(",", ":")).encode()
    for peer in (PEER, None):
        fast = typed_path(data, "batch", peer, None)
        slow = dict_path(data, "batch", peer, None)
        assert fast.events is not None and slow.refused is None and not slow.dead
        assert_same_events(fast.events, slow.events, made_ids(data, "batch"))
