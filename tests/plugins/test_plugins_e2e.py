"""Every built-in plugin and the example plugin, end to end: events in over HTTP, then what the
fake upstreams (or a webhook destination's receiver) got and what the dead-letter table holds.

Absence is checked only once every destination's cursor has passed the last stored event
(``settle``): a copy that was skipped, dropped or refused has been decided by then.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.queue import batches
from tests.support.forwarding import FAST, dest, wait_requests, wait_until
from tests.support.upstream import FakeUpstream

pytest_plugins = ["tests.support.forwarding_fixtures"]
pytestmark = pytest.mark.usefixtures("leak_check")

ROOT = Path(__file__).resolve().parents[2]
Upstreams = Callable[..., Awaitable[FakeUpstream]]

CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/124.0.6367.91 Safari/537.36")
IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
          "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1")

ORDER = {
    "type": "object",
    "properties": {"properties": {
        "type": "object",
        "required": ["order_id"],
        "properties": {"order_id": {"type": "string"}, "total": {"type": "number", "minimum": 0}},
    }},
}
PLAN = {
    "common": {"type": "object", "anyOf": [{"required": ["userId"]}, {"required": ["anonymousId"]}]},
    "events": {"Order Completed": ORDER},
}

# A user's plugins in a file of their own, loaded by path: each fails in its own way.
USER_PLUGINS = '''
import asyncio
import json
import time

from relay.plugins import Delivery, Message


class Explode:
    name = "explode"
    type = "before"
    version = "1"

    async def track(self, message: Message) -> Message:
        if message.get("event") == "Explode":
            raise RuntimeError("kaboom")
        return message


class Flaky:
    name = "flaky"
    type = "enrichment"
    version = "1"

    async def event(self, message: Message) -> Message:
        message.setdefault("properties", {})["enriched"] = True
        if message.get("event") == "Flaky":
            raise ValueError("no enrichment today")
        return message


class Picky:
    name = "picky"
    type = "destination"
    version = "1"

    async def event(self, message: Message) -> Message:
        if message.get("properties", {}).get("explode"):
            raise RuntimeError("cannot send this")
        message.setdefault("properties", {})["picked"] = True
        return message


class Sleepy:
    """Awaits past its budget: cancelled at the deadline."""

    name = "sleepy"
    type = "before"
    version = "1"
    budget_ms = 100

    async def event(self, message: Message) -> Message:
        if message.get("event") == "Sleepy":
            await asyncio.sleep(5)
            message["woke"] = True
        return message


class Busy:
    """Never awaits, but returns after its budget: not used."""

    name = "busy"
    type = "enrichment"
    version = "1"
    budget_ms = 100

    async def event(self, message: Message) -> Message:
        if message.get("event") == "Busy":
            time.sleep(0.25)
        return message


class Recorder:
    name = "recorder"
    type = "after"
    version = "1"

    async def load(self, options: dict) -> None:
        self.path = options["path"]

    async def delivered(self, delivery: Delivery) -> None:
        line = {"destination": delivery.destination, "outcome": delivery.outcome,
                "reason": delivery.reason, "ids": [m["messageId"] for m in delivery.messages]}
        with open(self.path, "a") as out:
            out.write(json.dumps(line) + "\\n")
'''


# --- helpers -------------------------------------------------------------------------------------


def ev(message_id: str, event: str = "Tested", **fields: Any) -> dict[str, Any]:
    return {"type": "track", "userId": "u1", "event": event, "messageId": message_id,
            "properties": {"n": message_id}, **fields}


def plugin(use: str, instance: str = "", **options: Any) -> dict[str, Any]:
    return {"use": use, "name": instance, "options": options}


def webhook(name: str, receiver: FakeUpstream, **settings: Any) -> dict[str, Any]:
    """A non-``segment`` destination: the webhook type, batches posted to a FakeUpstream."""
    return {"name": name, "type": "webhook", "options": {"url": f"{receiver.url}/v1/batch"},
            **FAST, **settings}


def user_plugins(tmp_path: Path) -> Path:
    path = tmp_path / "my_plugins.py"
    path.write_text(USER_PLUGINS)
    return path


async def send(relay: Any, *messages: dict[str, Any]) -> dict[str, Any]:
    status, answer, _ = await relay.post("/v1/batch", {"batch": list(messages), "writeKey": "wk"})
    assert status == 200, answer
    assert isinstance(answer, dict), answer
    return answer


async def settle(relay: Any, timeout: float = 15.0) -> None:
    """Wait until every destination has finished (delivered, skipped, dropped or dead-lettered)
    every stored event it reads (a replayed dead letter is read by its own destination only)."""
    def done() -> bool:
        left = relay.rows("SELECT count(*) FROM events JOIN progress ON events.id > progress.cursor"
                          " AND (events.target IS NULL OR events.target = progress.destination)")
        return left == [(0,)] and bool(relay.rows("SELECT 1 FROM progress"))
    await wait_until(done, timeout, "every destination past the last event it reads")


def by_id(upstream: FakeUpstream) -> dict[str, dict[str, Any]]:
    delivered = upstream.delivered
    ids = [e["messageId"] for e in delivered]
    assert len(ids) == len(set(ids)), f"delivered twice: {ids}"
    return {e["messageId"]: e for e in delivered}


def dead(relay: Any) -> list[tuple[Any, str, Any, dict[str, Any]]]:
    return [(d, reason, mid, json.loads(body)) for d, reason, mid, body in relay.dead_letters()]


def queue_bytes(relay: Any) -> bytes:
    """Every byte of the queue file and its write-ahead log, and every queued row's bodies
    decompressed (the queue compresses what it stores, which would hide a clear value)."""
    base = Path(relay.db_path)
    files = b"".join(p.read_bytes() for p in (base, base.with_name(base.name + "-wal")) if p.exists())
    conn = sqlite3.connect(base)
    try:
        bodies = b"".join(batches.body_bytes(body, codec)
                          for codec, body in conn.execute("SELECT codec, body FROM batches"))
    finally:
        conn.close()
    return files + bodies


async def plugin_error_metrics(relay: Any) -> dict[str, float]:
    """``relay_plugin_errors_total`` per plugin, from the admin listener's /metrics."""
    timeout = aiohttp.ClientTimeout(total=10)
    async with relay.session.get(relay.admin_url + "/metrics", timeout=timeout) as resp:
        assert resp.status == 200
        text = await resp.text()
    found = re.findall(r'^relay_plugin_errors_total\{plugin="([^"]+)"\} (\S+)$', text, re.MULTILINE)
    return {name: float(value) for name, value in found}


