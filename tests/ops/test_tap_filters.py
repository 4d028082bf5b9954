"""The tap's filters read the envelope (type, write key) and the body's encoded bytes: a
viewer gets exactly the events its filter matches, and the body dict is never needed (ingest
may keep only the encoded bytes of what it stored)."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from relay.ops.tap import Filter, Tap, fields_of, mask_key
from relay.types import DeadLetter, Event

WRITE_KEY = "wk-filters-0001"


class Untouchable(dict[str, Any]):
    """A body that fails the test when anything reads it."""

    def _no(self, *_: Any, **__: Any) -> Any:
        raise AssertionError("the tap read the body dict")

    __getitem__ = get = __iter__ = __len__ = __contains__ = keys = items = values = _no


def stored(i: int, data: bytes | None = None, write_key: str = WRITE_KEY, **fields: Any) -> Event:
    """An event as ingest stores it: the envelope and the body's bytes, no readable dict."""
    body = {"type": "track", "event": "Tested", "userId": "u1", "messageId": f"m{i}", **fields}
    return Event(f"m{i}", write_key, body["type"], 1.0, Untouchable(),
                 data if data is not None else msgspec.json.encode(body))


async def _ids(tap: Tap, flt: Filter, events: list[Event]) -> list[str]:
    viewer = tap.open(flt)
    try:
        tap.stored(events)
        return [json.loads(r)["body"]["messageId"] for r in await viewer.take(0.01) or []]
    finally:
        tap.close(viewer)


async def test_each_filter_gives_exactly_the_events_it_matches_without_reading_the_body_dict() -> None:
    events = [
        stored(0),
        stored(1, event="Wanted"),
        stored(2, type="page", name="Wanted"),  # a page's name is its event name
        stored(3, type="identify", userId="ada"),
        stored(4, userId=None, anonymousId="ada"),
        stored(5, properties={"note": "Wanted", "who": "ada"}),  # the values, but not as the fields
        stored(6, write_key="wk-other-9999"),
        stored(7, event="Wanted", userId="ada"),
    ]
    tap = Tap()
    assert await _ids(tap, Filter(), events) == [f"m{i}" for i in range(8)]
    assert await _ids(tap, Filter(event="Wanted"), events) == ["m1", "m2", "m7"]
    assert await _ids(tap, Filter(type="track", event="Wanted"), events) == ["m1", "m7"]
    assert await _ids(tap, Filter(type="identify"), events) == ["m3"]
    assert await _ids(tap, Filter(user="ada"), events) == ["m3", "m4", "m7"]
    assert await _ids(tap, Filter(user="ada", event="Wanted"), events) == ["m7"]
    assert await _ids(tap, Filter(write_key="wk-other-9999"), events) == ["m6"]
    assert await _ids(tap, Filter(write_key=mask_key("wk-other-9999")), events) == ["m6"]
    assert await _ids(tap, Filter(event="Nobody sends this"), events) == []
    assert not tap.watched


async def test_filters_match_values_that_are_escaped_in_the_body_or_need_escaping() -> None:
    tap = Tap()
    escaped = stored(0, data=b'{"type":"track","event":"Caf\\u00e9","userId":"u\\"1","messageId":"m0"}')
    quoted = stored(1, event='say "hi"', userId="back\\slash")
    plain = stored(2, event="Café")
    events = [escaped, quoted, plain]
    assert await _ids(tap, Filter(event="Café"), events) == ["m0", "m2"]
    assert await _ids(tap, Filter(user='u"1'), events) == ["m0"]
    assert await _ids(tap, Filter(event='say "hi"'), events) == ["m1"]
    assert await _ids(tap, Filter(user="back\\slash"), events) == ["m1"]


async def test_a_body_that_is_not_an_object_matches_only_filters_that_do_not_look_inside_it() -> None:
    tap = Tap()
    odd = stored(0, data=b'["not","an","object"]')
    by_key, by_user = tap.open(Filter(write_key=WRITE_KEY)), tap.open(Filter(user="not"))
    tap.stored([odd])
    assert [json.loads(r)["body"] for r in await by_key.take(0.01) or []] == [["not", "an", "object"]]
    assert await by_user.take(0.01) == []
    assert fields_of(b"[1]") == fields_of(b"not json") == fields_of(b"{}")


async def test_refused_messages_are_filtered_from_their_bytes() -> None:
    tap = Tap()
    letters = [
        DeadLetter("no event name", WRITE_KEY, b'{"type":"track","userId":"ada","messageId":"r0"}', "r0"),
        DeadLetter("no user", WRITE_KEY, b'{"type":"track","event":"Wanted","messageId":"r1"}', "r1"),
        DeadLetter("not JSON", WRITE_KEY, b"{oops", None),
        DeadLetter("no event name", "wk-other-9999", b'{"type":"track","messageId":"r3"}', "r3"),
    ]

    async def refused(flt: Filter) -> list[str | None]:
        viewer = tap.open(flt)
        try:
            tap.refused(letters)
            return [json.loads(r)["messageId"] for r in await viewer.take(0.01) or []]
        finally:
            tap.close(viewer)

    assert await refused(Filter()) == ["r0", "r1", None, "r3"]
    assert await refused(Filter(type="track")) == ["r0", "r1", "r3"]
    assert await refused(Filter(user="ada")) == ["r0"]
    assert await refused(Filter(type="track", event="Wanted")) == ["r1"]
    assert await refused(Filter(write_key=WRITE_KEY)) == ["r0", "r1", None]
