"""Framings aiohttp accepts are followed to the end of their body, so the next head on the
connection has its deadline; a body in a flood of tiny chunks is refused."""

from __future__ import annotations

import asyncio
import json

import pytest

from relay.ingest.guard import MAX_CHUNKS
from tests.support.raw import answer, closed_by_peer, dribble, exchange

HEAD = b"POST /v1/track HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
EVENT = json.dumps({"userId": "u", "event": "Chunked"}).encode()


def chunked(body: bytes, size: int) -> bytes:
    parts = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts) + b"0\r\n\r\n"


async def hold_after_one_request(port: int, coding: bytes) -> tuple[asyncio.StreamReader,
                                                                    asyncio.StreamWriter]:
    """One good request in ``coding``, answered; then a head that never ends."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HEAD + b"Transfer-Encoding: " + coding + b"\r\n\r\n" + chunked(EVENT, 7))
    await writer.drain()
    first = await asyncio.wait_for(reader.readuntil(b'{"success":true}'), 10)
    assert first.startswith(b"HTTP/1.1 200")
    writer.write(HEAD)
    await writer.drain()
    return reader, writer


@pytest.mark.parametrize("coding", [b"identity, chunked", b"gzip, chunked", b"gzip,CHUNKED", b",chunked"])
async def test_a_slowloris_after_a_coding_list_ending_in_chunked_is_cut_off(start_relay, coding):
    relay = await start_relay(server={"header_timeout": 0.5})
    reader, writer = await hold_after_one_request(relay.relay.port, coding)
    stop = asyncio.Event()
    task = asyncio.create_task(dribble(writer, stop))
    try:
        assert await closed_by_peer(reader) == b""
        assert relay.relay.guard.header_timeouts == 1
    finally:
        stop.set()
        await task
        writer.close()
    assert [e["event"] for e in relay.events()] == ["Chunked"]


async def test_forty_identity_chunked_connections_do_not_lock_out_another_client(start_relay):
    """The issue's lockout: 40 connections (the limit) each send an `identity, chunked`
    request and then hold a head open; each is cut off at its deadline, and a new client
    is served after them."""
    relay = await start_relay(server={"header_timeout": 0.5, "max_connections": 40})
    held = await asyncio.gather(*(hold_after_one_request(relay.relay.port, b"identity, chunked")
                                  for _ in range(40)))
    try:
        closed = await asyncio.gather(*(closed_by_peer(reader) for reader, _ in held))
        assert closed == [b""] * 40
        assert relay.relay.guard.header_timeouts == 40
    finally:
        for _, writer in held:
            writer.close()
    for _ in range(200):  # the relay sees the closes
        if relay.relay.guard.open == 0:
            break
        await asyncio.sleep(0.02)
    status, body, _ = await relay.post("/v1/track", {"userId": "u", "event": "After"})
    assert (status, body) == (200, {"success": True})


async def test_a_body_in_more_tiny_chunks_than_the_bound_is_refused_400_and_not_stored(start_relay):
    relay = await start_relay()
    body = json.dumps({"userId": "u", "event": "Tiny", "properties": {"pad": "x" * 2 * MAX_CHUNKS}})
    raw = await exchange(relay.relay.port, HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
                         + chunked(body.encode(), 1))
    status, headers, parsed = answer(raw)
    assert (status, headers["content-type"], parsed["code"]) == (400, "application/json", "too_many_chunks")
    assert relay.relay.guard.chunk_floods == 1
    status, _, _ = await relay.post("/v1/track", {"userId": "u", "event": "Other"})
    assert status == 200
    assert [e["event"] for e in relay.events()] == ["Other"]


async def test_a_body_in_chunks_up_to_the_bound_is_stored(start_relay):
    relay = await start_relay()
    body = json.dumps({"userId": "u", "event": "Many", "properties": {"pad": "x" * MAX_CHUNKS}}).encode()
    size = -(-len(body) // MAX_CHUNKS)  # the fewest bytes a chunk that keeps within the bound
    close = HEAD.replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\nConnection: close\r\n")
    raw = await exchange(relay.relay.port,
                         close + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(body, size))
    assert answer(raw)[0] == 200
    assert [e["event"] for e in relay.events()] == ["Many"]