async def two_upstreams(upstreams: Upstreams) -> tuple[FakeUpstream, FakeUpstream]:
    return await upstreams(), await upstreams()


# --- privacy ---------------------------------------------------------------------------------------

CLEAR = (b"alice@example.com", b"bob@example.com", b"carol@example.com", b"203.0.113.77", b"2001:db8:abcd:12")


async def test_privacy_before_storage_keeps_clear_values_out_of_the_queue_file_and_the_upstream(
        start_relay, upstreams):
    upstream: FakeUpstream = await upstreams(default=503)  # down at first: the events stay queued
    relay = await start_relay(
        destinations=[dest("seg", upstream.url)],
        plugins=[plugin("privacy", "strip-pii", remove=["context.traits.email", "properties.items.*.email"],
                        hash=["properties.email"], salt="pepper")],
    )
    v4 = ev("p4", properties={"email": "alice@example.com", "total": 10,
                              "items": [{"sku": "A", "email": "bob@example.com"}, {"sku": "B"}]},
            context={"ip": "203.0.113.77", "traits": {"email": "carol@example.com", "plan": "pro"}})
    v6 = ev("p6", context={"ip": "2001:db8:abcd:12:34::1"})
    answer = await send(relay, v4, v6)
    assert answer["accepted"] == 2
    hashed = hashlib.sha256(b"pepper" + b"alice@example.com").hexdigest()

    await wait_requests(upstream, 1)  # read from the queue and tried at least once
    stored = {e["messageId"]: e for e in relay.events()}
    assert set(stored) == {"p4", "p6"}
    assert stored["p4"]["properties"] == {"email": hashed, "total": 10, "items": [{"sku": "A"}, {"sku": "B"}]}
    assert stored["p4"]["context"]["traits"] == {"plan": "pro"}
    assert stored["p4"]["context"]["ip"] == "203.0.113.0"
    assert stored["p6"]["context"]["ip"] == "2001:db8:abcd::"
    raw = queue_bytes(relay)
    assert hashed.encode() in raw  # the events are in these bytes...
    for clear in CLEAR:
        assert clear not in raw  # ...and what privacy removed never was

    upstream.default = 200
    await upstream.wait_for(2)
    got = by_id(upstream)
    assert got["p4"]["properties"] == stored["p4"]["properties"]
    assert got["p4"]["context"]["traits"] == {"plan": "pro"}
    assert (got["p4"]["context"]["ip"], got["p6"]["context"]["ip"]) == ("203.0.113.0", "2001:db8:abcd::")
    every_request = json.dumps([r.batch for r in upstream.requests])
    assert len(upstream.requests) >= 2  # the refused attempts are checked too
    for clear in CLEAR:
        assert clear.decode() not in every_request
    assert relay.dead_letters() == []


async def test_privacy_listed_by_a_destination_changes_only_that_destinations_copies(start_relay, upstreams):
    a, b = await two_upstreams(upstreams)
    relay = await start_relay(
        destinations=[dest("up-a", a.url, plugins=["strip"]), dest("up-b", b.url)],
        plugins=[plugin("privacy", "strip", remove=["properties.email"], anonymise_ip=False)],
    )
    await send(relay, ev("m1", properties={"email": "x@example.com", "sku": "A"}))
    await a.wait_for(1)
    await b.wait_for(1)
    assert a.delivered[0]["properties"] == {"sku": "A"}
    assert b.delivered[0]["properties"] == {"email": "x@example.com", "sku": "A"}  # not run at ingest


