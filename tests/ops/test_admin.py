"""The admin listener, against a relay started in-process on loopback ports."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

import aiohttp
import prometheus_client
from prometheus_client.parser import text_string_to_metric_families

from relay import __version__ as relay_version
from relay.app import Relay
from relay.ops import cli
from tests.conftest import Running, make_config
from tests.support.upstream import FakeUpstream

TOKEN = "admin-token-0123456789"
WAIT = 20.0  # seconds any wait for the relay's progress may take
Samples = dict[tuple[str, frozenset[Any]], float]  # (name, labels) -> value


async def get(running: Running, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    async with running.session.get(running.admin_url + path, headers=headers,
                                   timeout=aiohttp.ClientTimeout(total=10)) as resp:
        text = await resp.text()
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        return resp.status, body, resp.headers


async def scrape(running: Running, headers: dict[str, str] | None = None) -> Samples:
    status, text, resp_headers = await get(running, "/metrics", headers)
    assert status == 200, text
    assert resp_headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def track(message_id: str, **extra: Any) -> dict[str, Any]:
    return {"userId": "u1", "event": "Clicked", "messageId": message_id, "writeKey": "wk", **extra}


async def test_health_answers_without_the_token_and_every_other_route_wants_it(start_relay):
    relay = await start_relay(admin={"token": TOKEN})
    assert (await get(relay, "/health"))[:2] == (200, {"status": "ok"})
    for path in ("/ready", "/metrics", "/status", "/no-such-route"):
        for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": "Bearer"}):
            status, body, resp_headers = await get(relay, path, headers)
            assert status == 401, (path, headers)
            assert body["code"] == "unauthorized"
            assert resp_headers["WWW-Authenticate"].startswith("Bearer")
    good = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/ready", "/metrics", "/status"):
        assert (await get(relay, path, good))[0] == 200, path
    status, body, _ = await get(relay, "/no-such-route", good)
    assert (status, body["code"]) == (404, "not_found")


async def test_without_a_token_every_route_is_open(start_relay):
    relay = await start_relay()
    for path in ("/health", "/ready", "/metrics", "/status"):
        assert (await get(relay, path))[0] == 200, path


async def test_a_disabled_admin_listener_binds_nothing(start_relay):
    relay = await start_relay(admin={"enabled": False})
    assert relay.relay.admin.port is None
    assert (await relay.post("/v1/track", track("m1")))[0] == 200


async def test_ready_once_the_listener_is_bound_and_the_queue_answers(start_relay):
    relay = await start_relay()
    assert (await get(relay, "/ready"))[:2] == (200, {"status": "ready"})


async def test_unready_with_a_reason_while_the_ingest_listener_is_not_bound(tmp_path):
    relay = Relay(make_config(tmp_path))
    await relay.queue.start()
    await relay.admin.start()
    try:
        async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{relay.admin.port}/ready", timeout=aiohttp.ClientTimeout(total=10)
        ) as resp:
            assert resp.status == 503
            assert (await resp.json())["reason"] == "not_listening"
    finally:
        await relay.stop()
    assert relay.admin.port is None


async def test_unready_with_a_reason_when_the_queue_is_full(start_relay):
    relay = await start_relay(queue={"max_bytes": 1 << 20, "when_full": "reject"})
    padding = secrets.token_hex(15_000)  # random: the queue cannot compress it
    for i in range(200):  # 1 MiB of 30 KB events: full after about 35
        status, body, headers = await relay.post("/v1/track", track(f"m{i}", properties={"p": padding}))
        if status != 200:
            break
    assert (status, body["code"]) == (503, "queue_full")
    assert "Retry-After" in headers
    status, body, _ = await get(relay, "/ready")
    assert status == 503
    assert body["status"] == "unready"
    assert body["reason"] == "queue_full"
    samples = await scrape(relay)
    assert value(samples, "relay_queue_full") == 1
    assert value(samples, "relay_ready") == 0
    assert value(samples, "relay_ingest_rejected_total", reason="queue_full") == 1


async def test_metrics_count_received_rejected_stored_and_dedup_hits(start_relay):
    relay = await start_relay()
    for message_id in ("m1", "m2", "m3", "m1"):  # the second m1 is a dedup hit
        assert (await relay.post("/v1/track", track(message_id)))[0] == 200
    status, _, _ = await relay.post("/v1/track", data=b"{not json")
    assert status == 400
    status, body, _ = await relay.post("/v1/batch", {"writeKey": "wk", "batch": [
        {"type": "track", "userId": "u", "event": "E", "messageId": "b1"},
        {"type": "track", "userId": "u", "messageId": "b2"},  # no event name: dead-lettered
    ]})
    assert (status, body["accepted"], body["rejected"]) == (200, 1, 1)

    samples = await scrape(relay)
    assert value(samples, "relay_ingest_received_events_total") == 6
    assert value(samples, "relay_ingest_rejected_total", reason="invalid_json") == 1
    assert value(samples, "relay_ingest_rejected_total", reason="invalid_message") == 1
    assert value(samples, "relay_queue_stored_events_total") == 4
    assert value(samples, "relay_dedup_hits_total") == 1
    assert value(samples, "relay_queue_events") == 4
    assert value(samples, "relay_dead_letter_events") == 1
    assert (value(samples, "relay_queue_bytes") or 0) > 0
    assert (value(samples, "relay_queue_bytes") or 0) > 0
    assert value(samples, "relay_queue_max_bytes") == relay.relay.config.queue.max_bytes
    assert (value(samples, "relay_queue_oldest_event_age_seconds") or -1) >= 0
    assert value(samples, "relay_queue_full") == 0
    assert value(samples, "relay_queue_corrupt_files_total") == 0
    assert value(samples, "relay_ready") == 1
    assert value(samples, "relay_build_info", version=relay_version) == 1
    # the relay's registry is its own: nothing was added to the process-wide one
    assert prometheus_client.REGISTRY.get_sample_value("relay_ingest_received_events_total") is None


async def test_metrics_follow_a_destination_through_retry_delivery_and_dead_letter(start_relay):
    def answer(batch: list[dict[str, Any]]) -> int:
        return 400 if any(e["messageId"] == "poison" for e in batch) else 200

    upstream = FakeUpstream(script=[500], default=answer)
    await upstream.start()
    try:
        relay = await start_relay(destinations=[{
            "name": "seg", "type": "segment", "endpoint": upstream.url, "flush_interval": 0.01,
            "retry_initial": 0.05, "retry_max": 0.1,
        }])
        for message_id in ("m0", "m1", "poison", "m3"):
            assert (await relay.post("/v1/track", track(message_id)))[0] == 200
        await upstream.wait_for(3, timeout=WAIT)
        deadline = time.monotonic() + WAIT
        while True:
            samples = await scrape(relay)
            done = (value(samples, "relay_destination_delivered_events_total", destination="seg") == 3
                    and value(samples, "relay_destination_dead_lettered_events_total", destination="seg") == 1
                    and value(samples, "relay_destination_pending_events", destination="seg") == 0)
            if done or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert done, samples
        assert sorted(upstream.delivered_ids()) == ["m0", "m1", "m3"]
        assert value(samples, "relay_destination_retries_total", destination="seg") == 1
        requests = value(samples, "relay_destination_requests_total", destination="seg")
        assert requests == len(upstream.requests)
        histogram = "relay_destination_request_duration_seconds"
        assert value(samples, f"{histogram}_count", destination="seg") == requests
        assert value(samples, f"{histogram}_bucket", destination="seg", le="+Inf") == requests
        assert (value(samples, f"{histogram}_sum", destination="seg") or 0) > 0
        assert value(samples, "relay_destination_state", destination="seg", state="ok") == 1
        assert value(samples, "relay_destination_state", destination="seg", state="retrying") == 0
        assert value(samples, "relay_destination_oldest_pending_age_seconds", destination="seg") == 0
        assert value(samples, "relay_dead_letter_events") == 1
    finally:
        await upstream.stop()


async def test_a_destination_that_cannot_deliver_shows_as_retrying_with_its_backlog(start_relay):
    upstream = FakeUpstream(default=503)
    await upstream.start()
    try:
        relay = await start_relay(destinations=[{
            "name": "down", "type": "segment", "endpoint": upstream.url, "flush_interval": 0.01,
            "retry_initial": 0.05, "retry_max": 0.1,
        }])
        for message_id in ("m0", "m1"):
            assert (await relay.post("/v1/track", track(message_id)))[0] == 200
        deadline = time.monotonic() + WAIT
        while True:
            samples = await scrape(relay)
            retrying = value(samples, "relay_destination_state", destination="down", state="retrying") == 1
            if retrying or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert retrying, samples
        assert value(samples, "relay_destination_pending_events", destination="down") == 2
        assert (value(samples, "relay_destination_retries_total", destination="down") or 0) >= 1
        assert value(samples, "relay_destination_delivered_events_total", destination="down") == 0
    finally:
        await upstream.stop()


FAILING_PLUGIN = """
class Flaky:
    name = "flaky"
    type = "enrichment"
    version = "1.0.0"

    async def track(self, message):
        if message.get("event") == "boom":
            raise RuntimeError("lookup failed")
        return message
