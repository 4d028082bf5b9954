"""What the forwarder does with each kind of upstream failure, against a real fake upstream.

Unless a test says otherwise, each asserts, once delivery is finished:
- every acknowledged event that was not dead-lettered reached the upstream in a 2xx answer,
  in queue order (``concurrency = 1``), exactly once: ``upstream.delivered_ids()`` equals
  the posted ids minus the dead-lettered ones, as a list;
- the dead-letter table holds exactly the events the upstream rejected, for this
  destination, with the status, the upstream's answer and the attempts;
- the queue is empty and the destination's progress counts add up.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from relay.queue import store
from tests.support.forwarding import (
    dest,
    destination_report,
    duplicates,
    post_events,
    wait_requests,
    wait_until,
)
from tests.support.upstream import FakeUpstream, Slow

pytest_plugins = ["tests.support.forwarding_fixtures"]
pytestmark = pytest.mark.usefixtures("leak_check")


def ids_of(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def dead_letters(relay: Any) -> list[dict[str, Any]]:
    rows = relay.rows("SELECT destination, status, response, attempts, message_id, failed_at, reason"
                      " FROM dead_letters ORDER BY id")
    keys = ("destination", "status", "response", "attempts", "message_id", "failed_at", "reason")
    return [dict(zip(keys, row, strict=True)) for row in rows]


async def finished(relay: Any, delivered: int, dead: int = 0) -> None:
    """Wait until the destination recorded its progress and the queue is empty."""
    await wait_until(lambda: relay.rows("SELECT count(*) FROM events") == [(0,)], 15, "an empty queue")
    assert relay.rows("SELECT delivered, dead_lettered FROM progress WHERE destination = 'seg'") == [
        (delivered, dead)
    ]


def forwarder(relay: Any) -> Any:
    [f] = relay.relay.forwarders
    return f


async def test_500_500_200_retries_the_same_batch_then_delivers_everything_once(start_relay, upstreams):
    upstream: FakeUpstream = await upstreams([500, 500, 200])
    relay = await start_relay(destinations=[dest("seg", upstream.url, max_events=5)])
    ids = ids_of("a", 20)
    await post_events(relay, ids)
    await upstream.wait_for(20)
    await finished(relay, 20)
    assert upstream.delivered_ids() == ids
    assert [r.status for r in upstream.requests] == [500, 500, 200, 200, 200, 200]
    first = [[e["messageId"] for e in r.batch] for r in upstream.requests[:3]]
    assert first == [ids[:5]] * 3  # the same batch, not a re-cut one
    assert dead_letters(relay) == []
    assert forwarder(relay).state == "ok"
    assert relay.rows("SELECT state FROM progress") == [("ok",)]


async def test_a_long_run_of_5xx_keeps_retrying_and_loses_nothing(start_relay, upstreams):
    """Every transient status of the table, many times over: nothing is dead-lettered."""
    script: list[Any] = [500, 502, 503, 504, 408, 599, 507, 503, 500, 502]
    upstream = await upstreams(script)
    relay = await start_relay(destinations=[dest("seg", upstream.url, max_events=3)])
    ids = ids_of("t", 9)
    await post_events(relay, ids)
    await upstream.wait_for(9)
    await finished(relay, 9)
    assert upstream.delivered_ids() == ids
    assert [r.status for r in upstream.requests] == [*script, 200, 200, 200]
    assert dead_letters(relay) == []


async def test_429_with_retry_after_waits_at_least_that_long(start_relay, upstreams):
    """retry_max is 0.2 s: only an honoured Retry-After makes the second request wait 1 s."""
    upstream = await upstreams([(429, {"Retry-After": "1"}), 200])
    relay = await start_relay(destinations=[dest("seg", upstream.url, max_events=10)])
    ids = ids_of("r", 6)
    await post_events(relay, ids)
    await upstream.wait_for(6)
    await finished(relay, 6)
    assert upstream.delivered_ids() == ids
    first, second = upstream.requests
    assert first.status == 429 and second.status == 200
    assert (second.received_at - first.received_at).total_seconds() >= 1.0 - 0.02
    assert dead_letters(relay) == []


async def test_503_with_an_http_date_retry_after_is_not_retried_before_that_date(start_relay, upstreams):
    not_before = (datetime.now(UTC) + timedelta(seconds=2)).replace(microsecond=0)
    header = not_before.strftime("%a, %d %b %Y %H:%M:%S GMT")
    upstream = await upstreams([(503, {"Retry-After": header}), 503, 200])
    relay = await start_relay(destinations=[dest("seg", upstream.url, max_events=10)])
    ids = ids_of("d", 4)
    await post_events(relay, ids)
    await upstream.wait_for(4)
    await finished(relay, 4)
    assert upstream.delivered_ids() == ids
    assert [r.status for r in upstream.requests] == [503, 503, 200]
    assert upstream.requests[1].received_at >= not_before - timedelta(seconds=0.02)


def json_size(batch: list[dict[str, Any]]) -> int:
    return len(json.dumps(batch, separators=(",", ":")))


async def test_413_splits_the_batch_until_it_fits_and_dead_letters_a_lone_oversized_event(
        start_relay, upstreams):
    limit = 2000  # bytes of the batch array; our events encode to ~350 bytes each

    def answer(batch: list[dict[str, Any]]) -> Any:
        if json_size(batch) > limit:
            return 413, {}, json.dumps({"success": False, "message": "batch too large"})
        return 200

    upstream = await upstreams(default=answer)
    relay = await start_relay(destinations=[dest("seg", upstream.url, max_events=16)])
    ids = ids_of("s", 30)
    await post_events(relay, ids[:17])
    await post_events(relay, ["huge"], padding="x" * 3000)
    await post_events(relay, ids[17:])
    await upstream.wait_for(30)
    await finished(relay, 30, dead=1)
    assert upstream.delivered_ids() == ids  # in order, once each, without the oversized one
    statuses = [r.status for r in upstream.requests]
    assert 413 in statuses
    assert all(json_size(r.batch) <= limit for r in upstream.requests if r.status == 200)
    [letter] = dead_letters(relay)
    assert letter["message_id"] == "huge"
    assert (letter["destination"], letter["status"]) == ("seg", 413)
    assert "batch too large" in letter["response"]
    assert letter["attempts"] == 1


async def test_400_naming_messages_dead_letters_only_those(start_relay, upstreams):
    bad = {"b3", "b11", "b12", "b29"}

    def answer(batch: list[dict[str, Any]]) -> Any:
        named = [e["messageId"] for e in batch if e["messageId"] in bad]
        if named:
            return 400, {}, json.dumps({"success": False, "message": "invalid events", "messageIds": named})
        return 200

    upstream = await upstreams(default=answer)
    relay = await start_relay(destinations=[dest("seg", upstream.url, max_events=8)])
    ids = ids_of("b", 30)
    await post_events(relay, ids)
    await upstream.wait_for(len(ids) - len(bad))
    await finished(relay, len(ids) - len(bad), dead=len(bad))
    assert upstream.delivered_ids() == [i for i in ids if i not in bad]
    letters = dead_letters(relay)
    assert [d["message_id"] for d in letters] == [i for i in ids if i in bad]  # queue order
    for letter in letters:
        assert letter["destination"] == "seg"
        assert letter["status"] == 400
        assert json.loads(letter["response"]) == {
            "success": False, "message": "invalid events", "messageIds": [letter["message_id"]]}
        assert letter["attempts"] == 1
        assert letter["failed_at"] > 0
        assert "seg" in letter["reason"] and "400" in letter["reason"]
    # each rejected event's stored body is the event itself, for a replay
    bodies = [json.loads(b) for (b,) in relay.rows("SELECT body FROM dead_letters ORDER BY id")]
    assert [b["messageId"] for b in bodies] == [d["message_id"] for d in letters]


async def test_attempts_count_failed_tries_but_not_429(start_relay, upstreams):
    upstream = await upstreams([500, 429, 503, 429, (400, {}, "no such event type")])
    relay = await start_relay(destinations=[dest("seg", upstream.url)])
    await post_events(relay, ["only"])
    await wait_until(lambda: bool(dead_letters(relay)), 10, "a dead letter")
    await finished(relay, 0, dead=1)
    [letter] = dead_letters(relay)
    assert (letter["message_id"], letter["status"], letter["response"]) == ("only", 400, "no such event type")
    assert letter["attempts"] == 3  # 500, 503, 400; the two 429s do not count
    assert upstream.delivered_ids() == []


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_key_pauses_keeps_every_event_and_resumes(start_relay, upstreams, status):
    answer = {"status": status}
    upstream = await upstreams(default=lambda batch: answer["status"])
    relay = await start_relay(destinations=[dest("seg", upstream.url, max_events=4)])
    ids = ids_of("k", 10)
    await post_events(relay, ids)
    await wait_requests(upstream, 3)  # it probes again and again while paused
    await wait_until(lambda: forwarder(relay).state == "paused", 5, "state paused")
    assert relay.rows("SELECT state FROM progress WHERE destination = 'seg'") == [("paused",)]
    report = await destination_report(relay, "seg")
    assert report["state"] == "paused" and str(status) in report["last_error"]
    assert report["pending"] == 10 and report["dead_lettered"] == 0
    assert relay.rows("SELECT count(*) FROM events") == [(10,)]
    assert dead_letters(relay) == []
    # every probe is the first batch again: the destination does not skip ahead
    assert all([e["messageId"] for e in r.batch] == ids[:4] for r in upstream.requests)

    answer["status"] = 200
    await upstream.wait_for(10)
    await finished(relay, 10)
    assert upstream.delivered_ids() == ids
    assert dead_letters(relay) == []
    assert forwarder(relay).state == "ok"


async def test_an_answer_slower_than_timeout_is_resent_and_only_that_batch_is_duplicated(
        start_relay, upstreams):
    """The upstream takes the first batch but answers after 1.5 s; the relay gives up after
    0.5 s and sends it again. That resend is the one legitimate duplicate: the delivered ids
    are exactly batch 1, batch 1 again, then the rest, in order."""
    upstream = await upstreams([Slow(1.5, 200)])
    relay = await start_relay(destinations=[dest("seg", upstream.url, max_events=5, timeout=0.5)])
    ids = ids_of("w", 15)
    await post_events(relay, ids)
    await upstream.wait_for(20)
    await finished(relay, 15)
    assert upstream.delivered_ids() == ids[:5] + ids
    assert set(duplicates(upstream.delivered_ids())) == set(ids[:5])
    assert dead_letters(relay) == []


async def test_a_slow_answer_within_timeout_is_not_resent(start_relay, upstreams):
    upstream = await upstreams([Slow(0.6, 200), Slow(0.3, 200)])
    relay = await start_relay(destinations=[dest("seg", upstream.url, max_events=5, timeout=3.0)])
    ids = ids_of("v", 12)
    await post_events(relay, ids)
    await upstream.wait_for(12)
    await finished(relay, 12)
    assert upstream.delivered_ids() == ids
    assert len(upstream.requests) == 3


async def test_connection_refused_then_up_delivers_everything_once(start_relay, upstreams):
    upstream = await upstreams()
    port = upstream.port
    await upstream.stop()  # nothing listens on the endpoint now
    relay = await start_relay(destinations=[dest("seg", upstream.url, max_events=6)])
    ids = ids_of("c", 20)
    await post_events(relay, ids)
    await wait_until(lambda: forwarder(relay).state == "retrying", 5, "state retrying")
    assert forwarder(relay).last_error  # says why, e.g. "ClientConnectorError: ..."
    assert relay.rows("SELECT count(*) FROM events") == [(20,)]
    assert relay.rows("SELECT state FROM progress") == [("retrying",)]

    await upstream.start(port=port)
    await upstream.wait_for(20, timeout=10)
    await finished(relay, 20)
    assert upstream.delivered_ids() == ids
    assert dead_letters(relay) == []
    assert forwarder(relay).state == "ok"


async def test_an_upstream_that_drops_connections_then_recovers(start_relay, upstreams):
    """Stopped and restarted twice while events keep arriving: nothing lost, no duplicates
    (every request the upstream received it answered)."""
    upstream = await upstreams()
    port = upstream.port
    relay = await start_relay(destinations=[dest("seg", upstream.url, max_events=5)])
    ids = ids_of("x", 30)
    await post_events(relay, ids[:10])
    await upstream.wait_for(10)
    for part in (ids[10:20], ids[20:]):
        await upstream.stop()
        await post_events(relay, part)
        await wait_until(lambda: forwarder(relay).state == "retrying", 5, "state retrying")
        await upstream.start(port=port)
    await upstream.wait_for(30, timeout=10)
    await finished(relay, 30)
    assert upstream.delivered_ids() == ids


class LongestWait(random.Random):
    """Full jitter always drawing its ceiling: every backoff is as long as it can be."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def test_delivery_resumes_soon_after_an_outage_without_waiting_out_the_backoff(start_relay, upstreams):
    """The backoff after the refused connection is 20 s; the relay probes the endpoint while it
    waits, so delivery resumes well within the 8 s this test allows once the upstream is up."""
    upstream = await upstreams()
    port = upstream.port
    await upstream.stop()
    relay = await start_relay(destinations=[dest("seg", upstream.url, retry_initial=20.0, retry_max=30.0)])
    forwarder(relay)._rand = LongestWait()
    ids = ids_of("o", 5)
    await post_events(relay, ids)
    await wait_until(lambda: forwarder(relay).counters.retries >= 1, 5, "a failed attempt")
    await upstream.start(port=port)
    await upstream.wait_for(5, timeout=8)
    await finished(relay, 5)
    assert upstream.delivered_ids() == ids