async def test_privacy_also_scrubs_what_is_dead_lettered_at_ingest(start_relay, upstreams):
    """The dead-letter table is in the queue file too: a message that breaks the protocol, or
    that a plugin ahead of privacy refuses, is stored scrubbed (and hashed once only)."""
    upstream: FakeUpstream = await upstreams()
    relay = await start_relay(destinations=[dest("seg", upstream.url)], plugins=[
        plugin("privacy", "hash-first", hash=["userId"], salt="s1", anonymise_ip=False),
        plugin("tracking_plan", violations="block", **PLAN),
        plugin("privacy", "strip-later", remove=["properties.email", "context.traits"]),
    ])
    no_event = ev("no-event", properties={"email": "alice@example.com"}, context={"traits": {"n": "Carol"}})
    del no_event["event"]  # breaks the protocol: refused before any plugin runs
    blocked = ev("blocked", "Order Completed", properties={"total": -1, "email": "bob@example.com"})
    answer = await send(relay, no_event, blocked, ev("fine", properties={"email": "dan@example.com"}))
    assert (answer["accepted"], answer["rejected"]) == (1, 2)
    await upstream.wait_for(1)
    await settle(relay)
    letters = {mid: body for _, _, mid, body in dead(relay)}
    assert set(letters) == {"no-event", "blocked"}
    hashed = hashlib.sha256(b"s1u1").hexdigest()
    assert letters["no-event"]["properties"] == {}
    assert "traits" not in letters["no-event"]["context"]
    assert letters["no-event"]["userId"] == hashed
    assert letters["blocked"]["properties"] == {"total": -1}
    assert letters["blocked"]["userId"] == hashed  # hash-first ran on it once, not again
    assert upstream.delivered[0]["userId"] == hashed
    assert "email" not in upstream.delivered[0]["properties"]
    raw = queue_bytes(relay)
    for clear in (b"alice@example.com", b"bob@example.com", b"dan@example.com", b"Carol"):
        assert clear not in raw


async def test_privacy_scrubs_a_refused_pixel_and_withholds_one_it_cannot_read(start_relay):
    """A pixel of an unknown type is dead-lettered as the message its query spells, scrubbed;
    one whose data is not base64 JSON cannot be scrubbed, so its values are withheld."""
    relay = await start_relay(plugins=[plugin("privacy", "strip", remove=["traits.email"])])
    timeout = aiohttp.ClientTimeout(total=10)
    for query in ("/v1/pixel/sneeze?userId=u1&traits.email=carol%40example.com&writeKey=wk",
                  "/v1/pixel/track?data=not-base64-dan%40example.com&writeKey=wk"):
        async with relay.session.get(relay.url + query, timeout=timeout) as resp:
            assert resp.status == 200
            assert resp.headers["X-Relay-Error"]
    letters = {reason: body for _, reason, _, body in dead(relay)}
    unknown = letters["pixel type must be one of alias, group, identify, page, screen, track"]
    assert (unknown["type"], unknown["userId"], unknown["traits"]) == ("sneeze", "u1", {})
    unreadable = letters["pixel data is not base64-encoded JSON"]
    withheld = f"<withheld: {len('not-base64-dan@example.com')} characters>"
    assert unreadable == {"query": {"data": withheld, "writeKey": "wk"}}
    raw = queue_bytes(relay)
    for clear in (b"carol@example.com", b"dan@example.com"):
        assert clear not in raw


# --- tracking_plan ----------------------------------------------------------------------------------


async def test_tracking_plan_allow_forwards_everything_and_records_the_violations(start_relay, upstreams):
    upstream: FakeUpstream = await upstreams()
    relay = await start_relay(destinations=[dest("seg", upstream.url)],
                              plugins=[plugin("tracking_plan", **PLAN)])
    await send(relay,
               ev("ok", "Order Completed", properties={"order_id": "o1", "total": 5}),
               ev("neg", "Order Completed", properties={"order_id": "o2", "total": -1}),
               ev("unplanned", "Cart Viewed", properties={"x": 1}))
    await upstream.wait_for(3)
    got = by_id(upstream)
    assert "protocols" not in got["ok"].get("context", {})
    assert got["neg"]["properties"] == {"order_id": "o2", "total": -1}
    [violation] = got["neg"]["context"]["protocols"]["violations"]
    assert (violation["type"], violation["field"]) == ("Invalid Value", "properties.total")
    assert got["unplanned"]["properties"] == {"x": 1}
    assert got["unplanned"]["context"]["protocols"]["violations"][0]["type"] == "Unplanned Event"
    await settle(relay)
    assert relay.dead_letters() == []


