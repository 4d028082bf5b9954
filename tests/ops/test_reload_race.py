"""Reload without a race: the old pipeline is unloaded only after the ingest requests that
hold it have finished; the request's settings come from one snapshot."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec

from tests.conftest import make_config
from tests.ops.test_admin import track

GATE_PLUGIN = '''
import asyncio

class Gate:
    name = "gate"
    version = "1.0"
    type = "enrichment"
    budget_ms = 30000

    def __init__(self):
        self.entered = asyncio.Event()
        self.open = asyncio.Event()
        self.unloaded = False
        self.unloaded_while_running = False

    async def track(self, message):
        self.entered.set()
        await self.open.wait()
        self.unloaded_while_running = self.unloaded
        message.setdefault("properties", {})["gated"] = True
        return message

    async def unload(self):
        self.unloaded = True
'''


async def test_the_old_pipeline_is_unloaded_only_after_the_requests_holding_it(
        start_relay: Any, tmp_path: Path) -> None:
    (tmp_path / "gate.py").write_text(GATE_PLUGIN)
    running = await start_relay(plugins=[{"use": f"{tmp_path / 'gate.py'}:Gate", "name": "gate"}])
    gate = running.relay.pipeline.plugins[0].plugin
    request = asyncio.create_task(running.post("/v1/track", track("held")))
    await asyncio.wait_for(gate.entered.wait(), 10)
    reload = asyncio.create_task(running.relay.reload(make_config(tmp_path)))  # no plugins
    async with asyncio.timeout(10):
        while running.relay.ingest.pipeline is running.relay.pipeline and running.relay.pipeline.plugins:
            await asyncio.sleep(0.01)  # the new pipeline is in place
    assert not reload.done() and gate.unloaded is False  # still held by the request
    gate.open.set()
    status, _, _ = await asyncio.wait_for(request, 10)
    await asyncio.wait_for(reload, 10)
    assert status == 200
    assert gate.unloaded is True and gate.unloaded_while_running is False
    assert running.events()[0]["properties"]["gated"] is True


async def test_a_request_checks_its_key_against_one_snapshot(start_relay: Any, tmp_path: Path) -> None:
    running = await start_relay(server={"write_keys": ["old"]})
    before = running.relay.ingest.snapshot
    new = make_config(tmp_path, server={"write_keys": ["new"], "trusted_proxies": ["10.0.0.0/8"]})
    await running.relay.reload(msgspec.structs.replace(new, queue=running.relay.config.queue))
    after = running.relay.ingest.snapshot
    assert before is not after and before.keys == frozenset({"old"})
    assert after.keys == frozenset({"new"}) and after.config.trusted_proxies == ("10.0.0.0/8",)
    assert (await running.post("/v1/track", {**track("k1"), "writeKey": "new"}))[0] == 200
    assert (await running.post("/v1/track", {**track("k2"), "writeKey": "old"}))[0] == 401
