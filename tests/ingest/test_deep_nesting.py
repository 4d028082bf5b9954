"""JSON nested deeper than MAX_NESTING levels (in a body, a pixel's data=, or a dotted pixel
key) is answered 400 (the pixel: its GIF with X-Relay-Error) instead of a RecursionError's
500; a message at exactly the limit is stored."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

import aiohttp
import pytest

from relay.ingest.bodies import MAX_NESTING, too_deep


def nested(levels: int, kind: str = "[") -> object:
    value: object = 1
    for i in range(levels):
        value = [value] if kind == "[" or (kind == "mixed" and i % 2) else {"k": value}
    return value


def track(properties_levels: int) -> dict[str, object]:
    """A track message nesting ``properties_levels + 1`` levels (the message is level 1)."""
    return {"userId": "u", "event": "Deep", "properties": nested(properties_levels - 1, "{")}


def depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


async def get(relay, path: str) -> tuple[int, bytes, dict[str, str]]:
    async with relay.session.get(relay.url + path, timeout=aiohttp.ClientTimeout(total=10)) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


# Built as bytes: json.dumps itself would recurse too deep for the test.
DEEP_980 = b'{"userId": "u", "event": "E", "properties": {"x": ' + b"[" * 980 + b"1" + b"]" * 980 + b"}}"


async def test_a_body_980_levels_deep_is_refused_400_not_500(relay):
    status, answer, _ = await relay.post("/v1/track", data=DEEP_980)
    assert (status, answer["code"]) == (400, "nesting_too_deep")
    assert relay.events() == []


async def test_a_body_of_980_unclosed_brackets_is_refused_400_not_500(relay):
    status, answer, _ = await relay.post("/v1/track", data=b"[" * 980)
    assert status == 400 and answer["success"] is False


async def test_a_batch_with_one_deep_message_is_refused_400(relay):
    batch = {"batch": [{"userId": "u", "event": "Ok"}, {"userId": "u", "event": "E",
                                                       "properties": nested(200, "mixed")}]}
    status, answer, _ = await relay.post("/v1/batch", batch)
    assert (status, answer["code"]) == (400, "nesting_too_deep")
    assert relay.events() == []


async def test_a_message_at_exactly_the_nesting_limit_is_stored_and_one_past_it_refused(relay):
    at_limit = track(MAX_NESTING)
    assert depth(at_limit) == MAX_NESTING
    status, answer, _ = await relay.post("/v1/track", at_limit)
    assert (status, answer) == (200, {"success": True})
    status, answer, _ = await relay.post("/v1/track", track(MAX_NESTING + 1))
    assert (status, answer["code"]) == (400, "nesting_too_deep")
    assert depth(relay.events()[0]["properties"]) == MAX_NESTING - 1


async def test_a_pixel_with_980_levels_in_data_answers_its_gif_with_the_error_header(relay):
    data = base64.b64encode(DEEP_980).decode()
    status, _, headers = await get(relay, f"/v1/pixel/track?data={quote(data)}")
    assert (status, headers["Content-Type"]) == (200, "image/gif")
    assert "nests deeper" in headers["X-Relay-Error"]
    assert relay.events() == []


async def test_a_pixel_with_a_1200_segment_dotted_key_answers_its_gif_with_the_error_header(relay):
    key = ".".join(["p"] * 1200)
    status, _, headers = await get(relay, f"/v1/pixel/track?userId=u&event=E&{key}=1")
    assert (status, headers["Content-Type"]) == (200, "image/gif")
    assert "nests deeper" in headers["X-Relay-Error"]
    assert relay.events() == []


async def test_a_pixel_with_a_dotted_key_at_the_limit_is_stored(relay):
    key = ".".join(["properties"] + ["p"] * (MAX_NESTING - 1))
    status, _, headers = await get(relay, f"/v1/pixel/track?userId=u&event=E&{key}=1")
    assert status == 200 and "X-Relay-Error" not in headers
    assert depth(relay.events()[0]["properties"]) == MAX_NESTING - 1


@pytest.mark.parametrize(("value", "deep"), [
    (nested(MAX_NESTING), False),
    (nested(MAX_NESTING + 1), True),
    (nested(MAX_NESTING, "mixed"), False),
    (nested(MAX_NESTING + 1, "mixed"), True),
    ([[0]] * 500, False),  # many brackets, shallow
    ({"s": "[" * 500 + "{" * 500}, False),  # brackets inside a string are not structure
    ({"s": '\\"' + "[" * 100, "t": ['"]'] * 100}, False),  # escaped quotes and backslashes
    ([{"s": "]" * 70}, nested(MAX_NESTING)], True),  # a string's brackets do not hide depth
    ([nested(10)] * 100 + [nested(MAX_NESTING)], True),
])
def test_the_nesting_check_counts_objects_and_arrays_outside_strings(value, deep):
    assert too_deep(json.dumps(value).encode()) is deep
    assert (depth(value) > MAX_NESTING) is deep