async def test_tracking_plan_omit_removes_unplanned_and_invalid_properties_and_records_them(
        start_relay, upstreams):
    upstream: FakeUpstream = await upstreams()
    relay = await start_relay(destinations=[dest("seg", upstream.url)], plugins=[
        plugin("tracking_plan", "plan", unplanned_properties="omit", violations="omit", **PLAN)])
    await send(relay,
               ev("fixed", "Order Completed",
                  properties={"order_id": "o1", "total": "ten", "coupon": "SPRING-SALE"}),
               ev("missing", "Order Completed", properties={"total": 3}),
               ev("extra", "Order Completed", properties={"order_id": "o3", "gift": "wrap"}))
    await upstream.wait_for(3)
    got = by_id(upstream)
    assert got["extra"]["properties"] == {"order_id": "o3"}  # valid but for an unplanned property
    assert got["extra"]["context"]["protocols"] == {"omitted": ["properties.gift"]}
    assert got["fixed"]["properties"] == {"order_id": "o1"}
    protocols = got["fixed"]["context"]["protocols"]
    assert protocols["omitted"] == ["properties.coupon"]
    assert protocols["omitted_on_violation"] == ["properties.total"]
    assert [v["field"] for v in protocols["violations"]] == ["properties.total"]
    # a missing required property cannot be fixed by omitting: forwarded, the violation recorded
    assert got["missing"]["properties"] == {"total": 3}
    assert got["missing"]["context"]["protocols"]["violations"][0]["field"] == "properties.order_id"
    assert b"SPRING-SALE" not in queue_bytes(relay)  # omitted before storage
    await settle(relay)
    assert relay.dead_letters() == []


async def test_tracking_plan_block_dead_letters_with_the_violations_and_emits_violation_generated(
        start_relay, upstreams):
    upstream: FakeUpstream = await upstreams()
    relay = await start_relay(destinations=[dest("seg", upstream.url)], plugins=[
        plugin("tracking_plan", "plan", unplanned_events="block", violations="block", emit_violations=True,
               **PLAN)])
    answer = await send(relay,
                        ev("ok", "Order Completed", properties={"order_id": "o1", "total": 5}),
                        ev("neg", "Order Completed", properties={"order_id": "o2", "total": -1}),
                        ev("mystery", "Mystery Event"))
    assert (answer["accepted"], answer["rejected"]) == (3, 2)  # ok + two "Violation Generated"
    assert sorted((e["index"], e["messageId"]) for e in answer["errors"]) == [(1, "neg"), (2, "mystery")]
    await settle(relay)
    letters = {mid: (destination, reason, body) for destination, reason, mid, body in dead(relay)}
    assert set(letters) == {"neg", "mystery"}
    assert all(destination is None for destination, _, _ in letters.values())
    assert "violates the tracking plan" in letters["neg"][1]
    assert "Invalid Value `properties.total`" in letters["neg"][1]
    assert "Unplanned Event `event`" in letters["mystery"][1]
    assert letters["neg"][2]["properties"] == {"order_id": "o2", "total": -1}

    delivered = upstream.delivered
    assert [e["messageId"] for e in delivered if e["event"] != "Violation Generated"] == ["ok"]
    violations = sorted((e["properties"]["eventName"], e["properties"]["violationType"],
                         e["properties"]["violationField"]) for e in delivered
                        if e["event"] == "Violation Generated")
    assert violations == [("Mystery Event", "Unplanned Event", "event"),
                          ("Order Completed", "Invalid Value", "properties.total")]
    assert all(e["userId"] == "u1" and e["type"] == "track" for e in delivered)


async def test_rename_runs_before_the_tracking_plan_and_renames_events_properties_and_traits(
        start_relay, upstreams):
    upstream: FakeUpstream = await upstreams()
    relay = await start_relay(destinations=[dest("seg", upstream.url)], plugins=[
        plugin("rename", events={"Order Done": "Order Completed"}, properties={"orderId": "order_id"},
               traits={"e-mail": "email"}),
        plugin("tracking_plan", violations="block", unplanned_events="block", **PLAN),
    ])
    answer = await send(
        relay,
        ev("legacy", "Order Done", properties={"orderId": "o9", "total": 2}),
        {"type": "identify", "userId": "u1", "messageId": "who", "traits": {"e-mail": "a@example.com"},
         "context": {"traits": {"e-mail": "a@example.com", "name": "A"}}},
    )
    assert (answer["accepted"], answer["rejected"]) == (2, 0), answer
    await upstream.wait_for(2)
    got = by_id(upstream)
    assert got["legacy"]["event"] == "Order Completed"
    assert got["legacy"]["properties"] == {"order_id": "o9", "total": 2}
    assert got["who"]["traits"] == {"email": "a@example.com"}
    assert got["who"]["context"]["traits"] == {"email": "a@example.com", "name": "A"}
    assert relay.dead_letters() == []


# --- filter (a destination step) -------------------------------------------------------------------


