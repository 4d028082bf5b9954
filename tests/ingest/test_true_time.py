"""True time: an event that waited in the queue arrives with its own time.

The client's clock is 3 hours behind; each event happened 10 s (on the client's clock)
before the client sent it. The relay corrects that at ingest (timestamp = receivedAt -
(sentAt - originalTimestamp)). Then the upstream is unreachable for at least 3 s, so the
event waits in the queue. When it finally goes out, the fake upstream applies Segment's
own correction with *its* receivedAt and the request's sentAt; the result must equal the
time the relay computed at ingest, within 1.5 s (both clocks are this machine's; the
error is the request's transit). A relay that forwarded the client's sentAt would be off
by the queue wait (>= 3 s); one that kept the client's originalTimestamp, by 3 hours.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from relay import timestamps
from relay.ingest.normalise import normalise
from tests.support.forwarding import dest, wait_until
from tests.support.upstream import FakeUpstream

pytest_plugins = ["tests.support.forwarding_fixtures"]
pytestmark = pytest.mark.usefixtures("leak_check")

SKEW = timedelta(hours=-3)
BEFORE_SEND = timedelta(seconds=10)
QUEUE_WAIT = 3.0
TOLERANCE = 1.5


def iso(moment: datetime) -> str:
    return timestamps.iso(moment)


def upstream_time(event: dict[str, Any], request: Any) -> datetime:
    """What a Segment-compatible collector computes for the event."""
    sent_at = timestamps.parse(request.sent_at)
    original = timestamps.parse(event["originalTimestamp"])
    return request.received_at - (sent_at - original)


@pytest.mark.parametrize("outage", ["refused", "503"])
async def test_an_event_keeps_its_true_time_after_waiting_in_the_queue(start_relay, upstreams, outage):
    until = {"t": float("inf")}

    def answer(batch: list[dict[str, Any]]) -> int:
        return 503 if datetime.now(UTC).timestamp() < until["t"] else 200

    upstream: FakeUpstream = await upstreams(default=answer)
    port = upstream.port
    if outage == "refused":
        await upstream.stop()
    relay = await start_relay(destinations=[dest("seg", upstream.url, max_events=10)])

    client_now = datetime.now(UTC) + SKEW
    happened = iso(client_now - BEFORE_SEND)
    # analytics.js style: timestamp and sentAt on the message
    status, _, _ = await relay.post("/v1/track", {
        "userId": "u", "event": "Single", "messageId": "single", "writeKey": "wk",
        "timestamp": happened, "sentAt": iso(client_now)})
    assert status == 200
    # a batch with its sentAt at the top; a mobile-style originalTimestamp; no time at all
    batch = [
        {"type": "track", "userId": "u", "event": "Batched", "messageId": "batched", "timestamp": happened},
        {"type": "screen", "userId": "u", "name": "Home", "messageId": "mobile",
         "originalTimestamp": happened},
        {"type": "identify", "userId": "u", "messageId": "untimed"},
    ]
    status, answer_body, _ = await relay.post("/v1/batch", {"writeKey": "wk", "sentAt": iso(client_now),
                                                            "batch": batch})
    assert status == 200 and answer_body["accepted"] == 3
    stored = {e["messageId"]: e for e in relay.events()}
    assert set(stored) == {"single", "batched", "mobile", "untimed"}
    for mid, event in stored.items():
        received = timestamps.parse(event["receivedAt"])
        expected = received if mid == "untimed" else received - BEFORE_SEND
        assert abs((timestamps.parse(event["timestamp"]) - expected).total_seconds()) < 0.002, mid

    # the upstream comes back only after the events have waited QUEUE_WAIT seconds
    if outage == "refused":
        await wait_until(lambda: relay.relay.forwarders[0].state == "retrying", 5, "retrying")
        await asyncio.sleep(QUEUE_WAIT)
        until["t"] = 0.0
        await upstream.start(port=port)
    else:
        until["t"] = datetime.now(UTC).timestamp() + QUEUE_WAIT
    await upstream.wait_for(4, timeout=15)

    delivered = [(e, r) for r in upstream.requests if r.status == 200 for e in r.batch]
    assert sorted(e["messageId"] for e, _ in delivered) == sorted(stored)
    for event, request in delivered:
        mine = stored[event["messageId"]]
        relay_time = timestamps.parse(mine["timestamp"])
        waited = (request.received_at - timestamps.parse(mine["receivedAt"])).total_seconds()
        assert waited >= QUEUE_WAIT - 0.05  # the event really did wait in the queue
        error = abs((upstream_time(event, request) - relay_time).total_seconds())
        assert error <= TOLERANCE, (event["messageId"], error)
        assert "sentAt" not in event  # only the request's fresh sentAt counts
        assert event["timestamp"] == mine["timestamp"]
        assert event["receivedAt"] == mine["receivedAt"]
    if outage == "503":  # every resend carried a fresh sentAt
        sent = [r.sent_at for r in upstream.requests]
        assert len(sent) == len(set(sent)) > 1


def test_the_encoded_rewrite_equals_decoding_and_encoding_for_every_shape_ingest_writes():
    """The segment type rewrites the time fields on the stored bytes; whatever times a
    message came with, the result is what decoding, editing and encoding would give."""
    from datetime import UTC, datetime

    import msgspec

    from relay.sinks.segment import retime
    from relay.types import Arrival

    shapes = [{}, {"timestamp": "2024-01-01T00:00:00Z"}, {"sentAt": "2024-01-01T00:00:05Z"},
              {"timestamp": "2024-01-01T00:00:00.000Z", "sentAt": "2024-01-01T00:00:05.000Z"},
              {"originalTimestamp": "2024-01-01T00:00:00Z", "timestamp": "2024-01-01T00:00:01Z"},
              {"timestamp": 1717243200000, "context": {"library": {"name": "analytics-python"}}}]
    tricky = {"properties": {"note": '","receivedAt":"x","timestamp":"y"}', "receivedAt": "nested"}}
    for batch_sent_at in (None, "2024-01-01T00:00:09Z"):
        for shape in shapes:
            message = {"type": "track", "userId": "u", "event": "E", **tricky, **shape}
            body = normalise(message, Arrival("k", datetime.now(UTC), None, batch_sent_at)).encode()
            expected = msgspec.json.decode(body)
            expected.pop("sentAt", None)
            expected["originalTimestamp"] = expected["timestamp"]
            fast = retime(body)
            assert fast is not None, body
            assert msgspec.json.decode(fast) == expected
    assert retime(b'{"a":{"receivedAt":"x","timestamp":"y"}}') is None  # nested, not ours
    assert retime(b'{"receivedAt":"x","timestamp":"y","later":1}') is None  # not the tail
