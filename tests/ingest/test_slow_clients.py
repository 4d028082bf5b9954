"""Slow clients: a deadline for request headers and bodies, and a connection limit; a
slowloris does not stop other clients."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.support.raw import closed_by_peer, dribble

HEAD = b"POST /v1/track HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"


async def test_a_slowloris_is_cut_off_while_other_clients_are_served(start_relay):
    relay = await start_relay(server={"header_timeout": 0.5})
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.relay.port)
    writer.write(HEAD)  # the head never ends
    dribble_stop = asyncio.Event()
    task = asyncio.create_task(dribble(writer, dribble_stop))
    try:
        status, body, _ = await relay.post("/v1/track", {"userId": "u", "event": "Fast"})
        assert (status, body) == (200, {"success": True})  # served while the slowloris holds on
        assert await closed_by_peer(reader) == b""  # cut off without an answer
        assert relay.relay.guard.header_timeouts == 1
    finally:
        dribble_stop.set()
        await task
        writer.close()
    assert [e["event"] for e in relay.events()] == ["Fast"]


async def test_a_body_that_does_not_arrive_in_time_is_answered_408(start_relay):
    relay = await start_relay(server={"body_timeout": 0.3})
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.relay.port)
    writer.write(HEAD + b"Content-Length: 200\r\n\r\n" + b'{"userId": "u",')
    await writer.drain()
    answer = await closed_by_peer(reader)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    parsed = json.loads(body)
    assert (parsed["success"], parsed["code"]) == (False, "body_timeout")
    assert relay.events() == []


async def test_connections_past_the_limit_are_refused_and_served_again_once_others_close(start_relay):
    relay = await start_relay(server={"max_connections": 3, "header_timeout": 30})
    held = [await asyncio.open_connection("127.0.0.1", relay.relay.port) for _ in range(3)]
    for _, writer in held:
        writer.write(HEAD)  # three clients hold their connections open
        await writer.drain()
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.relay.port)
    writer.write(HEAD + b"Content-Length: 2\r\n\r\n{}")
    assert await closed_by_peer(reader) == b""  # the fourth is refused
    writer.close()
    assert relay.relay.guard.refused == 1
    for _, w in held:
        w.close()
        await w.wait_closed()
    for _ in range(100):  # the relay sees the closes
        if relay.relay.guard.open == 0:
            break
        await asyncio.sleep(0.02)
    status, body, _ = await relay.post("/v1/track", {"userId": "u", "event": "After"})
    assert (status, body) == (200, {"success": True})


def content_length_body(body: bytes) -> bytes:
    return f"Content-Length: {len(body)}\r\n\r\n".encode() + body


def chunked_body(body: bytes) -> bytes:
    chunks = b"".join(f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in (body[:7], body[7:]))
    return b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"


@pytest.mark.parametrize("framing", [content_length_body, chunked_body], ids=["content-length", "chunked"])
async def test_a_slowloris_after_a_good_request_on_a_kept_alive_connection_is_cut_off(start_relay, framing):
    """The guard follows the first request's body (either framing) to its end, so the next
    head on the connection gets its own deadline."""
    relay = await start_relay(server={"header_timeout": 0.5})
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.relay.port)
    writer.write(HEAD + framing(json.dumps({"userId": "u", "event": "First"}).encode()))
    await writer.drain()
    answer = await asyncio.wait_for(reader.readuntil(b'{"success":true}'), 10)
    assert answer.startswith(b"HTTP/1.1 200")
    writer.write(HEAD)  # the second request's head never ends
    stop = asyncio.Event()
    task = asyncio.create_task(dribble(writer, stop))
    try:
        assert await closed_by_peer(reader) == b""
        assert relay.relay.guard.header_timeouts == 1
    finally:
        stop.set()
        await task
        writer.close()
    assert [e["event"] for e in relay.events()] == ["First"]