async def test_filter_drop_applies_to_the_destination_that_lists_it_only(start_relay, upstreams):
    a, b = await two_upstreams(upstreams)
    relay = await start_relay(
        destinations=[dest("up-a", a.url, plugins=["no-tests"]), dest("up-b", b.url)],
        plugins=[plugin("filter", "no-tests", drop=True, **{"if": 'match(event, "Test *")'})],
    )
    await send(relay, ev("t1", "Test Checkout"), ev("r1", "Checkout"), ev("t2", "Test Login"))
    await b.wait_for(3)
    await settle(relay)
    assert a.delivered_ids() == ["r1"]
    assert b.delivered_ids() == ["t1", "r1", "t2"]
    assert relay.dead_letters() == []
    assert relay.relay.pipeline.metrics()["plugins"]["no-tests"]["dropped"] == 2


async def test_filter_sample_keyed_on_user_id_is_the_same_for_every_event_of_a_user(start_relay, upstreams):
    a, b = await two_upstreams(upstreams)
    relay = await start_relay(
        destinations=[dest("up-a", a.url, plugins=["half"]), dest("up-b", b.url)],
        plugins=[plugin("filter", "half", sample={"percent": 0.5, "path": "userId"},
                        **{"if": 'event = "Sampled"'})],
    )
    users = [f"user-{i:02d}" for i in range(32)]
    for wave in ("w1", "w2"):  # separate requests: the choice does not depend on the batch
        await send(relay, *(ev(f"{wave}-{u}", "Sampled", userId=u) for u in users),
                   ev(f"{wave}-other", "Other"))
    await b.wait_for(2 * len(users) + 2)
    await settle(relay)
    kept = {wave: {e["userId"] for e in a.delivered
                   if e["messageId"].startswith(wave) and e["event"] == "Sampled"} for wave in ("w1", "w2")}
    assert kept["w1"] == kept["w2"]  # deterministic per userId
    assert 0 < len(kept["w1"]) < len(users)  # it does sample (32 users: all or none is ~1e-9)
    assert {"w1-other", "w2-other"} <= set(a.delivered_ids())  # not matched: not sampled
    assert len(b.delivered) == 2 * len(users) + 2
    assert relay.dead_letters() == []


async def test_filter_drop_properties_removes_paths_for_that_destination_only(start_relay, upstreams):
    a, b = await two_upstreams(upstreams)
    relay = await start_relay(
        destinations=[dest("up-a", a.url, plugins=["no-email"]), dest("up-b", b.url)],
        plugins=[plugin("filter", "no-email", drop_properties=["properties.email", "context.ip"],
                        **{"if": 'type = "track"'})],
    )
    message = ev("d1", properties={"email": "x@example.com", "sku": "A"}, context={"ip": "198.51.100.4"})
    await send(relay, message)
    await a.wait_for(1)
    await b.wait_for(1)
    [seen_a], [seen_b] = a.delivered, b.delivered
    assert seen_a["properties"] == {"sku": "A"}
    assert "ip" not in seen_a["context"]
    assert seen_b["properties"] == {"email": "x@example.com", "sku": "A"}
    assert seen_b["context"]["ip"] == "198.51.100.4"


async def test_filter_allow_properties_keeps_only_the_named_keys(start_relay, upstreams):
    a, b = await two_upstreams(upstreams)
    relay = await start_relay(
        destinations=[dest("up-a", a.url, plugins=["only-sku-price"]), dest("up-b", b.url)],
        plugins=[plugin("filter", "only-sku-price", allow_properties=["properties.sku", "properties.price"])],
    )
    await send(relay, ev("k1", properties={"sku": "A", "price": 9.5, "email": "x@example.com", "note": "n"}))
    await a.wait_for(1)
    await b.wait_for(1)
    assert a.delivered[0]["properties"] == {"sku": "A", "price": 9.5}
    assert a.delivered[0]["event"] == "Tested"  # other fields are not touched
    assert b.delivered[0]["properties"] == {"sku": "A", "price": 9.5, "email": "x@example.com", "note": "n"}


# --- consent -----------------------------------------------------------------------------------------


def consented(message_id: str, preferences: dict[str, Any] | None) -> dict[str, Any]:
    context = {} if preferences is None else {"consent": {"categoryPreferences": preferences}}
    return ev(message_id, context=context)


CONSENT_CASES = [
    ("none", None),  # no consent stated: not restricted
    ("ads", {"advertising": True, "analytics": False}),
    ("analytics", {"analytics": True}),  # advertising absent: not granted
    ("empty", {}),  # an empty object: every category is false
    ("both", {"advertising": True, "analytics": True}),
    ("truthy", {"advertising": "yes", "analytics": 1}),  # only `true` is consent
]


