"""kill -9 during delivery, restart: every acknowledged event arrives; the only duplicates
are events of batches that were in flight when the relay died."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support.forwarding import duplicates, post_to, relay_toml
from tests.support.upstream import FakeUpstream, Slow

pytest_plugins = ["tests.support.forwarding_fixtures"]
pytestmark = pytest.mark.usefixtures("leak_check")

EVENTS = 200


class KillDuringDelivery:
    """Answers 503 while the test posts (so the whole backlog is queued first), then
    delivers slowly; when the ``kill_at``-th delivering request arrives, SIGKILLs the relay
    before answering: that request is in flight, and the upstream keeps its events."""

    def __init__(self, kill_at: int) -> None:
        self.phase = "hold"
        self.kill_at = kill_at
        self.delivering = 0
        self.killed_at: int | None = None  # index in upstream.requests of the fatal request
        self.upstream: FakeUpstream | None = None
        self.relay: Any = None

    def __call__(self, batch: list[dict[str, Any]]) -> Any:
        if self.phase == "hold":
            return 503
        if self.phase == "after":
            return 200
        self.delivering += 1
        if self.delivering == self.kill_at:
            assert self.upstream is not None
            self.killed_at = len(self.upstream.requests)
            self.relay.kill()  # SIGKILL, and reap it
            self.phase = "after"
            return 200
        return Slow(0.1, 200)


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_kill_9_during_delivery_then_restart(tmp_path, relay_process, upstreams, concurrency):
    script = KillDuringDelivery(kill_at=3)
    upstream: FakeUpstream = await upstreams(default=script)
    script.upstream = upstream
    proc = relay_process(relay_toml(tmp_path, upstream.url, max_events=10, concurrency=concurrency))
    script.relay = proc
    port = await asyncio.to_thread(proc.start)
    ids = [f"k{i:03d}" for i in range(EVENTS)]
    await post_to(port, ids)  # every event acknowledged
    script.phase = "deliver"

    for _ in range(1000):  # until the kill (bounded: 1000 x 20 ms)
        if proc.proc is not None and proc.proc.poll() is not None:
            break
        await asyncio.sleep(0.02)
    assert proc.proc is not None and proc.proc.returncode == -9
    assert script.killed_at is not None
    await asyncio.sleep(0.2)  # let the upstream read whatever the dead relay had already sent
    before_restart = len(upstream.requests)
    pre_kill = [r for r in upstream.requests[:before_restart] if r.status == 200]
    assert 0 < len({e["messageId"] for r in pre_kill for e in r.batch}) < EVENTS

    await asyncio.to_thread(proc.start)
    await upstream.wait_for(EVENTS, timeout=20)
    await _until_all_delivered(upstream, ids)

    delivered = upstream.delivered_ids()
    assert set(delivered) == set(ids)  # every acknowledged event arrived
    dup = duplicates(delivered)
    assert all(n == 2 for n in dup.values()), dup  # a resend happens once, at most
    in_flight = [e["messageId"] for e in upstream.requests[script.killed_at].batch]
    batches_with_dups = [r for r in pre_kill if any(e["messageId"] in dup for e in r.batch)]
    assert {e["messageId"] for r in batches_with_dups for e in r.batch} >= set(dup)
    # the batch the relay died sending was never answered to it, so it is sent again
    assert set(in_flight) <= set(dup)
    if concurrency == 1:
        # one batch in flight at a time: exactly that batch is resent, and the restarted relay
        # goes on from it in queue order
        assert set(dup) == set(in_flight)
        start, end = ids.index(in_flight[0]), ids.index(in_flight[-1]) + 1
        assert delivered == ids[:end] + ids[start:]
    else:
        # at most `concurrency` unfinished batches (whose progress was not recorded) are resent
        assert len(batches_with_dups) <= concurrency
    proc.kill()


async def _until_all_delivered(upstream: FakeUpstream, ids: list[str]) -> None:
    async def wait() -> None:
        while not set(ids) <= set(upstream.delivered_ids()):
            await asyncio.sleep(0.02)

    await asyncio.wait_for(wait(), 20)