async def test_max_age_moves_events_that_cannot_be_delivered_in_time_to_dead_letters(start_relay, upstreams):
    upstream = await upstreams(default=(503, {}, "down for maintenance"))
    relay = await start_relay(destinations=[dest("seg", upstream.url, max_events=4, max_age=0.5)])
    ids = ids_of("m", 6)
    await post_events(relay, ids)
    await finished(relay, 0, dead=6)
    letters = dead_letters(relay)
    assert [d["message_id"] for d in letters] == ids
    for letter in letters:
        assert letter["destination"] == "seg" and letter["status"] == 503
        assert "max_age" in letter["reason"] and letter["response"] == "down for maintenance"
        assert letter["attempts"] >= 1
    assert upstream.delivered_ids() == []


async def test_a_batch_rejected_whole_dead_letters_each_event_once(start_relay, upstreams):
    upstream = await upstreams(default=(400, {}, "schema mismatch"))
    relay = await start_relay(destinations=[dest("seg", upstream.url, max_events=5)])
    ids = ids_of("z", 5)
    await post_events(relay, ids)
    await finished(relay, 0, dead=5)
    assert [d["message_id"] for d in dead_letters(relay)] == ids
    assert len(upstream.requests) == 2 * 5 - 1  # the bisection: 5, 2, 3, 1, 1, 1, 2, 1, 1
    assert upstream.delivered_ids() == []


