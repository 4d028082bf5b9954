"""The three authentication forms, the write-key allow list, and who the client is."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from relay.ingest import auth

OK = {"success": True}
MISSING = {"success": False, "code": "missing_write_key",
           "message": "no write key: send it as Basic auth username or as `writeKey`",
           "error": "no write key: send it as Basic auth username or as `writeKey`"}
UNKNOWN = {"success": False, "code": "unknown_write_key", "message": "the write key is not accepted here",
           "error": "the write key is not accepted here"}


def basic(token: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(token.encode()).decode()}


def track(**extra: Any) -> dict[str, Any]:
    return {"userId": "u", "event": "E", **extra}


@pytest.fixture
async def guarded(start_relay):
    return await start_relay(server={"write_keys": ["key-a", "key-b"]})


# --- the three forms, with write_keys set --------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "body_key", "stored_key"),
    [
        (basic("key-a:"), None, "key-a"),
        (basic("key-a"), None, "key-a"),
        (basic("key-b:ignored-password"), None, "key-b"),
        ({}, "key-b", "key-b"),
        (basic("key-a:"), "key-a", "key-a"),
    ],
    ids=["basic-with-colon", "basic-without-colon", "basic-with-password", "body-writeKey", "both"],
)
@pytest.mark.parametrize("route", ["/v1/track", "/v1/t", "/v1/batch", "/v1/b"])
async def test_each_authentication_form_is_accepted_and_the_key_kept_with_the_event(
        guarded, route, headers, body_key, stored_key):
    message = track(type="track")
    body: dict[str, Any] = {"batch": [message]} if route in ("/v1/batch", "/v1/b") else message
    if body_key is not None:
        body["writeKey"] = body_key
    status, answer, _ = await guarded.post(route, body, headers=headers)
    assert status == 200 and answer["success"] is True
    assert guarded.rows("SELECT write_key FROM events") == [(stored_key,)]
    assert "writeKey" not in guarded.events()[0]


@pytest.mark.parametrize("route", ["/v1/track", "/v1/t", "/v1/batch", "/v1/import", "/v1/b"])
async def test_a_request_without_a_write_key_is_refused_with_401_when_keys_are_set(guarded, route):
    message = track(type="track")
    body = {"batch": [message]} if route in ("/v1/batch", "/v1/import", "/v1/b") else message
    status, answer, _ = await guarded.post(route, body)
    assert (status, answer) == (401, MISSING)
    assert guarded.events() == [] and guarded.dead_letters() == []


@pytest.mark.parametrize(
    ("headers", "body_key"),
    [(basic("nope:"), None), (basic("nope"), None), ({}, "nope"), (basic("nope:"), "nope")],
    ids=["basic-with-colon", "basic-without-colon", "body-writeKey", "both"],
)
async def test_an_unknown_write_key_is_refused_with_401_in_every_form(guarded, headers, body_key):
    body = {"batch": [track(type="track"), {"type": "track"}]}
    if body_key is not None:
        body["writeKey"] = body_key
    status, answer, _ = await guarded.post("/v1/batch", body, headers=headers)
    assert (status, answer) == (401, UNKNOWN)
    assert guarded.events() == [] and guarded.dead_letters() == []


async def test_the_basic_auth_key_decides_when_it_and_the_body_key_differ(guarded):
    status, answer, _ = await guarded.post("/v1/track", track(writeKey="nope"), headers=basic("key-a:"))
    assert (status, answer) == (200, OK)
    assert guarded.rows("SELECT write_key FROM events") == [("key-a",)]
    status, answer, _ = await guarded.post("/v1/track", track(writeKey="key-a"), headers=basic("nope:"))
    assert (status, answer) == (401, UNKNOWN)


@pytest.mark.parametrize("header", ["Bearer key-a", "Basic", "Basic !!!!",
                                    "Basic " + base64.b64encode(b":pw").decode()])
async def test_an_unusable_authorization_header_falls_back_to_the_body_key(guarded, header):
    status, answer, _ = await guarded.post("/v1/track", track(writeKey="key-b"),
                                           headers={"Authorization": header})
    assert (status, answer) == (200, OK)
    assert guarded.rows("SELECT write_key FROM events") == [("key-b",)]


async def test_an_unusable_authorization_header_without_a_body_key_is_a_missing_key(guarded):
    status, answer, _ = await guarded.post("/v1/track", track(), headers={"Authorization": "Bearer key-a"})
    assert (status, answer) == (401, MISSING)


async def test_a_batch_is_refused_whole_for_a_bad_key_even_with_valid_messages(guarded):
    status, answer, _ = await guarded.post("/v1/import", {"batch": [track(type="track")] * 3,
                                                          "writeKey": "key-z"})
    assert (status, answer) == (401, UNKNOWN)
    assert guarded.rows("SELECT count(*) FROM events") == [(0,)]


# --- write_keys empty: any key, or none -------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "body_key", "stored_key"),
    [(basic("anything:"), None, "anything"), (basic("whatever"), None, "whatever"),
     ({}, "from-body", "from-body"), ({}, None, "")],
    ids=["basic", "basic-without-colon", "body", "none"],
)
async def test_any_key_or_none_is_accepted_when_write_keys_is_empty(relay, headers, body_key, stored_key):
    body = track() if body_key is None else track(writeKey=body_key)
    status, answer, _ = await relay.post("/v1/track", body, headers=headers)
    assert (status, answer) == (200, OK)
    assert relay.rows("SELECT write_key FROM events") == [(stored_key,)]


# --- pixel and settings -----------------------------------------------------------------------------


async def pixel(running: Any, query: str) -> tuple[int, bytes, Any]:
    async with running.session.get(f"{running.url}/v1/pixel/track?{query}",
                                   timeout=aiohttp.ClientTimeout(total=10)) as resp:
        return resp.status, await resp.read(), resp.headers


async def test_pixel_takes_the_write_key_from_its_data_or_its_query(guarded):
    data = base64.b64encode(json.dumps(track(writeKey="key-a")).encode()).decode()
    status, _, headers = await pixel(guarded, f"data={quote(data)}")
    assert (status, headers["Content-Type"]) == (200, "image/gif")
    data = base64.b64encode(json.dumps(track(messageId="m2")).encode()).decode()
    status, _, headers = await pixel(guarded, f"data={quote(data)}&writeKey=key-b")
    assert (status, headers["Content-Type"]) == (200, "image/gif")
    status, _, headers = await pixel(guarded, "userId=u&event=E&writeKey=key-a&messageId=m3")
    assert (status, headers["Content-Type"]) == (200, "image/gif")
    assert guarded.rows("SELECT write_key, message_id FROM events ORDER BY id")[1:] == [
        ("key-b", "m2"), ("key-a", "m3")]
    assert guarded.rows("SELECT write_key FROM events ORDER BY id")[0] == ("key-a",)


@pytest.mark.parametrize("query", ["userId=u&event=E", "userId=u&event=E&writeKey=nope",
                                   "data=%25%25bad&writeKey=nope"],
                         ids=["missing", "unknown", "bad-data-unknown"])
async def test_an_unauthorised_pixel_still_answers_the_gif_but_stores_nothing(guarded, query):
    status, gif, headers = await pixel(guarded, query)
    assert (status, headers["Content-Type"]) == (200, "image/gif")
    assert gif.startswith(b"GIF89a")
    assert headers["X-Relay-Error"] in (MISSING["message"], UNKNOWN["message"])
    assert guarded.events() == [] and guarded.dead_letters() == []


async def test_an_invalid_pixel_with_a_valid_query_key_is_dead_lettered_under_that_key(guarded):
    status, _, headers = await pixel(guarded, "data=%25%25bad&writeKey=key-a")
    assert (status, headers["X-Relay-Error"]) == (200, "pixel data is not base64-encoded JSON")
    assert guarded.rows("SELECT write_key, reason FROM dead_letters") == [
        ("key-a", "pixel data is not base64-encoded JSON")]


async def test_settings_for_an_unknown_write_key_are_refused_with_401(guarded):
    async with guarded.session.get(f"{guarded.url}/v1/projects/nope/settings") as resp:
        assert (resp.status, await resp.json()) == (401, UNKNOWN)
    async with guarded.session.get(f"{guarded.url}/v1/projects/key-a/settings") as resp:
        assert resp.status == 200
        assert (await resp.json())["integrations"]["Segment.io"]["apiKey"] == "key-a"


# --- the pure functions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("Basic " + base64.b64encode(b"wk:").decode(), "wk"),
        ("Basic " + base64.b64encode(b"wk").decode(), "wk"),
        ("basic " + base64.b64encode(b"wk:pw").decode(), "wk"),
        ("  Basic   " + base64.b64encode(b"wk:").decode() + "  ", "wk"),
        ("Basic " + base64.b64encode(b":pw").decode(), None),
        ("Basic " + base64.b64encode(b"\xff\xfe:").decode(), None),
        ("Basic ###", None),
        ("Bearer abc", None),
    ],
)
def test_basic_username_reads_the_key_with_or_without_the_colon(header, expected):
    assert auth.basic_username(header) == expected


TRUSTED = auth.networks(["127.0.0.1", "10.0.0.0/8", "::1"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("127.0.0.1", None, TRUSTED, "127.0.0.1"),
        ("127.0.0.1", "203.0.113.9", (), "127.0.0.1"),
        ("198.51.100.1", "203.0.113.9", TRUSTED, "198.51.100.1"),
        ("127.0.0.1", "203.0.113.9", TRUSTED, "203.0.113.9"),
        ("127.0.0.1", "203.0.113.9, 10.1.2.3", TRUSTED, "203.0.113.9"),
        ("127.0.0.1", "1.1.1.1, 203.0.113.9, 10.1.2.3", TRUSTED, "203.0.113.9"),
        ("127.0.0.1", "10.9.9.9, 10.1.2.3", TRUSTED, "10.9.9.9"),
        ("127.0.0.1", "unknown", TRUSTED, "127.0.0.1"),
        ("::1", "2001:db8::7", TRUSTED, "2001:db8::7"),
    ],
    ids=["no-header", "no-trusted-proxies", "untrusted-peer", "one-hop", "nearest-untrusted-hop",
         "spoofed-left-hop-ignored", "all-trusted", "garbage-hop", "ipv6"],
)
def test_client_ip_believes_forwarded_for_only_from_trusted_proxies(peer, forwarded, trusted, expected):
    assert auth.client_ip(peer, forwarded, trusted) == expected
