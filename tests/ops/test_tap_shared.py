"""The tap encodes what was published once for every viewer that wants all of it: the bytes
are shared, each event's body in them is the body as stored (byte for byte), a viewer whose
buffer is full still counts what it lost, the debugger's stream carries the same frames, and
`relay tap` prints the records as the relay encoded them."""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from typing import Any

import aiohttp
import msgspec
import pytest

from relay.config import Config
from relay.ops import watch
from relay.ops.tap import EventsChunk, Filter, OutcomesChunk, Tap, mask_key
from relay.types import DeadLetter, Event, Stored
from tests.support.watching import wait_for_viewers

WRITE_KEY = "wk-shared-0001"


def event(i: int, write_key: str = WRITE_KEY, at: float = 1.5, **fields: Any) -> Event:
    body = {"type": "track", "event": "Tested", "userId": "u1", "messageId": f"m{i}", **fields}
    return Event(f"m{i}", write_key, body["type"], at, body)


def frames(sse: bytes) -> list[bytes]:
    """The ``data:`` payloads of a stream, checking it is well framed."""
    assert sse.endswith(b"\n\n")
    out = []
    for frame in sse[:-2].split(b"\n\n"):
        assert frame.startswith(b"data: ") and b"\n" not in frame and b"\r" not in frame
        out.append(frame[len(b"data: "):])
    return out


def body_bytes(record: bytes) -> bytes:
    """An event record's body exactly as it is spliced in (the record ends with it and ``}``)."""
    return record[record.index(b',"body":') + len(b',"body":'):-1]