async def test_with_concurrency_every_event_arrives_once_despite_transient_failures(start_relay, upstreams):
    """concurrency = 4 gives up strict order, not the guarantee: each event is delivered
    exactly once (every request the upstream failed was not delivered), none is lost."""
    count = {"n": 0}

    def flaky(batch: list[dict[str, Any]]) -> Any:
        count["n"] += 1
        return 503 if count["n"] % 3 == 0 else Slow(0.02, 200)

    upstream = await upstreams(default=flaky)
    relay = await start_relay(destinations=[dest("seg", upstream.url, max_events=5, concurrency=4)])
    ids = ids_of("q", 120)
    await post_events(relay, ids)
    await upstream.wait_for(120)
    await finished(relay, 120)
    assert sorted(upstream.delivered_ids()) == sorted(ids)
    assert duplicates(upstream.delivered_ids()) == {}
    assert max(len(r.batch) for r in upstream.requests) <= 5


async def test_an_upstream_that_accepts_but_never_answers_is_retried_with_backoff(start_relay, upstreams):
    """Timeouts are transient failures like any other: the next attempt waits the backoff
    (here exactly 2 s). The reachability probe must not cut that wait short just because the
    endpoint accepts connections; it is there to notice an endpoint that *comes back*."""
    upstream = await upstreams([Slow(30.0, 200), Slow(30.0, 200)])
    relay = await start_relay(destinations=[dest("seg", upstream.url, timeout=0.3, retry_initial=2.0,
                                                 retry_max=2.0)])
    forwarder(relay)._rand = LongestWait()
    ids = ids_of("h", 3)
    await post_events(relay, ids)
    await upstream.wait_for(3 * 3, timeout=15)  # two timed-out attempts (recorded as taken), then 200
    first, second, third = upstream.requests[:3]
    assert (second.received_at - first.received_at).total_seconds() >= 2.0
    assert (third.received_at - second.received_at).total_seconds() >= 2.0
    await finished(relay, 3)


