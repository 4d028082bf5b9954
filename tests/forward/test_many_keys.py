"""Many sources' write keys interleaved in the queue still make full requests to a keyed upstream."""

from __future__ import annotations

import pytest

from tests.support.forwarding import dest, duplicates, post_events

pytest_plugins = ["tests.support.forwarding_fixtures"]
pytestmark = pytest.mark.usefixtures("leak_check")


async def test_many_write_keys_interleaved_are_grouped_by_key_not_sent_one_event_a_request(
        start_relay, upstreams):
    upstream = await upstreams()
    relay = await start_relay(destinations=[dest("seg", upstream.url, max_events=100, flush_interval=0.2)])
    upstream_down = relay.relay.forwarders[0]
    await upstream_down.stop(5)  # queue everything first, then drain it as one backlog
    keys = [f"source-{k}" for k in range(20)]
    for round_ in range(25):  # round robin: no two neighbours share a key
        for key in keys:
            await post_events(relay, [f"{key}-{round_}"], write_key=key)
    await upstream_down.start(upstream_down.cursor)
    await upstream.wait_for(500, timeout=20)
    assert len(upstream.requests) <= 2 * len(keys)  # one event a request would be 500
    for request in upstream.requests:
        assert {e["messageId"].rsplit("-", 1)[0] for e in request.batch} == {request.write_key}
    for key in keys:  # each key's events in order, once
        assert [i for i in upstream.delivered_ids() if i.startswith(f"{key}-")] == \
            [f"{key}-{r}" for r in range(25)]
    assert duplicates(upstream.delivered_ids()) == {}
