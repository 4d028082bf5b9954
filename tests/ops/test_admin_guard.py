"""The admin listener has the ingest listener's connection guard, with a small limit: idle
or slow admin clients cannot use up the descriptors ingest needs."""

from __future__ import annotations

import asyncio

import aiohttp

from relay.ops import admin
from tests.support.raw import closed_by_peer, dribble


async def settled(check, timeout: float = 10.0) -> bool:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)
    return True


async def test_300_idle_admin_connections_do_not_lock_out_ingest_and_health_answers_once_they_go(relay):
    held = [await asyncio.open_connection("127.0.0.1", relay.relay.admin.port) for _ in range(300)]
    try:
        guard = relay.relay.admin.guard
        assert await settled(lambda: guard.open + guard.refused == 300)
        assert (guard.open, guard.refused) == (admin.MAX_CONNECTIONS, 300 - admin.MAX_CONNECTIONS)
        status, body, _ = await relay.post("/v1/track", {"userId": "u", "event": "Served"})
        assert (status, body) == (200, {"success": True})
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.relay.admin.port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: relay\r\n\r\n")
        assert await closed_by_peer(reader) == b""  # past the limit: refused
        writer.close()
    finally:
        for _, w in held:
            w.close()
    assert await settled(lambda: relay.relay.admin.guard.open == 0)
    async with relay.session.get(relay.admin_url + "/health",
                                 timeout=aiohttp.ClientTimeout(total=10)) as resp:
        assert (resp.status, await resp.json()) == (200, {"status": "ok"})


async def test_a_slowloris_on_the_admin_listener_is_cut_off_at_its_header_deadline(start_relay, monkeypatch):
    monkeypatch.setattr(admin, "HEADER_TIMEOUT", 0.3)
    relay = await start_relay()
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.relay.admin.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: relay\r\n")
    stop = asyncio.Event()
    task = asyncio.create_task(dribble(writer, stop))
    try:
        assert await closed_by_peer(reader) == b""
        assert relay.relay.admin.guard.header_timeouts == 1
    finally:
        stop.set()
        await task
        writer.close()