async def test_an_event_the_destination_cannot_encode_is_dead_lettered_once_and_the_rest_flow(
        start_relay, upstreams):
    """A damaged row in the queue (its body is not a JSON object) cannot be prepared: it goes to
    the dead letters (attempts 0, nothing sent), once, and does not hold back the events around it."""
    upstream = await upstreams()
    relay = await start_relay(destinations=[dest("seg", upstream.url, max_events=3)])
    await post_events(relay, ["u0", "u1"])
    conn = sqlite3.connect(relay.db_path)
    try:
        with conn:
            store.insert_events(conn, [(time.time(), "wk", "damaged", "track", b"[not an object")])
    finally:
        conn.close()
    await post_events(relay, ["u2", "u3", "u4", "u5"])
    await upstream.wait_for(6)
    await finished(relay, 6, dead=1)
    assert upstream.delivered_ids() == ["u0", "u1", "u2", "u3", "u4", "u5"]
    [letter] = dead_letters(relay)
    assert (letter["message_id"], letter["destination"], letter["attempts"]) == ("damaged", "seg", 0)
    assert "cannot prepare" in letter["reason"]


async def test_an_upstream_that_echoes_the_write_key_has_it_masked_in_last_error_and_status(
        start_relay, upstreams):
    key = "source-key-echoed-123"
    answer = f'{{"error": "write key {key} is not valid"}}'
    upstream = await upstreams(default=lambda batch: (401, {}, answer))
    relay = await start_relay(destinations=[dest("seg", upstream.url, max_events=4)])
    await post_events(relay, ["e1", "e2"], write_key=key)
    await wait_until(lambda: forwarder(relay).state == "paused", 10, "state paused")
    report = await destination_report(relay, "seg")
    assert "is not valid" in report["last_error"] and key not in report["last_error"]
    assert key not in (forwarder(relay).last_error or "")
    async with relay.session.get(f"{relay.admin_url}/status") as resp:  # the admin listener's /status
        text = await resp.text()
    assert resp.status == 200 and "is not valid" in text and key not in text