async def test_consent_routes_each_destination_by_its_categories(start_relay, upstreams):
    ads, analytics, plain = await upstreams(), await upstreams(), await upstreams()
    relay = await start_relay(
        destinations=[dest("Ads", ads.url), dest("Analytics", analytics.url), dest("plain", plain.url)],
        plugins=[plugin("consent", destinations={"Ads": ["advertising"], "Analytics": ["analytics"]})],
    )
    await send(relay, *(consented(name, prefs) for name, prefs in CONSENT_CASES))
    await plain.wait_for(len(CONSENT_CASES))
    await settle(relay)
    assert ads.delivered_ids() == ["none", "ads", "both"]
    assert analytics.delivered_ids() == ["none", "analytics", "both"]
    assert plain.delivered_ids() == [name for name, _ in CONSENT_CASES]  # mapped to no category
    assert relay.dead_letters() == []  # skipped is not refused
    skipped = relay.relay.pipeline.metrics()["skipped"]
    assert (skipped["Ads"], skipped["Analytics"], skipped["plain"]) == ({"consent": 3}, {"consent": 3}, {})


async def test_consent_listed_by_one_destination_decides_for_that_destination_only(start_relay, upstreams):
    ads, other = await two_upstreams(upstreams)
    relay = await start_relay(
        destinations=[dest("Ads", ads.url, plugins=["ads-consent"]), dest("other", other.url)],
        plugins=[plugin("consent", "ads-consent", categories=["advertising"])],
    )
    await send(relay, *(consented(name, prefs) for name, prefs in CONSENT_CASES))
    await other.wait_for(len(CONSENT_CASES))
    await settle(relay)
    assert ads.delivered_ids() == ["none", "ads", "both"]
    assert other.delivered_ids() == [name for name, _ in CONSENT_CASES]


# --- integrations -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seg_step", [False, True], ids=["seg-plain", "seg-with-a-step"])
async def test_integrations_skip_destinations_but_a_segment_destination_forwards_regardless(
        start_relay, upstreams, seg_step):
    seg, hook_b, hook_c = await upstreams(), await upstreams(), await upstreams()
    # with a step of its own, the segment destination's copies go through the routing too
    relay = await start_relay(
        destinations=[dest("seg", seg.url, plugins=["never"] if seg_step else []),
                      webhook("up-b", hook_b), webhook("up-c", hook_c)],
        plugins=[plugin("filter", "never", drop=True, **{"if": 'event = "never sent"'})],
    )
    cases = [
        ("plain", None),
        ("b-off", {"up-b": False}),
        ("all-off-c-on", {"All": False, "up-c": True}),
        ("all-off", {"All": False}),
        ("all-off-b-settings", {"All": False, "up-b": {"apiKey": "k"}}),  # an object is not false
        ("other-case", {"UP-B": False}),  # names are case-sensitive
    ]
    await send(relay, *(ev(name, **({} if i is None else {"integrations": i})) for name, i in cases))
    await seg.wait_for(len(cases))
    await settle(relay)
    assert seg.delivered_ids() == [name for name, _ in cases]
    assert by_id(seg)["all-off"]["integrations"] == {"All": False}  # left for the upstream to read
    assert hook_b.delivered_ids() == ["plain", "all-off-b-settings", "other-case"]
    assert hook_c.delivered_ids() == ["plain", "b-off", "all-off-c-on", "other-case"]
    assert relay.dead_letters() == []
    skipped = relay.relay.pipeline.metrics()["skipped"]
    assert skipped == {"up-b": {"integrations": 3}, "up-c": {"integrations": 2}, "seg": {}}


# --- user_agent, and the example plugin loaded by path ------------------------------------------------


async def test_user_agent_is_parsed_into_structured_fields_at_the_upstream(start_relay, upstreams):
    upstream: FakeUpstream = await upstreams()
    relay = await start_relay(destinations=[dest("seg", upstream.url)], plugins=[plugin("user_agent")])
    await send(relay,
               ev("desktop", context={"userAgent": CHROME}),
               ev("phone", context={"userAgent": IPHONE, "os": {"name": "iOS", "version": "17.4.1"}}),
               ev("bare"))
    await upstream.wait_for(3)
    got = by_id(upstream)
    desktop = got["desktop"]["context"]
    assert desktop["browser"] == {"name": "Chrome", "version": "124.0.6367"}
    assert desktop["os"] == {"name": "Windows", "version": "10"}
    assert desktop["userAgent"] == CHROME
    phone = got["phone"]["context"]
    assert phone["browser"] == {"name": "Mobile Safari", "version": "17.4"}
    assert phone["device"] == {"manufacturer": "Apple", "model": "iPhone"}
    assert phone["os"] == {"name": "iOS", "version": "17.4.1"}  # what the SDK sent is kept
    assert not {"browser", "os", "device"} & set(got["bare"].get("context", {}))


