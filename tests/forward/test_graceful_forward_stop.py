"""SIGTERM while a send is in flight: the send finishes, progress is recorded, the relay
exits 0, and after a clean restart nothing is sent twice."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest

from tests.support.forwarding import dest, duplicates, post_events, post_to, relay_toml
from tests.support.upstream import FakeUpstream, Slow

pytest_plugins = ["tests.support.forwarding_fixtures"]
pytestmark = pytest.mark.usefixtures("leak_check")

EVENTS = 60


class TermDuringDelivery:
    """503 while the test posts; then the first delivering request sends SIGTERM to the relay
    and takes ``answer_after`` seconds to answer 200."""

    def __init__(self, answer_after: float) -> None:
        self.phase = "hold"
        self.answer_after = answer_after
        self.term_at: int | None = None
        self.upstream: FakeUpstream | None = None
        self.relay: Any = None

    def __call__(self, batch: list[dict[str, Any]]) -> Any:
        if self.phase == "hold":
            return 503
        if self.phase == "deliver":
            assert self.upstream is not None
            self.term_at = len(self.upstream.requests)
            self.relay.proc.send_signal(signal.SIGTERM)
            self.phase = "after"
            return Slow(self.answer_after, 200)
        return 200


async def start_and_fill(tmp_path: Any, relay_process: Any, upstreams: Any, answer_after: float,
                         server: str = "") -> tuple[TermDuringDelivery, FakeUpstream, Any, list[str]]:
    script = TermDuringDelivery(answer_after)
    upstream: FakeUpstream = await upstreams(default=script)
    script.upstream = upstream
    proc = relay_process(relay_toml(tmp_path, upstream.url, server=server, max_events=10))
    script.relay = proc
    port = await asyncio.to_thread(proc.start)
    ids = [f"g{i:03d}" for i in range(EVENTS)]
    await post_to(port, ids)
    script.phase = "deliver"
    return script, upstream, proc, ids


async def test_sigterm_lets_the_send_in_flight_finish_and_nothing_is_sent_twice(
        tmp_path, relay_process, upstreams):
    script, upstream, proc, ids = await start_and_fill(tmp_path, relay_process, upstreams, 1.0)
    rc = await asyncio.to_thread(proc.proc.wait, 20)
    assert rc == 0
    assert script.term_at is not None
    in_flight = [e["messageId"] for e in upstream.requests[script.term_at].batch]
    assert in_flight == ids[:10]
    # the answer came during the shutdown and its progress was recorded: only that batch went out
    assert upstream.delivered_ids() == in_flight

    await asyncio.to_thread(proc.start)
    await upstream.wait_for(EVENTS, timeout=20)
    await asyncio.sleep(0.3)  # anything sent twice would arrive now
    assert upstream.delivered_ids() == ids  # in order, none twice
    assert proc.terminate() == 0


async def test_sigterm_is_bounded_by_shutdown_timeout_and_the_cut_send_is_resent(
        tmp_path, relay_process, upstreams):
    """An answer that would take 30 s: the relay stops after shutdown_timeout (1 s) anyway,
    exit 0, and the batch it gave up on is sent again after the restart (a legitimate
    duplicate: the upstream took it but the relay never saw the answer); nothing else twice."""
    script, upstream, proc, ids = await start_and_fill(tmp_path, relay_process, upstreams, 30.0,
                                                       server="shutdown_timeout = 1.0")
    rc = await asyncio.to_thread(proc.proc.wait, 20)
    assert rc == 0
    assert script.term_at is not None
    in_flight = [e["messageId"] for e in upstream.requests[script.term_at].batch]

    await asyncio.to_thread(proc.start)
    await upstream.wait_for(EVENTS + len(in_flight), timeout=20)
    await asyncio.sleep(0.3)
    assert upstream.delivered_ids() == in_flight + ids
    assert set(duplicates(upstream.delivered_ids())) == set(in_flight)
    assert proc.terminate() == 0


class TermDuringSplit(TermDuringDelivery):
    """Batches of more than 5 events are too large (413); the first half-batch that fits
    sends SIGTERM to the relay and is answered 200 after 0.5 s."""

    def __call__(self, batch: list[dict[str, Any]]) -> Any:
        if self.phase != "hold" and len(batch) > 5:
            return 413
        return super().__call__(batch)


async def test_sigterm_between_the_halves_of_a_split_batch_records_the_finished_half(
        tmp_path, relay_process, upstreams):
    """The stop lands after the first half of a split batch was delivered: the relay must
    record that half (a cursor through its last event) so that a clean restart does not send
    it again."""
    script = TermDuringSplit(0.5)
    upstream: FakeUpstream = await upstreams(default=script)
    script.upstream = upstream
    proc = relay_process(relay_toml(tmp_path, upstream.url, max_events=10))
    script.relay = proc
    port = await asyncio.to_thread(proc.start)
    ids = [f"h{i:03d}" for i in range(30)]
    await post_to(port, ids)
    script.phase = "deliver"
    rc = await asyncio.to_thread(proc.proc.wait, 20)
    assert rc == 0
    assert script.term_at is not None
    assert upstream.delivered_ids() == ids[:5]  # the first half, answered during the stop

    await asyncio.to_thread(proc.start)
    await upstream.wait_for(len(ids), timeout=20)
    await asyncio.sleep(0.3)  # anything sent twice would arrive now
    assert upstream.delivered_ids() == ids  # in order, none twice
    assert proc.terminate() == 0


async def test_a_clean_stop_with_concurrency_does_not_resend_batches_finished_after_a_failing_one(
        start_relay, upstreams):
    failing = {"on": True}

    def answer(batch: list[dict[str, Any]]) -> Any:
        return 503 if failing["on"] and batch[0]["messageId"] == "n000" else 200

    upstream: FakeUpstream = await upstreams(default=answer)
    config = [dest("seg", upstream.url, max_events=5, concurrency=2, retry_initial=5.0, retry_max=5.0)]
    relay = await start_relay(destinations=config)
    ids = [f"n{i:03d}" for i in range(10)]
    await post_events(relay, ids)
    await upstream.wait_for(5)  # the second batch is delivered; the first waits to retry
    await relay.relay.stop()
    assert upstream.delivered_ids() == ids[5:]

    failing["on"] = False
    await start_relay(destinations=config)  # the same queue file: a clean restart
    await upstream.wait_for(10)
    await asyncio.sleep(0.3)
    assert sorted(upstream.delivered_ids()) == ids  # ids[5:] are not sent again