"""


async def test_plugin_errors_are_counted_per_plugin(start_relay, tmp_path):
    (tmp_path / "flaky.py").write_text(FAILING_PLUGIN)
    relay = await start_relay(plugins=[{"use": f"{tmp_path / 'flaky.py'}:Flaky", "name": "flaky"}])
    assert value(await scrape(relay), "relay_plugin_errors_total", plugin="flaky") == 0
    for i, event in enumerate(("fine", "boom", "boom")):
        assert (await relay.post("/v1/track", track(f"m{i}", event=event)))[0] == 200
    samples = await scrape(relay)
    assert value(samples, "relay_plugin_errors_total", plugin="flaky") == 2
    # an enrichment error is logged and counted; the event goes on
    assert [e["event"] for e in relay.events()] == ["fine", "boom", "boom"]


async def test_metrics_speak_openmetrics_when_asked(start_relay):
    relay = await start_relay()
    status, text, headers = await get(relay, "/metrics", {"Accept": "application/openmetrics-text"})
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")
    assert "relay_ingest_received_events_total 0" in text


async def test_status_is_the_report_relay_status_prints(start_relay, tmp_path):
    relay = await start_relay(destinations=[{"name": "files", "type": "file", "path": str(tmp_path / "out")}])
    for message_id in ("m1", "m2"):
        assert (await relay.post("/v1/track", track(message_id)))[0] == 200
    status, body, _ = await get(relay, "/status")
    assert status == 200
    printed = cli.status_report(relay.relay.config).to_builtins()

    def shape(report: Any) -> Any:
        if isinstance(report, dict):
            return {k: shape(v) for k, v in report.items()}
        if isinstance(report, list):
            return [shape(v) for v in report]
        return type(report).__name__ if not isinstance(report, int | float) else "number"

    assert shape(body) == shape(printed)
    assert body["queue"]["path"] == printed["queue"]["path"] == relay.db_path
    assert [d["name"] for d in body["destinations"]] == ["files"]


async def test_ready_again_once_deliveries_make_room_without_another_write(start_relay):
    from tests.support.upstream import FakeUpstream

    upstream = FakeUpstream()
    await upstream.start()
    port = upstream.port
    await upstream.stop()  # the upstream is down while the queue fills
    relay = await start_relay(queue={"max_bytes": 1 << 20, "when_full": "reject"}, destinations=[{
        "name": "up", "type": "segment", "endpoint": f"http://127.0.0.1:{port}", "flush_interval": 0.01,
        "retry_initial": 0.05, "retry_max": 0.2}])
    padding = secrets.token_hex(15_000)  # random: the queue cannot compress it
    accepted = 0
    for i in range(200):
        status, _, _ = await relay.post("/v1/track", track(f"m{i}", properties={"p": padding}))
        if status != 200:
            break
        accepted += 1
    assert status == 503
    assert (await get(relay, "/ready"))[0] == 503
    await upstream.start(port)  # the upstream comes back and the backlog drains
    try:
        await upstream.wait_for(accepted)
        for _ in range(200):
            if (await get(relay, "/ready"))[0] == 200:
                break
            await asyncio.sleep(0.05)
        status, body, _ = await get(relay, "/ready")
        assert (status, body["status"]) == (200, "ready")
    finally:
        await upstream.stop()
