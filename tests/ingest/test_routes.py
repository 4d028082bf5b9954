"""The ingest API over a real socket: every route, its answer, and what lands in the queue file."""

from __future__ import annotations

import base64
import gzip
import json
import struct
import zlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import pytest

from relay.ingest.responses import PIXEL_GIF

OK = {"success": True}
LIMIT = 500 * 1024  # bytes a request may carry, before and after decompression
MINIMAL = {
    "identify": {"userId": "u1", "traits": {"plan": "pro"}},
    "track": {"userId": "u1", "event": "Signed Up", "properties": {"n": 1}},
    "page": {"anonymousId": "a1", "name": "Home"},
    "screen": {"anonymousId": "a1", "name": "Settings"},
    "group": {"userId": "u1", "groupId": "g1"},
    "alias": {"userId": "u1", "previousId": "a1"},
}
BROWSER_ROUTES = {"i": "identify", "t": "track", "p": "page", "s": "screen", "g": "group", "a": "alias"}


def err(code: str, message: str) -> dict[str, Any]:
    return {"success": False, "code": code, "message": message, "error": message}


def assert_error_shape(body: Any, code: str) -> None:
    assert isinstance(body, dict)
    assert set(body) == {"success", "code", "message", "error"}
    assert body["success"] is False
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert body["error"] == body["message"]


def track(i: int = 0, **extra: Any) -> dict[str, Any]:
    return {"type": "track", "userId": f"u{i}", "event": "E", "messageId": f"m-{i}", **extra}


async def get(running: Any, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, Any]:
    async with running.session.get(running.url + path, headers=headers,
                                   timeout=aiohttp.ClientTimeout(total=10)) as resp:
        return resp.status, await resp.read(), resp.headers


