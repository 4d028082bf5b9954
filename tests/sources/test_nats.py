"""The ``nats`` source: central relays consuming a JetStream durable pull consumer."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import pytest

from tests.conftest import make_config
from tests.sinks.test_nats import STREAM, nats_dest
from tests.support.forwarding import FAST, dest, post_events, wait_until
from tests.support.nats_jwt import Operator
from tests.support.nats_server import connect

pytest_plugins = ["tests.support.fixtures", "tests.support.forwarding_fixtures"]
pytestmark = pytest.mark.slow

DURABLE = "central"


def source(url: str, **options: Any) -> dict[str, Any]:
    return {"name": "edge-stream", "type": "nats",
            "options": {"servers": [url], "stream": STREAM, "durable": DURABLE, "fetch_wait": 0.2,
                        "ack_wait": 2.0, **options}}


async def consumer_info(url: str, **options: Any) -> Any:
    nc = await connect(url, **options)
    try:
        return await nc.jetstream(timeout=5).consumer_info(STREAM, DURABLE)
    finally:
        await nc.close()


async def _all_acked(url: str, **options: Any) -> bool:
    from nats.js.errors import NotFoundError

    try:
        info = await consumer_info(url, **options)
    except NotFoundError:  # no relay has made the consumer yet
        return False
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def publish(url: str, messages: list[tuple[bytes, dict[str, str]]], **options: Any) -> None:
    """Publish as an edge relay does, into a stream made the way the nats destination makes it."""
    from nats.js.api import StreamConfig

    nc = await connect(url, **options)
    try:
        js = nc.jetstream(timeout=5)
        await js.add_stream(StreamConfig(name=STREAM, subjects=["segment.>"], duplicate_window=120.0))
        for data, headers in messages:
            await js.publish("segment.wk.track", data, headers=headers)
    finally:
        await nc.close()


def event(message_id: str) -> tuple[bytes, dict[str, str]]:
    body = {"type": "track", "userId": "u1", "event": "Tested", "messageId": message_id,
            "timestamp": "2026-12-01T12:00:00.000Z"}
    return json.dumps(body).encode(), {"Nats-Msg-Id": f"wk:{message_id}", "writeKey": "wk", "type": "track"}


async def test_edge_to_jetstream_to_two_central_relays_delivers_every_event_once_and_both_take_part(
        tmp_path, nats_server, start_relay, upstreams):
    server = nats_server()
    segment = await upstreams()
    edge = await start_relay(make_config(tmp_path / "edge", destinations=[nats_dest(server.url)]))
    centrals = [await start_relay(make_config(
        tmp_path / f"central{i}", sources=[source(server.url, batch=20)],
        destinations=[dest("segment", segment.url, max_events=100)])) for i in range(2)]
    total = 1000
    ids = [f"f{i:04d}" for i in range(total)]
    await post_events(edge, ids, chunk=100)

    await segment.wait_for(total, timeout=60)
    await wait_until(lambda: _all_acked(server.url), timeout=30, what="every message acked")
    delivered = Counter(segment.delivered_ids())
    assert set(delivered) == set(ids) and set(delivered.values()) == {1}  # every event, once
    taken = [c.relay.sources[0].taken for c in centrals]
    assert all(taken) and sum(taken) == total, taken  # both central relays took part
    assert {r.write_key for r in segment.requests} == {"wk"}  # each event under its own write key
    first = segment.delivered[0]
    assert first["originalTimestamp"] == first["timestamp"]  # the event's own time, kept end to end


async def test_a_message_that_cannot_be_admitted_is_dead_lettered_with_the_reason_and_acked(
        tmp_path, nats_server, start_relay):
    server = nats_server()
    await publish(server.url, [(b"not json{", {"Nats-Msg-Id": "bad-1", "writeKey": "wk"}),
                               (json.dumps({"type": "track", "event": "X", "messageId": "no-user"}).encode(),
                                {"Nats-Msg-Id": "bad-2", "writeKey": "wk"}),
                               event("good")])
    central = await start_relay(make_config(tmp_path, sources=[source(server.url)]))
    await wait_until(lambda: _all_acked(server.url), timeout=30, what="every message acked")
    letters = {message_id: reason for _, reason, message_id, _ in central.dead_letters()}
    assert letters == {None: "message must be a JSON object",
                       "no-user": "message needs a userId or an anonymousId"}
    assert [e["messageId"] for e in central.events()] == ["good"]


def central_toml(tmp_path: Any, url: str, upstream: str, user: str) -> str:
    options = {**source(url)["options"], "user": user, "password": "pw"}
    seg = {**FAST, "max_events": 50}
    return "\n".join([
        "[server]", 'host = "127.0.0.1"', "port = 0",
        "[queue]", f"path = {json.dumps(str(tmp_path / 'central.db'))}",
        "[admin]", "enabled = false",
        "[[sources]]", 'name = "edge-stream"', 'type = "nats"',
        "[sources.options]", *(f"{k} = {json.dumps(v)}" for k, v in options.items()),
        "[[destinations]]", 'name = "segment"', 'type = "segment"', f"endpoint = {json.dumps(upstream)}",
        *(f"{k} = {json.dumps(v)}" for k, v in seg.items()), "",
    ])


async def test_central_relay_killed_between_commit_and_ack_gets_the_redelivery_and_dedup_keeps_one(
        tmp_path, nats_server, relay_process, upstreams):
    # the user "stuck" may do everything but ack: its relay stores and forwards, never acks
    server = nats_server(extra="""authorization { users = [
        {user: stuck, password: pw, permissions: {publish: {allow: [">"], deny: ["$JS.ACK.>"]}}},
        {user: central, password: pw}, {user: test, password: pw} ] }""")
    url = f"nats://test:pw@127.0.0.1:{server.port}"
    total = 300
    await publish(url, [event(f"r{i:03d}") for i in range(total)])
    segment = await upstreams()
    stuck = relay_process(central_toml(tmp_path, server.url, segment.url, "stuck"))
    await asyncio.to_thread(stuck.start)
    await segment.wait_for(total, timeout=30)  # committed (and forwarded) by the relay ...
    info = await consumer_info(url)
    assert info.num_ack_pending == total  # ... and not one acked
    stuck.kill()  # SIGKILL between commit and ack

    central = relay_process(central_toml(tmp_path, server.url, segment.url, "central"))
    await asyncio.to_thread(central.start)  # the same queue file, a user that may ack
    await wait_until(lambda: _all_acked(url), timeout=30, what="the redeliveries acked")
    await asyncio.sleep(0.5)  # a second copy would be forwarded by now
    delivered = Counter(segment.delivered_ids())
    assert set(delivered) == {f"r{i:03d}" for i in range(total)} and set(delivered.values()) == {1}
    central.terminate()


def test_source_config_errors_name_the_key(tmp_path):
    from relay import config
    from relay.errors import ConfigError

    def check(table: str) -> str:
        path = tmp_path / "relay.toml"
        path.write_text(f'[[sources]]\nname = "edges"\n{table}\n')
        with pytest.raises(ConfigError) as caught:
            config.load(path, environ={})
        return str(caught.value)

    assert "sources[0] (edges)" in check('type = "nats"\noptions = { stream = "S" }')
    assert "`durable`" in check('type = "nats"\noptions = { stream = "S" }')
    assert "unknown source type 'kafka'" in check('type = "kafka"')
    assert "`options.batch`" in check('type = "nats"\noptions = { stream = "S", durable = "d", batch = 0 }')


async def test_a_source_with_a_creds_file_takes_and_acks_every_message(tmp_path, nats_server, start_relay):
    # decentralised auth: an operator's account with JetStream; the central relay's user may
    # consume (the JetStream API and acks) but not publish to the events' subjects
    operator = Operator()
    account = operator.account("FLEET")
    server = nats_server(extra=operator.server_config())
    edge = str(account.user("edge").write_creds(tmp_path / "edge.creds"))
    central_user = account.user("central", pub={"deny": ["segment.>"]})
    ids = [f"c{i:02d}" for i in range(30)]
    await publish(server.url, [event(i) for i in ids], user_credentials=edge)
    central = await start_relay(make_config(tmp_path, sources=[
        source(server.url, batch=10, creds_file=str(central_user.write_creds(tmp_path / "central.creds")))]))
    await wait_until(lambda: _all_acked(server.url, user_credentials=edge), timeout=30,
                     what="every message acked")
    assert [e["messageId"] for e in central.events()] == ids
    assert central.relay.sources[0].taken == len(ids)
    assert (await consumer_info(server.url, user_credentials=edge)).num_redelivered == 0