def count_encodings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times events chunks are encoded (each call appends one)."""
    calls: list[int] = []
    encode = EventsChunk._runs

    def counted(self: EventsChunk) -> Any:
        calls.append(len(self))
        return encode(self)

    monkeypatch.setattr(EventsChunk, "_runs", counted)
    return calls


async def test_viewers_that_want_everything_share_one_encoding_of_what_was_stored(
        monkeypatch: pytest.MonkeyPatch) -> None:
    encodings = count_encodings(monkeypatch)
    tap = Tap()
    first, second = tap.open(Filter()), tap.open(Filter())
    events = [event(i, properties={"n": i, "text": "é\u2028 \"q\""}) for i in range(5)]
    tap.stored(events)
    sse_one, sse_two = await first.take_sse(0.01), await second.take_sse(0.01)
    assert sse_one is not None and sse_one is sse_two  # encoded once, the same bytes for both
    assert encodings == [5]
    records = frames(sse_one)
    assert [body_bytes(r) for r in records] == [e.encode() for e in events]
    for record, stored in zip(records, events, strict=True):
        assert json.loads(record) == {"kind": "event", "writeKey": mask_key(WRITE_KEY), "receivedAt": 1.5,
                                      "body": stored.body}
    # ``take`` gives the same records, one line each
    third = tap.open(Filter())
    tap.stored(events)
    assert await third.take(0.01) == records


async def test_events_of_several_requests_in_one_publish_keep_their_own_key_time_and_changes() -> None:
    tap = Tap()
    viewer, lines = tap.open(Filter()), tap.open(Filter())
    events = [event(0), event(1), event(2, at=2.25), event(3, write_key="wk-other-0002", at=2.25),
              event(4, write_key="wk-other-0002", at=2.25)]
    changes = {"m1": {"removed": ["context.ip"], "plugins": ["privacy"]}}
    tap.stored(events, changes)
    got = [json.loads(r) for r in frames(await viewer.take_sse(0.01) or b"")]
    assert [(g["body"]["messageId"], g["writeKey"], g["receivedAt"], g.get("changed")) for g in got] == [
        ("m0", mask_key(WRITE_KEY), 1.5, None),
        ("m1", mask_key(WRITE_KEY), 1.5, changes["m1"]),
        ("m2", mask_key(WRITE_KEY), 2.25, None),
        ("m3", mask_key("wk-other-0002"), 2.25, None),
        ("m4", mask_key("wk-other-0002"), 2.25, None),
    ]
    assert [json.loads(r) for r in await lines.take(0.01) or []] == got


async def test_a_body_kept_as_received_with_line_breaks_still_makes_one_frame_a_record() -> None:
    tap = Tap()
    viewer = tap.open(Filter())
    pretty = event(0)
    pretty.data = json.dumps(pretty.body, indent=2).replace("\n", "\r\n").encode()
    tap.stored([pretty, event(1)])
    got = [json.loads(r)["body"] for r in frames(await viewer.take_sse(0.01) or b"")]
    assert got == [pretty.body, event(1).body]


async def test_a_full_buffer_keeps_what_fits_counts_the_rest_and_costs_the_others_nothing() -> None:
    tap = Tap()
    stuck, reader = tap.open(Filter(), limit=10), tap.open(Filter())
    batches = [[event(b * 7 + i) for i in range(7)] for b in range(3)]
    for batch in batches:
        tap.stored(batch)
    assert (stuck.held, stuck.lost) == (10, 11)
    everything = [e.message_id for batch in batches for e in batch]
    got = [json.loads(r) for r in frames(await reader.take_sse(0.01) or b"")]
    assert [g["body"]["messageId"] for g in got] == everything
    assert reader.lost == 0
    got = [json.loads(r) for r in frames(await stuck.take_sse(0.01) or b"")]
    assert got[0] == {"kind": "lost", "count": 11}
    assert [g["body"]["messageId"] for g in got[1:]] == everything[:10]
    # emptied, the buffer takes again; the count goes on from where it was
    for batch in batches:
        tap.stored(batch)
    records = await stuck.take(0.01) or []
    assert json.loads(records[0]) == {"kind": "lost", "count": 22}
    assert len(records) == 11
    assert await stuck.take_sse(0.0) == b""  # nothing since: a timeout, no lost record again


async def test_outcomes_records_are_the_documented_record_and_follow_a_filtered_viewer() -> None:
    tap = Tap()
    everything, wanted = tap.open(Filter()), tap.open(Filter(event="Wanted"))
    tap.stored([event(1, event="Wanted"), event(2)])
    rows = [Stored(1, 1.0, WRITE_KEY, "m1", "track", b"{}"), Stored(2, 1.0, WRITE_KEY, "m2", "track", b"{}")]
    detail = {"status": 200, "attempts": 1, "at": 3.5, "seconds": 0.25}
    tap.outcome("seg", rows, "delivered", detail)
    tap.outcome("seg", rows[1:], "retrying", {})
    expected = [{"kind": "outcome", "destination": "seg", "outcome": "delivered", "messageId": row.message_id,
                 "type": row.type, **detail} for row in rows]
    expected.append({"kind": "outcome", "destination": "seg", "outcome": "retrying", "messageId": "m2",
                     "type": "track"})
    got = [json.loads(r) for r in await everything.take(0.01) or []]
    assert got[2:] == expected
    assert await everything.take(0.0) == []
    got = [json.loads(r) for r in await wanted.take(0.01) or []]
    assert [(g["kind"], g.get("messageId") or g["body"]["messageId"]) for g in got] == [
        ("event", "m1"), ("outcome", "m1")]
    # each line is the record as msgspec encodes it, a detail that names a record key included
    odd = {"type": "overridden", "status": 500}
    chunk = OutcomesChunk("seg", "dead_lettered", rows, odd)
    assert chunk.lines() == [msgspec.json.encode({"kind": "outcome", "destination": "seg",
                                                  "outcome": "dead_lettered", "messageId": row.message_id,
                                                  "type": row.type, **odd}) for row in rows]
    assert OutcomesChunk("seg", "delivered", rows, detail).lines() == [
        msgspec.json.encode(e) for e in expected[:2]]


async def test_refused_and_dropped_records_are_shared_too() -> None:
    tap = Tap()
    first, second = tap.open(Filter()), tap.open(Filter(outcome="refused"))
    letters = [DeadLetter("no event name", WRITE_KEY, b'{"type":"track","messageId":"r0"}', "r0", 2.0),
               DeadLetter("not JSON", WRITE_KEY, b"{oops", None, 2.0)]
    tap.refused(letters)
    dropped = {"type": "track", "event": "T", "messageId": "d0"}
    tap.dropped(WRITE_KEY, 2.0, [("no-tests", "internal", dropped)])
    one = await first.take_sse(0.01) or b""
    two = await second.take_sse(0.01) or b""
    assert one.startswith(two)  # the refused frames: the same bytes for both
    got = [json.loads(r) for r in frames(one)]
    assert got == [
        {"kind": "refused", "writeKey": mask_key(WRITE_KEY), "receivedAt": 2.0, "messageId": "r0",
         "reason": "no event name", "body": {"type": "track", "messageId": "r0"}},
        {"kind": "refused", "writeKey": mask_key(WRITE_KEY), "receivedAt": 2.0, "messageId": None,
         "reason": "not JSON", "body": "{oops"},
        {"kind": "dropped", "plugin": "no-tests", "reason": "internal", "writeKey": mask_key(WRITE_KEY),
         "receivedAt": 2.0, "messageId": "d0", "type": "track", "name": "T"},
    ]


async def test_the_debugger_stream_carries_each_event_as_the_queue_stored_it(start_relay: Any) -> None:
    relay = await start_relay()
    ids = [str(uuid.uuid4()) for _ in range(30)]
    async with aiohttp.ClientSession() as session, \
            session.get(relay.admin_url + "/debugger/stream?outcomes=0") as one, \
            session.get(relay.admin_url + "/debugger/stream?outcomes=0") as two:
        await wait_for_viewers(session, relay.relay.admin.port, 2, token="")

        async def records(resp: aiohttp.ClientResponse) -> list[bytes]:
            out: list[bytes] = []
            while len(out) < len(ids):
                line = await resp.content.readline()
                if line.startswith(b"data: "):
                    out.append(line[len(b"data: "):].rstrip(b"\n"))
            return out

        body = {"writeKey": WRITE_KEY, "batch": [
            {"type": "track", "event": "Shared", "userId": "u1", "messageId": i,
             "properties": {"text": "Grüße \u2028", "i": n}} for n, i in enumerate(ids)]}
        status, answer, _ = await relay.post("/v1/batch", body)
        assert status == 200, answer
        got_one, got_two = await asyncio.wait_for(asyncio.gather(records(one), records(two)), 10)
    assert got_one == got_two
    stored = [bytes(b) if not isinstance(b, str) else b.encode()
              for (b,) in relay.rows("SELECT body FROM events ORDER BY id")]
    assert [body_bytes(r) for r in got_one] == stored
    assert [json.loads(r)["body"]["messageId"] for r in got_one] == ids


async def test_viewers_with_the_same_room_share_the_part_of_a_publish_that_fits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    encodings = count_encodings(monkeypatch)
    tap = Tap()
    one, two, other = tap.open(Filter(), limit=4), tap.open(Filter(), limit=4), tap.open(Filter(), limit=3)
    everything = tap.open(Filter())
    tap.stored([event(i) for i in range(6)])
    viewers = (one, two, other, everything)
    sse_one, sse_two, sse_other, sse_all = [await v.take_sse(0.01) or b"" for v in viewers]
    assert sorted(encodings) == [3, 4, 6]  # once for each length taken, whatever the number of viewers
    lost_one, *got_one = frames(sse_one)
    lost_two, *got_two = frames(sse_two)
    assert json.loads(lost_one) == json.loads(lost_two) == {"kind": "lost", "count": 2}
    assert got_one == got_two == frames(sse_all)[:4]
    assert frames(sse_other)[1:] == got_one[:3]
    assert (one.held, two.held, other.lost, everything.lost) == (0, 0, 3, 0)


def test_relay_tap_prints_each_record_as_the_relay_encoded_it(
        monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    event = '{"kind":"event","writeKey":"wk-s••01","receivedAt":1.5,"body":{"event":"Grüße"}}'
    sent = [event.encode(),
            b'{"kind":"lost","count":3}',
            b'{"kind":"outcome","destination":"seg","outcome":"delivered","messageId":"m1","type":"track"}']
    asked: list[dict[str, str]] = []

    def lines(base: str, token: str, query: dict[str, str]) -> Any:
        asked.append(query)
        return iter(sent)

    monkeypatch.setattr(watch, "stream_lines", lines)
    args = argparse.Namespace(type="track", event=None, user=None, destination=None, write_key=None,
                              outcome=None, outcomes=True, url="http://127.0.0.1:1")
    assert watch.cmd_tap(args, Config()) == 0
    out, err = capsysbinary.readouterr()
    assert out == sent[0] + b"\n" + sent[2] + b"\n"
    assert b"3 records lost so far" in err
    assert asked == [{"outcomes": "1", "type": "track"}]