async def request(running: Any, method: str, path: str,
                  headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    async with running.session.request(method, running.url + path, headers=headers,
                                       timeout=aiohttp.ClientTimeout(total=10)) as resp:
        raw = await resp.read()
        return resp.status, (json.loads(raw) if raw else None), resp.headers


# --- the single-message routes ---------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(MINIMAL))
async def test_single_message_route_answers_success_and_stores_the_event(relay, kind):
    status, body, headers = await relay.post(f"/v1/{kind}", {**MINIMAL[kind], "messageId": f"id-{kind}"})
    assert (status, body) == (200, OK)
    assert headers["Content-Type"].startswith("application/json")
    [event] = relay.events()
    assert event["type"] == kind
    assert event["messageId"] == f"id-{kind}"
    for key, value in MINIMAL[kind].items():
        assert event[key] == value
    assert relay.rows("SELECT message_id, type FROM events") == [(f"id-{kind}", kind)]


@pytest.mark.parametrize("letter", sorted(BROWSER_ROUTES))
async def test_analytics_js_route_stores_its_type_and_strips_the_write_key(relay, letter):
    kind = BROWSER_ROUTES[letter]
    message = {**MINIMAL[kind], "type": kind, "writeKey": "browser-key", "sentAt": "2024-05-01T10:00:00.000Z",
               "_metadata": {"bundled": ["Segment.io"], "unbundled": []}}
    status, body, _ = await relay.post(f"/v1/{letter}", message,
                                       headers={"Content-Type": "text/plain"})
    assert (status, body) == (200, OK)
    [event] = relay.events()
    assert event["type"] == kind
    assert "writeKey" not in event
    assert event["_metadata"] == {"bundled": ["Segment.io"], "unbundled": []}
    assert relay.rows("SELECT write_key, type FROM events") == [("browser-key", kind)]


async def test_the_route_decides_the_type_of_a_single_message(relay):
    status, body, _ = await relay.post("/v1/track", {"type": "identify", "userId": "u", "event": "E"})
    assert (status, body) == (200, OK)
    assert [e["type"] for e in relay.events()] == ["track"]


async def test_single_route_refuses_an_invalid_message_with_400_and_stores_nothing(relay):
    status, body, _ = await relay.post("/v1/track", {"userId": "u1"})
    assert (status, body) == (400, err("invalid_message", "track needs event"))
    status, body, _ = await relay.post("/v1/identify", {"traits": {"a": 1}})
    assert (status, body) == (400, err("invalid_message", "message needs a userId or an anonymousId"))
    assert relay.events() == []


# --- the batch routes --------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["/v1/batch", "/v1/import", "/v1/b"])
async def test_batch_route_stores_every_message_in_order_and_answers_counts(relay, route):
    batch = [{**MINIMAL[k], "type": k, "messageId": f"m-{k}"} for k in sorted(MINIMAL)]
    status, body, _ = await relay.post(route, {"batch": batch, "writeKey": "wk",
                                               "sentAt": "2024-05-01T10:00:00.000Z"})
    assert (status, body) == (200, {"success": True, "accepted": 6, "duplicates": 0, "rejected": 0})
    assert relay.rows("SELECT message_id, type, write_key FROM events ORDER BY id") == [
        (f"m-{k}", k, "wk") for k in sorted(MINIMAL)
    ]
    assert relay.dead_letters() == []


async def test_invalid_messages_in_a_batch_are_dead_lettered_with_their_reason_and_the_rest_stored(relay):
    batch = [
        track(1),
        {"userId": "u", "messageId": "no-type"},
        {"type": "track", "event": "E", "messageId": "no-ids"},
        {"type": "track", "userId": "u", "messageId": "no-event"},
        {"type": "group", "userId": "u", "messageId": "no-group"},
        {"type": "alias", "userId": "u", "messageId": "no-previous"},
        {"type": "sneeze", "userId": "u", "messageId": "bad-type"},
        "not an object",
        {"type": "identify", "userId": "u", "messageId": "x" * 101},
        {"type": "identify", "userId": "u2", "messageId": "ok-2"},
    ]
    status, body, _ = await relay.post("/v1/batch", {"batch": batch})
    reasons = [
        (1, "no-type", "message has no type"),
        (2, "no-ids", "message needs a userId or an anonymousId"),
        (3, "no-event", "track needs event"),
        (4, "no-group", "group needs groupId"),
        (5, "no-previous", "alias needs previousId"),
        (6, "bad-type", "type must be one of alias, group, identify, page, screen, track"),
        (7, None, "message must be a JSON object"),
        (8, "x" * 101, "messageId is longer than 100 characters"),
    ]
    assert status == 200
    assert body == {
        "success": True, "accepted": 2, "duplicates": 0, "rejected": 8,
        "errors": [{"index": i, "messageId": mid, "reason": reason} for i, mid, reason in reasons],
    }
    assert [e["messageId"] for e in relay.events()] == ["m-1", "ok-2"]
    dead = relay.dead_letters()
    assert [(d[0], d[1]) for d in dead] == [(None, reason) for _, _, reason in reasons]
    assert json.loads(dead[6][3]) == "not an object"
    assert json.loads(dead[2][3])["messageId"] == "no-event"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"writeKey": "k"}, err("invalid_batch", "body needs a `batch` array of messages")),
        ({"batch": {"type": "track"}}, err("invalid_batch", "body needs a `batch` array of messages")),
        ({"batch": []}, err("invalid_batch", "batch is empty")),
        ({"batch": [track()], "context": "x"}, err("invalid_batch", "batch-level context must be an object")),
        ({"batch": [track()], "integrations": [1]},
         err("invalid_batch", "batch-level integrations must be an object")),
    ],
    ids=["no-batch", "batch-not-array", "empty", "context-not-object", "integrations-not-object"],
)
async def test_a_malformed_batch_is_refused_with_400_naming_the_problem(relay, body, expected):
    status, answer, _ = await relay.post("/v1/batch", body)
    assert (status, answer) == (400, expected)
    assert relay.events() == [] and relay.dead_letters() == []


async def test_a_batch_of_2500_messages_is_accepted(relay):
    batch = [track(i) for i in range(2500)]
    status, body, _ = await relay.post("/v1/batch", {"batch": batch})
    assert (status, body) == (200, {"success": True, "accepted": 2500, "duplicates": 0, "rejected": 0})
    assert relay.rows("SELECT count(*) FROM events") == [(2500,)]


async def test_a_batch_of_2501_messages_is_refused_whole(relay):
    batch = [track(i) for i in range(2501)]
    status, body, _ = await relay.post("/v1/batch", {"batch": batch})
    assert (status, body) == (400, err("batch_too_large", "batch has 2501 messages; the limit is 2500"))
    assert relay.rows("SELECT count(*) FROM events") == [(0,)]


# --- size limits ---------------------------------------------------------------------------------


async def test_a_message_over_32_kib_on_a_single_route_is_refused(relay):
    status, body, _ = await relay.post("/v1/track", {"userId": "u", "event": "E",
                                                     "properties": {"blob": "x" * (40 * 1024)}})
    assert (status, body) == (400, err("invalid_message", "message is larger than 32768 bytes"))
    assert relay.events() == []


