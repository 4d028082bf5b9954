"""What aiohttp's parser refuses before the application sees a request is answered with
the relay's JSON error body too, on ingest and admin listeners alike."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.raw import answer, closed_by_peer, exchange

POST = b"POST /v1/track HTTP/1.1\r\nHost: relay\r\n"
MALFORMED = {
    "a very long URL": b"GET /v1/pixel/track?userId=" + b"u" * 9000 + b" HTTP/1.1\r\nHost: relay\r\n\r\n",
    "too many headers": POST + b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"\r\n",
    "a too large header": POST + b"X-Big: " + b"v" * 9000 + b"\r\n\r\n",
    "CL.TE smuggling": POST + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "TE.CL smuggling": POST + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    "two Content-Lengths": POST + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "a coding list not ending in chunked": POST + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
async def test_http_layer_400s_carry_the_json_error_body(relay, raw):
    status, headers, body = answer(await exchange(relay.relay.port, raw))
    assert (status, headers["content-type"]) == (400, "application/json")
    assert set(body) == {"success", "code", "message", "error"}
    assert (body["success"], body["code"]) == (False, "bad_request")
    assert body["message"] == body["error"] != ""
    assert relay.events() == []


async def test_http_layer_400s_of_the_admin_listener_carry_the_json_error_body(relay):
    raw = b"GET /health?" + b"x" * 9000 + b" HTTP/1.1\r\nHost: relay\r\n\r\n"
    status, headers, body = answer(await exchange(relay.relay.admin.port, raw))
    assert (status, headers["content-type"], body["code"]) == (400, "application/json", "bad_request")


async def test_a_smuggling_attempt_after_a_good_request_on_a_kept_alive_connection_gets_json(relay):
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.relay.port)
    try:
        event = b'{"userId":"u","event":"Ok"}'
        writer.write(POST + b"Content-Length: %d\r\n\r\n" % len(event) + event)
        first = await asyncio.wait_for(reader.readuntil(b'{"success":true}'), 10)
        assert first.startswith(b"HTTP/1.1 200")
        writer.write(MALFORMED["CL.TE smuggling"])
        status, headers, body = answer(await closed_by_peer(reader))
    finally:
        writer.close()
    assert (status, headers["content-type"], body["code"]) == (400, "application/json", "bad_request")
    assert [e["event"] for e in relay.events()] == ["Ok"]
