"""End to end: segment-analytics-python -> relay -> fake upstream; and the wire format of a
forwarded batch (write keys, gzip, headers)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from segment.analytics import Client

from relay import timestamps
from tests.support.forwarding import dest, post_events, wait_until
from tests.support.upstream import FakeUpstream

pytest_plugins = ["tests.support.forwarding_fixtures"]
pytestmark = pytest.mark.usefixtures("leak_check")


def send_with_the_sdk(host: str, gzip: bool) -> tuple[list[dict[str, Any]], list[Any]]:
    """Runs in a thread: the SDK is synchronous. Returns the messages it sent and its errors."""
    errors: list[Any] = []
    client = Client("sdk-key", host=host, gzip=gzip, upload_interval=0.05, upload_size=7, max_retries=2,
                    timeout=5, on_error=lambda error, batch: errors.append(error))
    sent = []
    when = datetime(2024, 5, 4, 3, 2, 1, 123000, tzinfo=UTC)
    for i in range(20):
        ok, msg = client.track(f"user-{i % 3}", "Order Completed",
                               {"total": i * 1.5, "currency": "€", "items": [{"sku": f"s{i}"}]})
        assert ok
        sent.append(msg)
    calls = [
        client.identify("user-1", {"email": "a@example.com", "plan": "pro"}),
        client.group("user-1", "group-9", {"name": "Acme"}),
        client.page("user-1", "Docs", "Install", {"path": "/install"}),
        client.screen("user-2", "App", "Home"),
        client.alias("anon-7", "user-2"),
        client.track("user-0", "Backfilled", timestamp=when),
    ]
    for ok, msg in calls:
        assert ok
        sent.append(msg)
    client.flush()
    client.shutdown()
    return sent, errors


@pytest.mark.parametrize("gzip", [False, True])
async def test_the_python_sdk_through_the_relay_reaches_the_upstream_intact(start_relay, upstreams, gzip):
    upstream: FakeUpstream = await upstreams()
    relay = await start_relay(server={"write_keys": ["sdk-key"]},
                              destinations=[dest("seg", upstream.url, max_events=10)])
    sent, errors = await asyncio.to_thread(send_with_the_sdk, relay.url, gzip)
    assert errors == []
    await upstream.wait_for(len(sent), timeout=15)
    await wait_until(lambda: relay.rows("SELECT count(*) FROM events") == [(0,)], 10, "an empty queue")

    assert upstream.delivered_ids() == [m["messageId"] for m in sent]  # kept, in order, once each
    assert all(r.auth_user == "sdk-key" and r.write_key == "sdk-key" for r in upstream.requests)
    assert all(r.headers.get("User-Agent", "").startswith("relay/") for r in upstream.requests)
    for msg, got in zip(sent, upstream.delivered, strict=True):
        for field in ("type", "userId", "anonymousId", "event", "properties", "traits", "groupId",
                      "previousId", "name", "category"):
            if msg.get(field) not in (None, {}):
                assert got[field] == msg[field], (field, msg, got)
        assert got["context"]["library"] == msg["context"]["library"]
        assert got["context"]["library"]["name"] == "analytics-python"
        # a server library's timestamp is kept as given, and it is also the originalTimestamp
        assert timestamps.parse(got["timestamp"]) == timestamps.parse(msg["timestamp"])
        assert got["originalTimestamp"] == got["timestamp"]
        assert "receivedAt" in got
    assert upstream.delivered[-1]["timestamp"] == "2024-05-04T03:02:01.123Z"


@pytest.mark.parametrize("gzip", [False, True])
async def test_a_batch_never_mixes_write_keys_and_each_goes_under_its_own(start_relay, upstreams, gzip):
    upstream: FakeUpstream = await upstreams()
    relay = await start_relay(destinations=[dest("seg", upstream.url, max_events=10, gzip=gzip)])
    plan = [("key-a", ["a0", "a1", "a2"]), ("key-b", ["b0", "b1"]), ("key-a", ["a3"])]
    for key, ids in plan:
        await post_events(relay, ids, write_key=key)
    await upstream.wait_for(6)
    # each request under one key, its own; keys interleaved in the queue are grouped by key
    # (how the posts fall into read windows depends on timing), order kept within each key
    sent = [(r.write_key, r.auth_user, [e["messageId"] for e in r.batch]) for r in upstream.requests]
    assert all(key == user and {i[0] for i in ids} == {key[-1]} for key, user, ids in sent), sent
    for key, expected in (("key-a", ["a0", "a1", "a2", "a3"]), ("key-b", ["b0", "b1"])):
        assert [i for k, _, ids in sent if k == key for i in ids] == expected
    assert len(sent) <= 3
    for r in upstream.requests:
        assert r.headers.get("Content-Encoding") == ("gzip" if gzip else None)
        assert r.headers["Content-Type"].startswith("application/json")
        assert r.sent_at is not None and timestamps.parse(r.sent_at).tzinfo is not None


async def test_a_configured_write_key_replaces_the_arrival_key(start_relay, upstreams):
    upstream: FakeUpstream = await upstreams()
    relay = await start_relay(destinations=[dest("seg", upstream.url, max_events=10, write_key="theirs")])
    await post_events(relay, ["x0", "x1"], write_key="mine-1")
    await post_events(relay, ["x2"], write_key="mine-2")
    await upstream.wait_for(3)
    assert upstream.delivered_ids() == ["x0", "x1", "x2"]
    assert {(r.write_key, r.auth_user) for r in upstream.requests} == {("theirs", "theirs")}


@pytest.mark.parametrize("key", ["k" * 8, "k" * 300])
async def test_every_request_body_fits_max_bytes(start_relay, upstreams, key):
    """max_bytes bounds the request body after encoding (before gzip), whatever the key's length."""
    upstream: FakeUpstream = await upstreams()
    relay = await start_relay(destinations=[dest("seg", upstream.url, max_events=100, max_bytes=1024)])
    ids = [f"mb{i:02d}" for i in range(24)]
    await post_events(relay, ids, write_key=key)
    await upstream.wait_for(24)
    assert upstream.delivered_ids() == ids
    assert len(upstream.requests) > 1
    assert all(r.size <= 1024 for r in upstream.requests), [r.size for r in upstream.requests]
