"""A wall clock stepped back must not stall a destination for the size of the step."""

from __future__ import annotations

import time

import pytest

from relay.types import Event
from tests.support.forwarding import dest

pytest_plugins = ["tests.support.forwarding_fixtures"]
pytestmark = pytest.mark.usefixtures("leak_check")


async def test_a_backward_clock_step_does_not_hold_a_partial_batch(start_relay, upstreams):
    upstream = await upstreams()
    relay = await start_relay(destinations=[dest("seg", upstream.url, max_events=100, flush_interval=0.5)])
    # An event received an hour "later" than now: what the queue holds after the clock is
    # stepped back an hour. The partial batch (1 of 100) waits flush_interval, not an hour.
    ahead = time.time() + 3600
    event = Event("stepped", "wk", "track", ahead, {"type": "track", "event": "E", "userId": "u",
                                                     "messageId": "stepped"})
    await relay.relay.queue.append([event])
    await upstream.wait_for(1, timeout=10)
    assert upstream.delivered_ids() == ["stepped"]
    status = (await relay.relay.status()).destinations[0]
    assert status.oldest_pending_age_s >= 0
