"""One destination down must not hold back another; the down one keeps its events."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support.forwarding import closed_port, dest, destination_report, post_events, wait_until
from tests.support.upstream import FakeUpstream, Slow

pytest_plugins = ["tests.support.forwarding_fixtures"]
pytestmark = pytest.mark.usefixtures("leak_check")


async def down_endpoint(mode: str, upstreams: Any) -> tuple[str, FakeUpstream | None]:
    if mode == "refused":
        return f"http://127.0.0.1:{closed_port()}", None
    answers = {"500": 500, "401": 401, "hanging": Slow(30.0, 200)}
    upstream: FakeUpstream = await upstreams(default=answers[mode])
    return upstream.url, upstream


@pytest.mark.parametrize("mode", ["refused", "500", "401", "hanging"])
async def test_the_other_destination_gets_everything_while_one_is_down(start_relay, upstreams, mode):
    good: FakeUpstream = await upstreams()
    bad_url, bad = await down_endpoint(mode, upstreams)
    relay = await start_relay(destinations=[
        dest("down", bad_url, max_events=5, timeout=0.5),
        dest("up", good.url, max_events=5),
    ])
    ids: list[str] = []
    for wave in range(3):  # events keep arriving; the healthy destination keeps up with each wave
        part = [f"e{wave}-{i}" for i in range(12)]
        await post_events(relay, part)
        ids += part
        await good.wait_for(len(ids), timeout=5)
    await wait_until(lambda: relay.rows("SELECT delivered FROM progress WHERE destination = 'up'")
                     == [(len(ids),)], 5, "the healthy destination's progress")
    assert good.delivered_ids() == ids

    down = next(f for f in relay.relay.forwarders if f.name == "down")
    expected = "paused" if mode == "401" else "retrying"
    await wait_until(lambda: down.state == expected, 5, f"state {expected}")  # a hanging one needs 0.5 s
    report = await destination_report(relay, "down")
    assert report["state"] == expected
    assert report["pending"] == len(ids)
    assert report["delivered"] == 0 and report["dead_lettered"] == 0
    assert relay.rows("SELECT count(*) FROM events") == [(len(ids),)]  # kept for the down one
    assert relay.rows("SELECT count(*) FROM dead_letters") == [(0,)]
    if bad is not None:  # the down upstream only ever saw the first batch, again and again
        assert bad.requests
        assert all([e["messageId"] for e in r.batch] == ids[:5] for r in bad.requests)


async def test_when_the_down_destination_comes_back_it_catches_up_and_the_queue_empties(
        start_relay, upstreams):
    good: FakeUpstream = await upstreams()
    late: FakeUpstream = await upstreams()
    port = late.port
    await late.stop()
    relay = await start_relay(destinations=[
        dest("late", late.url, max_events=7),
        dest("up", good.url, max_events=7),
    ])
    ids = [f"c{i}" for i in range(40)]
    await post_events(relay, ids)
    await good.wait_for(40, timeout=5)
    assert relay.rows("SELECT count(*) FROM events") == [(40,)]

    await late.start(port=port)
    await late.wait_for(40, timeout=10)
    assert late.delivered_ids() == ids
    assert good.delivered_ids() == ids
    await wait_until(lambda: relay.rows("SELECT count(*) FROM events") == [(0,)], 10, "an empty queue")
    assert sorted(relay.rows("SELECT destination, delivered, dead_lettered FROM progress")) == [
        ("late", 40, 0), ("up", 40, 0)]


async def test_a_dead_letter_replayed_for_one_destination_leaves_the_queue_once_it_is_delivered(
        start_relay, upstreams):
    """The other destination never reads the replayed event; its cursor still passes it, so
    the queue empties without waiting for later traffic."""
    from relay.queue import deadletters
    from relay.queue.files import QueueFile

    picky: FakeUpstream = await upstreams(
        default=lambda batch: (400, {}, '{"rejected": ["r3"]}') if any(
            e["messageId"] == "r3" for e in batch) else 200)
    easy: FakeUpstream = await upstreams()
    relay = await start_relay(destinations=[dest("picky", picky.url), dest("easy", easy.url)])
    ids = [f"r{i}" for i in range(6)]
    await post_events(relay, ids)
    await easy.wait_for(6, timeout=5)
    await wait_until(lambda: relay.rows("SELECT count(*) FROM dead_letters") == [(1,)], 5, "r3 refused")
    await wait_until(lambda: relay.rows("SELECT count(*) FROM events") == [(0,)], 5, "the queue empties")
    picky.default = 200  # fixed upstream: replay the refused event for picky only
    def replay() -> deadletters.ReplayResult:  # as `relay dlq replay` does, beside the running relay
        with QueueFile.open(relay.db_path, write=True) as queue:
            return queue.replay(deadletters.DeadLetterFilter(destination="picky"), admit=lambda m, a: None)

    result = await asyncio.to_thread(replay)
    assert result.queued == 1
    await wait_until(lambda: "r3" in picky.delivered_ids()[-1:], 5, "r3 delivered to picky")
    await wait_until(lambda: relay.rows("SELECT count(*) FROM events") == [(0,)], 5,
                     "the replayed event deleted")
    assert easy.delivered_ids() == ids  # easy never saw the replay
    cursors = dict(relay.rows("SELECT destination, cursor FROM progress"))
    assert cursors["easy"] == cursors["picky"]