async def test_a_message_just_under_32_kib_as_sent_is_kept_after_the_relay_adds_its_fields(relay):
    message = {"userId": "u", "event": "E", "properties": {"blob": ""},
               "context": {"library": {"name": "analytics.js", "version": "2"}}}
    message["properties"]["blob"] = "x" * (32 * 1024 - len(json.dumps(message, separators=(",", ":"))))
    assert len(json.dumps(message, separators=(",", ":"))) == 32 * 1024
    status, body, _ = await relay.post("/v1/track", message)
    assert (status, body) == (200, OK)
    [event] = relay.events()
    assert event["properties"]["blob"] == message["properties"]["blob"]


async def test_a_message_over_32_kib_inside_a_batch_is_dead_lettered_and_the_rest_stored(relay):
    big = track(2, properties={"blob": "x" * (40 * 1024)})
    status, body, _ = await relay.post("/v1/batch", {"batch": [track(1), big, track(3)]})
    assert (status, body) == (200, {
        "success": True, "accepted": 2, "duplicates": 0, "rejected": 1,
        "errors": [{"index": 1, "messageId": "m-2", "reason": "message is larger than 32768 bytes"}],
    })
    assert [e["messageId"] for e in relay.events()] == ["m-1", "m-3"]
    [(destination, reason, message_id, stored)] = relay.dead_letters()
    assert (destination, reason, message_id) == (None, "message is larger than 32768 bytes", "m-2")
    assert json.loads(stored)["properties"]["blob"] == "x" * (40 * 1024)