async def test_the_example_plugin_loads_by_path_as_a_user_configures_it(start_relay, upstreams, monkeypatch):
    monkeypatch.chdir(ROOT)  # a relative `use` is taken from the directory the relay runs in
    upstream: FakeUpstream = await upstreams()
    relay = await start_relay(destinations=[dest("seg", upstream.url)], plugins=[
        plugin("plugins/add_app_version.py:AddAppVersion", "app-version", version="2.4.1",
               name="Storefront")])
    [loaded] = relay.relay.pipeline.plugins
    module = sys.modules[type(loaded.plugin).__module__]
    assert Path(module.__file__ or "") == ROOT / "plugins" / "add_app_version.py"
    await send(relay, ev("web"), ev("mobile", context={"app": {"name": "Shop iOS", "version": "9.1"}}))
    await upstream.wait_for(2)
    got = by_id(upstream)
    assert got["web"]["context"]["app"] == {"name": "Storefront", "version": "2.4.1"}
    assert got["mobile"]["context"]["app"] == {"name": "Shop iOS", "version": "9.1"}


# --- failure semantics ----------------------------------------------------------------------------------


async def test_a_before_plugin_that_raises_dead_letters_the_event_with_the_reason(start_relay, upstreams,
                                                                                  tmp_path):
    upstream: FakeUpstream = await upstreams()
    path = user_plugins(tmp_path)
    relay = await start_relay(destinations=[dest("seg", upstream.url)],
                              plugins=[plugin(f"{path}:Explode", "boom")])
    answer = await send(relay, ev("fine"), ev("bang", "Explode"))
    assert (answer["accepted"], answer["rejected"]) == (1, 1)
    [error] = answer["errors"]
    assert error["messageId"] == "bang" and "kaboom" in error["reason"]
    # a single-message route answers the same way
    status, single, _ = await relay.post("/v1/track", {**ev("bang2", "Explode"), "writeKey": "wk"})
    assert status == 200 and (single["accepted"], single["rejected"]) == (0, 1)
    await upstream.wait_for(1)
    await settle(relay)
    assert upstream.delivered_ids() == ["fine"]
    letters = dead(relay)
    assert [(d, mid) for d, _, mid, _ in letters] == [(None, "bang"), (None, "bang2")]
    assert all("plugin boom failed: RuntimeError: kaboom" in reason for _, reason, _, _ in letters)
    assert letters[0][3]["event"] == "Explode"
    assert (await plugin_error_metrics(relay))["boom"] == 2


async def test_an_enrichment_plugin_that_raises_is_counted_and_the_event_goes_on(start_relay, upstreams,
                                                                                 tmp_path):
    upstream: FakeUpstream = await upstreams()
    path = user_plugins(tmp_path)
    relay = await start_relay(destinations=[dest("seg", upstream.url)],
                              plugins=[plugin(f"{path}:Flaky", "flaky")])
    answer = await send(relay, ev("calm"), ev("flaky", "Flaky"))
    assert (answer["accepted"], answer["rejected"]) == (2, 0)
    assert "errors" not in answer
    await upstream.wait_for(2)
    got = by_id(upstream)
    assert got["flaky"]["event"] == "Flaky"
    assert got["flaky"]["properties"]["enriched"] is True  # as the plugin left it when it raised
    assert got["calm"]["properties"]["enriched"] is True
    await settle(relay)
    assert relay.dead_letters() == []
    assert (await plugin_error_metrics(relay))["flaky"] == 1


async def test_a_destination_step_that_raises_dead_letters_only_that_destinations_copy(start_relay, upstreams,
                                                                                       tmp_path):
    a, b = await two_upstreams(upstreams)
    path = user_plugins(tmp_path)
    relay = await start_relay(
        destinations=[dest("up-a", a.url, plugins=["picky"]), dest("up-b", b.url)],
        plugins=[plugin(f"{path}:Picky", "picky")],
    )
    await send(relay, ev("one"), ev("bad", properties={"explode": True}), ev("two"))
    await b.wait_for(3)
    await settle(relay)
    assert a.delivered_ids() == ["one", "two"]
    assert all(e["properties"]["picked"] is True for e in a.delivered)  # the step ran on up-a's copies
    assert b.delivered_ids() == ["one", "bad", "two"]
    assert not any("picked" in e["properties"] for e in b.delivered)  # ...and only on those
    [(destination, reason, message_id, body)] = dead(relay)
    assert (destination, message_id) == ("up-a", "bad")
    assert "plugin picky failed: RuntimeError: cannot send this" in reason
    assert body["properties"] == {"explode": True}
    assert relay.rows("SELECT destination, dead_lettered FROM progress ORDER BY destination") == [
        ("up-a", 1), ("up-b", 0)]


async def test_a_plugin_over_its_time_budget_counts_as_an_error(start_relay, upstreams, tmp_path):
    upstream: FakeUpstream = await upstreams()
    path = user_plugins(tmp_path)
    relay = await start_relay(destinations=[dest("seg", upstream.url)], plugins=[
        plugin(f"{path}:Sleepy", "sleepy"), plugin(f"{path}:Busy", "busy")])
    answer = await send(relay, ev("quick"), ev("sleepy", "Sleepy"), ev("busy", "Busy"))
    assert (answer["accepted"], answer["rejected"]) == (2, 1)
    await upstream.wait_for(2)
    await settle(relay)
    assert upstream.delivered_ids() == ["quick", "busy"]  # an enrichment failure lets the event go on
    [(destination, reason, message_id, body)] = dead(relay)
    assert (destination, message_id) == (None, "sleepy")  # a before failure does not
    assert "plugin sleepy failed: over its time budget of 100 ms" in reason
    assert "woke" not in body  # cancelled at its deadline, not let run to the end
    stats = relay.relay.pipeline.metrics()["plugins"]
    assert (stats["sleepy"]["errors"], stats["sleepy"]["timeouts"]) == (1, 1)
    assert (stats["busy"]["errors"], stats["busy"]["timeouts"]) == (1, 1)
    errors = await plugin_error_metrics(relay)
    assert (errors["sleepy"], errors["busy"]) == (1, 1)


