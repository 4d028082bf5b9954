"""The metrics operators reach for first appear and move under load: ingest requests by route
and code, the ingest latency histogram, bytes in and out, destination requests by outcome,
plugins' timeouts, drops and refusals, reloads."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from relay.app import Relay
from tests.conftest import make_config
from tests.ops.test_admin import WAIT, scrape, track, value
from tests.support.upstream import FakeUpstream

SLOW_PLUGIN = '''
import asyncio

class Slow:
    name = "slow"
    type = "enrichment"
    version = "1.0"
    budget_ms = 20

    async def track(self, message):
        if message.get("event") == "slow":
            await asyncio.sleep(1)
        return message
'''


async def test_the_metrics_appear_and_move_under_load(start_relay: Any, tmp_path: Path) -> None:
    (tmp_path / "slow.py").write_text(SLOW_PLUGIN)
    upstream = FakeUpstream(script=[500], default=200)
    await upstream.start()
    try:
        relay = await start_relay(
            destinations=[{"name": "seg", "type": "segment", "endpoint": upstream.url,
                           "flush_interval": 0.01, "retry_initial": 0.05, "retry_max": 0.1,
                           "plugins": ["no-tests"]}],
            plugins=[{"use": f"{tmp_path / 'slow.py'}:Slow", "name": "slow"},
                     {"use": "filter", "name": "no-tests",
                      "options": {"if": "event = 'Test'", "drop": True}},
                     {"use": "tracking_plan", "name": "plan",
                      "options": {"events": {"Clicked": {}, "slow": {}, "Test": {}},
                                  "unplanned_events": "block"}}])
        before = await scrape(relay)
        assert value(before, "relay_reloads_total", result="success") == 0
        assert value(before, "relay_plugin_timeouts_total", plugin="slow") == 0

        async def one(i: int) -> None:
            status, _, _ = await relay.post("/v1/track", track(f"m{i}"))
            assert status == 200

        await asyncio.gather(*(one(i) for i in range(40)))
        assert (await relay.post("/v1/track", track("slow-1", event="slow")))[0] == 200
        assert (await relay.post("/v1/track", track("drop-1", event="Test")))[0] == 200
        assert (await relay.post("/v1/track", track("unplanned-1", event="Nope")))[0] == 200
        assert (await relay.post("/v1/track", data=b"{not json"))[0] == 400
        await upstream.wait_for(2, timeout=WAIT)
        deadline = time.monotonic() + WAIT
        while True:
            samples = await scrape(relay)
            if (value(samples, "relay_plugin_dropped_messages_total", plugin="no-tests")
                    or time.monotonic() > deadline):
                break
            await asyncio.sleep(0.05)
        ok = value(samples, "relay_ingest_requests_total", route="/v1/track", code="200")
        assert ok is not None and ok >= 43
        assert value(samples, "relay_ingest_requests_total", route="/v1/track", code="400") == 1
        assert value(samples, "relay_ingest_request_duration_seconds_count", route="/v1/track") == ok + 1
        assert (value(samples, "relay_ingest_received_bytes_total", route="/v1/track") or 0) > 40 * 50
        assert (value(samples, "relay_ingest_sent_bytes_total", route="/v1/track") or 0) > 0
        assert value(samples, "relay_destination_requests_by_outcome_total",
                     destination="seg", outcome="retry") == 1
        assert (value(samples, "relay_destination_requests_by_outcome_total",
                      destination="seg", outcome="delivered") or 0) >= 1
        assert (value(samples, "relay_destination_sent_bytes_total", destination="seg") or 0) > 0
        assert value(samples, "relay_plugin_timeouts_total", plugin="slow") == 1
        assert value(samples, "relay_plugin_dropped_messages_total", plugin="no-tests") == 1
        assert value(samples, "relay_plugin_refused_messages_total", plugin="plan") == 1

        await relay.relay.reload(relay.relay.config)
        samples = await scrape(relay)
        assert value(samples, "relay_reloads_total", result="success") == 1
    finally:
        await upstream.stop()


async def test_a_failed_reload_is_counted(tmp_path: Path) -> None:
    relay = Relay(make_config(tmp_path))
    await relay.start()
    try:
        bad = make_config(tmp_path, plugins=[{"use": "privacy", "options": {
            "hash": ["traits.email"], "salt_env": "RELAY_TEST_UNSET_SALT"}}])
        try:
            await relay.reload(bad)
        except Exception:
            pass
        assert relay.reloads.failed == 1 and relay.reloads.succeeded == 0
    finally:
        await relay.stop()