def padded_batch(size: int) -> bytes:
    """A valid batch whose JSON is exactly ``size`` bytes (messages under 32 KiB each)."""
    messages = [track(i, properties={"p": "y" * 30_000}) for i in range(size // 31_000)]
    body = {"batch": messages, "pad": ""}
    missing = size - len(json.dumps(body).encode())
    assert missing >= 0
    body["pad"] = " " * missing
    data = json.dumps(body).encode()
    assert len(data) == size
    return data


async def test_a_request_of_exactly_500_kib_is_accepted(relay):
    status, body, _ = await relay.post("/v1/batch", data=padded_batch(LIMIT))
    assert status == 200 and body["accepted"] == LIMIT // 31_000
    assert relay.rows("SELECT count(*) FROM events") == [(LIMIT // 31_000,)]


async def test_a_request_over_500_kib_is_refused_with_400(relay):
    status, body, _ = await relay.post("/v1/batch", data=padded_batch(LIMIT + 1))
    assert (status, body) == (400, err("request_too_large", "request body is larger than 512000 bytes"))
    assert relay.events() == []


async def test_a_chunked_request_over_500_kib_is_refused_with_400(relay):
    data = padded_batch(LIMIT + 10_000)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 16 * 1024):
            yield data[start:start + 16 * 1024]

    async with relay.session.post(relay.url + "/v1/batch", data=chunks(),
                                  timeout=aiohttp.ClientTimeout(total=10)) as resp:
        status, body = resp.status, await resp.json()
    assert (status, body) == (400, err("request_too_large", "request body is larger than 512000 bytes"))
    assert relay.events() == []


# --- bodies: encodings and content types ------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "deflate"])
async def test_compressed_batch_bodies_are_accepted(relay, encoding):
    raw = json.dumps({"batch": [track(1), track(2)]}).encode()
    data = zlib.compress(raw) if encoding == "deflate" else gzip.compress(raw)
    status, body, _ = await relay.post("/v1/batch", data=data, headers={"Content-Encoding": encoding})
    assert (status, body) == (200, {"success": True, "accepted": 2, "duplicates": 0, "rejected": 0})
    assert [e["messageId"] for e in relay.events()] == ["m-1", "m-2"]


async def test_a_gzip_single_message_is_accepted(relay):
    data = gzip.compress(json.dumps({"userId": "u", "event": "Zipped"}).encode())
    status, body, _ = await relay.post("/v1/track", data=data, headers={"Content-Encoding": "gzip"})
    assert (status, body) == (200, OK)
    assert [e["event"] for e in relay.events()] == ["Zipped"]


async def test_a_gzip_bomb_is_refused_on_its_decompressed_size(relay):
    raw = b'{"batch": [' + b" " * (LIMIT + 1) + json.dumps(track()).encode() + b"]}"
    data = gzip.compress(raw, compresslevel=9)
    assert len(data) < LIMIT // 100
    status, body, _ = await relay.post("/v1/batch", data=data, headers={"Content-Encoding": "gzip"})
    assert (status, body) == (400, err("request_too_large",
                                       "decompressed request body is larger than 512000 bytes"))
    assert relay.events() == []


async def test_a_gzip_body_that_inflates_to_just_500_kib_is_accepted(relay):
    data = gzip.compress(padded_batch(LIMIT))
    status, body, _ = await relay.post("/v1/batch", data=data, headers={"Content-Encoding": "gzip"})
    assert status == 200 and body["accepted"] == LIMIT // 31_000


async def test_a_body_that_is_not_gzip_is_refused_with_400(relay):
    status, body, _ = await relay.post("/v1/track", {"userId": "u", "event": "E"},
                                       headers={"Content-Encoding": "gzip"})
    assert status == 400
    assert_error_shape(body, "invalid_encoding")
    assert body["message"].startswith("body is not valid gzip")


async def test_a_truncated_gzip_body_is_refused_with_400(relay):
    data = gzip.compress(json.dumps({"batch": [track(i) for i in range(50)]}).encode())
    status, body, _ = await relay.post("/v1/batch", data=data[: len(data) // 2],
                                       headers={"Content-Encoding": "gzip"})
    assert (status, body) == (400, err("invalid_encoding", "gzip body is truncated"))
    assert relay.events() == []


async def test_an_unsupported_content_encoding_is_refused_with_415(relay):
    status, body, _ = await relay.post("/v1/track", {"userId": "u", "event": "E"},
                                       headers={"Content-Encoding": "br"})
    assert (status, body) == (415, err("unsupported_encoding", "Content-Encoding 'br' is not supported"))
    assert relay.events() == []


@pytest.mark.parametrize("content_type", ["text/plain", "text/plain;charset=UTF-8",
                                          "application/x-www-form-urlencoded", "application/octet-stream"])
async def test_the_body_is_parsed_as_json_whatever_the_content_type(relay, content_type):
    status, body, _ = await relay.post("/v1/t", {"userId": "u", "event": "Plain", "writeKey": "k"},
                                       headers={"Content-Type": content_type})
    assert (status, body) == (200, OK)
    assert [e["event"] for e in relay.events()] == ["Plain"]


async def test_invalid_json_is_refused_with_400(relay):
    status, body, _ = await relay.post("/v1/batch", data=b'{"batch": [ {"type": "track",')
    assert status == 400
    assert_error_shape(body, "invalid_json")
    assert body["message"].startswith("request body is not valid JSON")


@pytest.mark.parametrize(("data", "message"), [
    (b"", "request body is empty"),
    (b"  \n", "request body is empty"),
    (b"[1, 2]", "request body must be a JSON object"),
    (b'"track"', "request body must be a JSON object"),
])
async def test_a_body_that_is_not_a_json_object_is_refused_with_400(relay, data, message):
    status, body, _ = await relay.post("/v1/track", data=data)
    assert (status, body) == (400, err("invalid_json", message))


# --- the pixel ------------------------------------------------------------------------------------


def assert_gif_1x1(status: int, data: bytes, headers: Any) -> None:
    assert status == 200
    assert headers["Content-Type"] == "image/gif"
    assert data == PIXEL_GIF
    assert data[:6] == b"GIF89a"
    assert struct.unpack("<HH", data[6:10]) == (1, 1)


async def test_pixel_with_base64_data_answers_a_gif_and_stores_the_event(relay):
    message = {"userId": "u-mail", "event": "Email Opened", "properties": {"campaign": "spring"},
               "writeKey": "mail-key"}
    data = base64.b64encode(json.dumps(message).encode()).decode()
    status, gif, headers = await get(relay, f"/v1/pixel/track?data={quote(data)}")
    assert_gif_1x1(status, gif, headers)
    assert "X-Relay-Error" not in headers
    [event] = relay.events()
    assert (event["type"], event["userId"], event["event"]) == ("track", "u-mail", "Email Opened")
    assert event["properties"] == {"campaign": "spring"}
    assert relay.rows("SELECT write_key FROM events") == [("mail-key",)]


async def test_pixel_with_plain_dotted_query_parameters_builds_nested_fields(relay):
    query = urlencode({"userId": "u9", "event": "Clicked", "properties.link": "buy",
                       "properties.pos.x": "3", "context.campaign.name": "spring", "writeKey": "qk"})
    status, gif, headers = await get(relay, f"/v1/pixel/track?{query}")
    assert_gif_1x1(status, gif, headers)
    [event] = relay.events()
    assert event["properties"] == {"link": "buy", "pos": {"x": "3"}}
    assert event["context"]["campaign"] == {"name": "spring"}
    assert "writeKey" not in event
    assert relay.rows("SELECT write_key, type FROM events") == [("qk", "track")]


async def test_pixel_data_with_url_safe_base64_and_no_padding_is_read(relay):
    message = {"anonymousId": "a?>", "name": "Landing ~~~"}
    data = base64.urlsafe_b64encode(json.dumps(message).encode()).decode().rstrip("=")
    status, gif, headers = await get(relay, f"/v1/pixel/page?data={data}")
    assert_gif_1x1(status, gif, headers)
    assert [(e["type"], e["name"]) for e in relay.events()] == [("page", "Landing ~~~")]


async def test_pixel_data_with_an_unescaped_plus_sign_is_read(relay):
    message = {"userId": "u", "event": "Opened", "properties": {"s": ">>>"}}
    data = base64.b64encode(json.dumps(message).encode()).decode()
    assert "+" in data
    # Written into an e-mail template as is: the query string decodes "+" to a space.
    status, gif, headers = await get(relay, f"/v1/pixel/track?data={data}")
    assert_gif_1x1(status, gif, headers)
    assert "X-Relay-Error" not in headers
    assert [e["properties"] for e in relay.events()] == [message["properties"]]


async def test_an_invalid_pixel_still_answers_a_gif_and_is_dead_lettered(relay):
    status, gif, headers = await get(relay, "/v1/pixel/track?userId=u1&writeKey=k")
    assert_gif_1x1(status, gif, headers)
    assert headers["X-Relay-Error"] == "track needs event"
    assert relay.events() == []
    [(destination, reason, _, body)] = relay.dead_letters()
    assert (destination, reason) == (None, "track needs event")
    assert json.loads(body)["userId"] == "u1"


async def test_pixel_data_that_is_not_base64_json_answers_a_gif_and_is_dead_lettered(relay):
    status, gif, headers = await get(relay, "/v1/pixel/track?data=%%%not-base64")
    assert_gif_1x1(status, gif, headers)
    assert headers["X-Relay-Error"] == "pixel data is not base64-encoded JSON"
    [(destination, reason, _, body)] = relay.dead_letters()
    assert (destination, reason) == (None, "pixel data is not base64-encoded JSON")
    assert json.loads(body) == {"query": {"data": "%%%not-base64"}}  # no scrubber: kept as sent


async def test_a_pixel_of_an_unknown_type_answers_a_gif_and_is_dead_lettered(relay):
    status, gif, headers = await get(relay, "/v1/pixel/sneeze?userId=u")
    assert_gif_1x1(status, gif, headers)
    assert headers["X-Relay-Error"] == "pixel type must be one of alias, group, identify, page, screen, track"
    assert relay.events() == []
    assert len(relay.dead_letters()) == 1


# --- analytics.js settings --------------------------------------------------------------------------


async def test_settings_point_segment_io_at_the_relay_and_its_api_host_takes_events(relay):
    status, raw, headers = await get(relay, "/v1/projects/web-key/settings")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    settings = json.loads(raw)
    segment = settings["integrations"]["Segment.io"]
    assert segment["apiKey"] == "web-key"
    assert segment["apiHost"] == f"127.0.0.1:{relay.relay.port}/v1"
    assert segment["protocol"] == "http"
    for key in ("plan", "middlewareSettings", "remotePlugins", "consentSettings", "edgeFunction"):
        assert key in settings
    # Where analytics.js then sends: {protocol}://{apiHost}/t
    async with relay.session.post(f"{segment['protocol']}://{segment['apiHost']}/t",
                                  data=json.dumps({"userId": "u", "event": "From Browser",
                                                   "writeKey": segment["apiKey"]}),
                                  headers={"Content-Type": "text/plain"}) as resp:
        assert (resp.status, await resp.json()) == (200, OK)
    assert relay.rows("SELECT write_key, type FROM events") == [("web-key", "track")]


# --- CORS ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/t", "/v1/b", "/v1/batch", "/v1/projects/k/settings",
                                  "/v1/pixel/track"])
async def test_cors_preflight_allows_the_headers_sdks_send(relay, path):
    status, _, headers = await request(relay, "OPTIONS", path, headers={
        "Origin": "https://shop.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,authorization,x-retry-count",
    })
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "*"
    allowed_headers = {h.strip().lower() for h in headers["Access-Control-Allow-Headers"].split(",")}
    assert {"content-type", "authorization", "x-retry-count"} <= allowed_headers
    allowed_methods = {m.strip() for m in headers["Access-Control-Allow-Methods"].split(",")}
    assert {"GET", "POST", "OPTIONS"} <= allowed_methods


async def test_cors_answers_carry_the_allow_origin_header(relay):
    status, body, headers = await relay.post("/v1/t", {"userId": "u", "event": "E"},
                                             headers={"Origin": "https://shop.example"})
    assert (status, body) == (200, OK)
    assert headers["Access-Control-Allow-Origin"] == "*"
    status, body, headers = await relay.post("/v1/t", data=b"{", headers={"Origin": "https://shop.example"})
    assert status == 400
    assert headers["Access-Control-Allow-Origin"] == "*"


async def test_cors_origins_restrict_which_origins_are_allowed(start_relay):
    relay = await start_relay(server={"cors_origins": ["https://shop.example"]})
    status, _, headers = await request(relay, "OPTIONS", "/v1/t", headers={
        "Origin": "https://shop.example", "Access-Control-Request-Method": "POST"})
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "https://shop.example"
    assert "Origin" in headers["Vary"]
    assert "Content-Type" in headers["Access-Control-Allow-Headers"]

    status, _, headers = await request(relay, "OPTIONS", "/v1/t", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert status == 204
    assert "Access-Control-Allow-Origin" not in headers
    assert "Access-Control-Allow-Headers" not in headers

    status, body, headers = await relay.post("/v1/t", {"userId": "u", "event": "E"},
                                             headers={"Origin": "https://evil.example"})
    assert (status, body["code"]) == (403, "origin_not_allowed")  # a write from it is refused
    assert "Access-Control-Allow-Origin" not in headers
    status, body, headers = await relay.post("/v1/t", {"userId": "u", "event": "E"},
                                             headers={"Origin": "https://shop.example"})
    assert headers["Access-Control-Allow-Origin"] == "https://shop.example"


# --- 404, 405 and the shape of every error -------------------------------------------------------


async def test_an_unknown_path_answers_404_json(relay):
    status, body, _ = await request(relay, "GET", "/v1/nope")
    assert (status, body) == (404, err("not_found", "Not Found: GET /v1/nope"))
    status, body, _ = await request(relay, "POST", "/v2/track")
    assert (status, body) == (404, err("not_found", "Not Found: POST /v2/track"))


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("GET", "/v1/track", "POST"),
    ("PUT", "/v1/batch", "POST"),
    ("DELETE", "/v1/t", "POST"),
    ("POST", "/v1/pixel/track", "GET"),
    ("POST", "/v1/projects/k/settings", "GET"),
])
async def test_a_wrong_method_answers_405_json_with_allow(relay, method, path, allow):
    status, body, headers = await request(relay, method, path)
    assert (status, body) == (405, err("method_not_allowed", f"Method Not Allowed: {method} {path}"))
    assert allow in headers["Allow"]


async def test_every_error_answer_has_success_false_code_message_and_error(start_relay):
    relay = await start_relay(server={"write_keys": ["good"]})
    auth = {"Authorization": "Basic " + base64.b64encode(b"good:").decode()}
    cases = [
        (await relay.post("/v1/track", data=b"{oops", headers=auth), 400, "invalid_json"),
        (await relay.post("/v1/track", {"userId": "u"}, headers=auth), 400, "invalid_message"),
        (await relay.post("/v1/batch", {"batch": []}, headers=auth), 400, "invalid_batch"),
        (await relay.post("/v1/batch", {"batch": [track()] * 2501}, headers=auth), 400, "batch_too_large"),
        (await relay.post("/v1/batch", data=b"x" * (LIMIT + 1), headers=auth), 400, "request_too_large"),
        (await relay.post("/v1/track", data=b"{}", headers={**auth, "Content-Encoding": "zstd"}), 415,
         "unsupported_encoding"),
        (await relay.post("/v1/track", {"userId": "u", "event": "E"}), 401, "missing_write_key"),
        (await relay.post("/v1/track", {"userId": "u", "event": "E", "writeKey": "bad"}), 401,
         "unknown_write_key"),
        (await request(relay, "GET", "/nowhere"), 404, "not_found"),
        (await request(relay, "GET", "/v1/batch"), 405, "method_not_allowed"),
    ]
    for (status, body, headers), expected_status, code in cases:
        assert status == expected_status, (code, body)
        assert headers["Content-Type"].startswith("application/json")
        assert_error_shape(body, code)