async def test_an_after_plugin_sees_every_outcome_of_each_destinations_copy(start_relay, upstreams,
                                                                            tmp_path):
    def refuse_bad(batch: list[dict[str, Any]]) -> Any:
        return 400 if any(e["messageId"] == "bad" for e in batch) else 200

    seg: FakeUpstream = await upstreams(default=refuse_bad)
    other: FakeUpstream = await upstreams()
    path, log = user_plugins(tmp_path), tmp_path / "deliveries.ndjson"
    relay = await start_relay(
        destinations=[dest("seg", seg.url, max_events=10, flush_interval=0.2),
                      dest("other", other.url, plugins=["no-tests", "picky"])],
        plugins=[plugin(f"{path}:Recorder", "recorder", path=str(log)), plugin(f"{path}:Picky", "picky"),
                 plugin("filter", "no-tests", drop=True, **{"if": 'match(event, "Test *")'})],
    )
    await send(relay, ev("g1"), ev("bad"), ev("t1", "Test Run"), ev("boom", properties={"explode": True}))
    await settle(relay)

    def outcomes() -> dict[tuple[str, str], tuple[str, str | None]]:
        lines = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        return {(x["destination"], i): (x["outcome"], x["reason"]) for x in lines for i in x["ids"]}

    await wait_until(lambda: len(outcomes()) >= 8, 10, "eight outcomes")
    seen = outcomes()
    assert {key: outcome for key, (outcome, _) in seen.items()} == {
        ("seg", "g1"): "delivered", ("seg", "bad"): "dead_lettered", ("seg", "t1"): "delivered",
        ("seg", "boom"): "delivered",
        ("other", "g1"): "delivered", ("other", "bad"): "delivered", ("other", "t1"): "dropped",
        ("other", "boom"): "dead_lettered",
    }
    assert "400" in (seen["seg", "bad"][1] or "")  # the upstream refused it
    assert "plugin picky failed: RuntimeError: cannot send this" in (seen["other", "boom"][1] or "")
    assert seen["other", "t1"][1] == "dropped by no-tests"
    assert all(reason is None for outcome, reason in seen.values() if outcome == "delivered")
    assert sorted((d, mid) for d, _, mid, _ in dead(relay)) == [("other", "boom"), ("seg", "bad")]
    assert sorted(seg.delivered_ids()) == ["boom", "g1", "t1"]
    assert other.delivered_ids() == ["g1", "bad"]


# --- replaying what a destination step refused ----------------------------------------------------------


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


async def test_a_copy_refused_by_a_destination_step_is_replayed_after_the_config_is_fixed(
        start_relay, upstreams, tmp_path):
    a, b = await two_upstreams(upstreams)
    strict = plugin("tracking_plan", "strict-plan", violations="block", **PLAN)
    relay = await start_relay(plugins=[strict], destinations=[
        dest("up-a", a.url, plugins=["strict-plan"]), dest("up-b", b.url)])
    await send(relay, ev("good", "Order Completed", properties={"order_id": "o1"}),
               ev("loose", "Order Completed", properties={"total": 1}))
    await b.wait_for(2)
    await settle(relay)
    [(destination, reason, message_id, _)] = dead(relay)
    assert (destination, message_id) == ("up-a", "loose")
    assert "blocked by strict-plan" in reason and "properties.order_id" in reason
    assert a.delivered_ids() == ["good"]
    await relay.relay.stop()

    # the fix: up-a no longer validates against the plan; the same queue file
    fixed = await start_relay(destinations=[dest("up-a", a.url), dest("up-b", b.url)])
    config = tmp_path / "fixed.toml"
    config.write_text(f"[queue]\npath = {json.dumps(fixed.db_path)}\n" + "".join(
        f'[[destinations]]\nname = "{n}"\ntype = "segment"\nendpoint = "{u.url}"\n' for n, u in (("up-a", a),
                                                                                               ("up-b", b))))
    replay = cli(config, "dlq", "replay", "--destination", "up-a", "--json")
    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout) == {"queued": 1, "still_invalid": 0}
    await a.wait_for(2)
    await settle(fixed)
    assert a.delivered_ids() == ["good", "loose"]
    assert b.delivered_ids() == ["good", "loose"]  # the replay is for up-a only
    assert fixed.dead_letters() == []
