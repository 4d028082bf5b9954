"""The delivery pace schedule (pure), and the pace observed at a fake upstream."""

import pytest

from relay.forward.pacing import Pacer
from tests.support.forwarding import dest, post_events

pytest_plugins = ["tests.support.forwarding_fixtures"]


@pytest.mark.parametrize(
    ("rate", "calls", "delays"),
    [
        # unpaced: never wait
        (0, [(500, 0.0), (500, 0.0), (500, 0.0)], [0.0, 0.0, 0.0]),
        # 10 events/s: a batch of 5 reserves 0.5 s
        (10, [(5, 0.0), (5, 0.0), (5, 0.0)], [0.0, 0.5, 1.0]),
        # time that passed counts toward the wait
        (10, [(5, 0.0), (5, 0.2), (5, 0.9)], [0.0, 0.3, 0.1]),
        # after an idle gap nothing is owed, and no credit is saved up for a burst
        (10, [(5, 0.0), (5, 10.0), (5, 10.0)], [0.0, 0.0, 0.5]),
        # the wait is proportional to the batch just before
        (100, [(1, 0.0), (50, 0.0), (1, 0.0)], [0.0, 0.01, 0.51]),
        (0.5, [(1, 0.0), (1, 0.0)], [0.0, 2.0]),
    ],
)
def test_pacer_schedule(rate, calls, delays):
    pacer = Pacer(rate)
    got = [pacer.delay(events, now) for events, now in calls]
    assert got == pytest.approx(delays)


def test_pacer_holds_the_average_rate_over_a_long_drain():
    pacer = Pacer(1000)
    now = 0.0
    for _ in range(200):
        now += pacer.delay(100, now)  # the caller sleeps, then sends 100 events
    # 200 batches of 100 at 1000 events/s: the last starts at 19.9 s
    assert now == pytest.approx(19.9)


@pytest.mark.usefixtures("leak_check")
async def test_max_events_per_second_spaces_requests_to_the_upstream(start_relay, upstreams):
    """20 events at 40 events/s in batches of 5: each batch waits for the previous one's share
    (0.125 s), so the requests span at least 3 x 0.125 s. A lower bound only."""
    upstream = await upstreams()
    relay = await start_relay(destinations=[dest("seg", upstream.url, max_events=5,
                                                 max_events_per_second=40)])
    ids = [f"p{i}" for i in range(20)]
    await post_events(relay, ids)
    await upstream.wait_for(20)
    assert upstream.delivered_ids() == ids
    stamps = [r.received_at for r in upstream.requests]
    assert len(stamps) == 4
    assert (stamps[-1] - stamps[0]).total_seconds() >= 3 * 5 / 40 - 0.02
