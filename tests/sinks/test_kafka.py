"""The ``kafka`` destination against Tansu, a Kafka-protocol broker (memory only).

Tansu refuses the idempotent producer's InitProducerId, so these run with ``idempotent =
false``; one test shows the default then keeps the events queued and says why.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from tests.conftest import make_config
from tests.support.forwarding import FAST, post_events, wait_until
from tests.support.tansu import read_topics

pytest_plugins = ["tests.support.fixtures"]
pytestmark = pytest.mark.slow


def kafka_dest(address: str, **options: Any) -> dict[str, Any]:
    fast = {k: v for k, v in FAST.items() if k != "gzip"}
    common = {key: options.pop(key) for key in ("max_events", "concurrency", "max_events_per_second")
              if key in options}
    return {"name": "kafka", "type": "kafka", **fast, "timeout": 3.0, **common,
            "options": {"bootstrap_servers": [address], "idempotent": False, **options}}


async def _status(relay: Any) -> dict[str, Any]:
    report: dict[str, Any] = (await relay.relay.status()).to_builtins()["destinations"][0]
    return report


@pytest.mark.parametrize("compression", ["none", "gzip", "lz4", "zstd"])
async def test_records_acked_by_all_with_user_keys_headers_and_templated_topics(
        tmp_path, tansu, start_relay, compression):
    dest = kafka_dest(tansu.address, topic="seg.{write_key}.{type}", compression=compression)
    relay = await start_relay(make_config(tmp_path, destinations=[dest]))
    await post_events(relay, [f"t{i}" for i in range(20)], write_key="shop")
    body = {"batch": [{"type": "identify", "anonymousId": f"anon-{i}", "messageId": f"i{i}"}
                      for i in range(10)], "writeKey": "app"}
    assert (await relay.post("/v1/batch", body))[0] == 200
    await wait_until(lambda: _delivered(relay, 30), what="30 records acknowledged")

    records = await read_topics(tansu.address, ["seg.shop.track", "seg.app.identify"], 30)
    assert len(records) == 30
    ids = Counter(dict(r.headers)["messageId"].decode() for r in records)
    assert set(ids) == {f"t{i}" for i in range(20)} | {f"i{i}" for i in range(10)}
    assert set(ids.values()) == {1}
    for record in records:
        headers = {k: v.decode() for k, v in record.headers}
        value = json.loads(record.value)
        assert value["messageId"] == headers["messageId"] and value["type"] == headers["type"]
        assert record.topic == f"seg.{headers['writeKey']}.{headers['type']}"
        # one user's events on one partition: the key is userId, else anonymousId
        assert record.key.decode() == value.get("userId", value.get("anonymousId"))


async def _delivered(relay: Any, count: int) -> bool:
    return bool((await _status(relay))["delivered"] >= count)


async def test_broker_stopped_and_started_mid_drain_loses_nothing(tmp_path, tansu, start_relay):
    """The broker process is stopped (SIGSTOP) and started again (SIGCONT) mid-drain: a
    memory-only broker killed outright forgets what it had stored, which would say nothing
    about the relay. Every event must be in the topic afterwards; resends may duplicate
    (at-least-once: no idempotent producer on this broker)."""
    total = 1500
    dest = kafka_dest(tansu.address, topic="events", max_events=50, max_events_per_second=1000)
    relay = await start_relay(make_config(tmp_path, destinations=[dest]))
    await post_events(relay, [f"e{i:05d}" for i in range(total)], chunk=500)
    await wait_until(lambda: _delivered(relay, 100), timeout=30, what="the drain to start")
    tansu.pause()
    try:
        await wait_until(lambda: _state(relay, "retrying"), timeout=30, what="the destination retrying")
        assert (await _status(relay))["delivered"] < total  # stopped mid-drain
    finally:
        tansu.resume()
    await wait_until(lambda: _delivered(relay, total), timeout=60, what="every event acknowledged")
    records = await read_topics(tansu.address, ["events"], total)
    assert {dict(r.headers)["messageId"].decode() for r in records} == {f"e{i:05d}" for i in range(total)}


async def _state(relay: Any, state: str) -> bool:
    return bool((await _status(relay))["state"] == state)


async def test_a_record_the_broker_cannot_take_is_dead_lettered_the_rest_delivered(
        tmp_path, tansu, start_relay):
    relay = await start_relay(make_config(tmp_path, destinations=[
        kafka_dest(tansu.address, topic="sized", max_request_size=4096, max_events=10)]))
    await post_events(relay, ["s1", "s2"])
    await post_events(relay, ["big"], properties={"pad": "x" * 8000})
    await post_events(relay, ["s3"])
    await wait_until(lambda: _delivered(relay, 3), what="the small events delivered")
    [(destination, reason, message_id, _)] = relay.dead_letters()
    assert (destination, message_id) == ("kafka", "big") and "MessageSizeTooLarge" in reason
    records = await read_topics(tansu.address, ["sized"], 3)
    assert sorted(dict(r.headers)["messageId"].decode() for r in records) == ["s1", "s2", "s3"]


async def test_idempotent_producer_on_a_broker_that_refuses_it_keeps_the_events_queued(
        tmp_path, tansu, start_relay):
    dest = kafka_dest(tansu.address, topic="idem")
    dest["options"]["idempotent"] = True
    relay = await start_relay(make_config(tmp_path, destinations=[dest]))
    await post_events(relay, ["x1"])
    await wait_until(lambda: _state(relay, "retrying"), what="the destination retrying")
    status = await _status(relay)
    assert status["pending"] == 1 and status["delivered"] == 0 and relay.dead_letters() == []
    assert "cannot reach the brokers" in status["last_error"]  # InitProducerId refused at start


@pytest.mark.parametrize(("error", "status"), [
    ("SaslAuthenticationFailed", 401),  # a wrong SASL password pauses, as 401 does
    ("AuthenticationFailedError", 401),
    ("TopicAuthorizationFailedError", 403),
    ("MessageSizeTooLargeError", 400),  # refused for good: dead-lettered
    ("KafkaConnectionError", None),  # anything else: retried
    ("RequestTimedOutError", None),
])
def test_an_aiokafka_error_maps_to_the_answer_the_retry_policy_reads(error: str, status: int | None) -> None:
    import aiokafka.errors

    from relay.sinks.kafka import _answer

    exc = getattr(aiokafka.errors, error)("from the broker")
    answer = _answer(exc, "send")
    assert answer.status == status
    assert error in (answer.body or answer.error or "")
