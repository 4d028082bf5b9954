"""The ``nats`` destination against a real nats-server with JetStream (sync_interval: always)."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections import defaultdict
from typing import Any

import nkeys
import pytest

from relay.errors import ConfigError
from tests.conftest import make_config
from tests.support.forwarding import FAST, duplicates, post_events, post_to, wait_until
from tests.support.nats_jwt import Account, Operator, User
from tests.support.nats_server import stream_count, stream_messages

pytest_plugins = ["tests.support.fixtures"]
pytestmark = pytest.mark.slow

STREAM = "SEGMENT"


def nats_dest(url: str, name: str = "js", **options: Any) -> dict[str, Any]:
    fast = {k: v for k, v in FAST.items() if k != "gzip"}
    common = {key: options.pop(key) for key in ("max_events", "concurrency", "write_key",
                                                "max_events_per_second") if key in options}
    return {"name": name, "type": "nats", **fast, "timeout": 2.0, **common,
            "options": {"servers": [url], "stream": STREAM, "create_stream": True, **options}}


def nats_toml(tmp_path: Any, url: str, **destination: Any) -> str:
    """A relay.toml for a relay subprocess with one nats destination."""
    dest = nats_dest(url, **destination)
    options = dest.pop("options")
    return "\n".join([
        "[server]", 'host = "127.0.0.1"', "port = 0",
        "[queue]", f"path = {json.dumps(str(tmp_path / 'queue.db'))}",
        "[admin]", "enabled = false",
        "[[destinations]]", *(f"{k} = {json.dumps(v)}" for k, v in dest.items()),
        "[destinations.options]", *(f"{k} = {json.dumps(v)}" for k, v in options.items()), "",
    ])


def ids_of(messages: list[Any]) -> list[str]:
    return [m.headers["Nats-Msg-Id"] for m in messages]


async def test_http_ingest_to_jetstream_every_event_once_in_order_per_subject(
        tmp_path, nats_server, start_relay):
    server = nats_server()
    relay = await start_relay(make_config(tmp_path, destinations=[nats_dest(server.url, max_events=50)]))
    sent: dict[str, list[str]] = defaultdict(list)
    for key in ("key-a", "key-b"):
        for kind in ("track", "page"):
            ids = [f"{key}-{kind}-{i:03d}" for i in range(150)]
            body = {"batch": [{"type": kind, "userId": "u1", "event": "Order Completed",
                               "name": "Home", "messageId": i, "sentAt": "2026-12-01T12:00:00.000Z"}
                              for i in ids], "writeKey": key}
            status, answer, _ = await relay.post("/v1/batch", body)
            assert status == 200 and answer["accepted"] == 150, answer
            sent[f"segment.{key}.{kind}"] = [f"{key}:{i}" for i in ids]

    await wait_until(lambda: _has(server.url, 1), timeout=30, what="a stream")  # made by the first publish
    await wait_until(lambda: _has(server.url, 600), timeout=30, what="600 messages in the stream")
    messages = await stream_messages(server.url, STREAM)
    assert len(messages) == 600 and not duplicates(ids_of(messages))
    by_subject: dict[str, list[str]] = defaultdict(list)
    for m in messages:
        by_subject[m.subject].append(m.headers["Nats-Msg-Id"])
        key, kind = m.subject.split(".")[1:]
        assert m.headers["writeKey"] == key and m.headers["type"] == kind
        body = json.loads(m.data)
        assert "sentAt" not in body and body["originalTimestamp"] == body["timestamp"]
    assert by_subject == sent  # every subject's events in the order they were posted
    status = (await relay.relay.status()).to_builtins()
    assert status["destinations"][0]["delivered"] == 600


async def _has(url: str, count: int) -> bool:
    try:
        return await stream_count(url, STREAM) >= count
    except Exception:
        return False


async def test_subject_template_with_event_slug_and_one_write_key(tmp_path, nats_server, start_relay):
    server = nats_server()
    dest = nats_dest(server.url, subject="events.{write_key}.{event}", write_key="central",
                     stream_subjects=["events.>"])
    relay = await start_relay(make_config(tmp_path, destinations=[dest]))
    await post_events(relay, ["m1"], write_key="edge-1", event="Order Completed")
    await post_events(relay, ["m2"], write_key="edge-2", event="a.b*c>")
    await wait_until(lambda: _has(server.url, 2), what="2 messages")
    messages = await stream_messages(server.url, STREAM)
    # one write key for every event: the messageId alone is the Nats-Msg-Id
    assert [(m.subject, m.headers["Nats-Msg-Id"], m.headers["writeKey"]) for m in messages] == [
        ("events.central.Order_Completed", "m1", "central"), ("events.central.a_b_c_", "m2", "central")]


async def test_nats_server_killed_mid_drain_and_restarted_every_event_arrives_once(
        tmp_path, nats_server, start_relay):
    server = nats_server()
    total = 3000
    dest = nats_dest(server.url, max_events=100, concurrency=2, max_events_per_second=1500)
    relay = await start_relay(make_config(tmp_path, destinations=[dest]))
    await post_events(relay, [f"e{i:05d}" for i in range(total)], chunk=500)
    await wait_until(lambda: _has(server.url, 300), timeout=30, what="the drain to start")
    server.kill()
    assert await stream_count_after_restart(server) < total  # killed mid-drain
    await wait_until(lambda: _has(server.url, total), timeout=60, what="every event in the stream")
    messages = await stream_messages(server.url, STREAM)
    assert sorted(ids_of(messages)) == [f"wk:e{i:05d}" for i in range(total)]  # every one, once
    await wait_until(lambda: _delivered(relay, total), what="progress past every event")


async def stream_count_after_restart(server: Any) -> int:
    await asyncio.to_thread(server.start)
    return await stream_count(server.url, STREAM)


async def _delivered(relay: Any, count: int) -> bool:
    status = (await relay.relay.status()).to_builtins()
    return bool(status["destinations"][0]["delivered"] == count and status["queue"]["events"] == 0)


async def test_relay_killed_mid_publish_restarted_every_acknowledged_event_once(
        tmp_path, nats_server, relay_process):
    server = nats_server()
    total = 2000
    proc = relay_process(nats_toml(tmp_path, server.url, max_events=50, max_events_per_second=1000))
    port = await asyncio.to_thread(proc.start)
    ids = [f"k{i:05d}" for i in range(total)]
    await post_to(port, ids, chunk=500)  # every event acknowledged
    # SIGKILL while the stream holds events whose progress the relay has not recorded yet:
    # the restarted relay publishes them again, and the duplicate window must drop them.
    # Holding the queue's write lock makes that moment certain: the relay publishes a batch,
    # has its acks, and waits to record them.
    db = tmp_path / "queue.db"
    holder = sqlite3.connect(db, isolation_level=None, timeout=10)
    try:
        holder.execute("BEGIN IMMEDIATE")
        await wait_until(lambda: _ahead(server.url, db, 1), timeout=30, what="acks ahead of the progress")
        proc.kill()
    finally:
        holder.close()
    assert proc.proc is not None and proc.proc.returncode == -9
    in_stream, recorded = await stream_count(server.url, STREAM), _recorded(db)
    assert recorded < in_stream < total  # killed mid-publish, with acknowledged events not recorded
    await asyncio.to_thread(proc.start)
    await wait_until(lambda: _has(server.url, total), timeout=60, what="every event in the stream")
    await asyncio.sleep(0.5)  # anything sent twice would be in by now
    messages = await stream_messages(server.url, STREAM)
    assert sorted(ids_of(messages)) == [f"wk:{i}" for i in ids]  # every one, once
    proc.terminate()


def _recorded(db: Any) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT delivered FROM progress").fetchone()
        return int(row[0]) if row else 0
    finally:
        conn.close()


async def _ahead(url: str, db: Any, by: int) -> bool:
    try:
        return await stream_count(url, STREAM) - _recorded(db) >= by
    except Exception:  # the stream is not made yet, or the queue file is being created
        return False


async def test_wrong_credentials_pause_the_destination_and_keep_its_events(
        tmp_path, nats_server, start_relay, monkeypatch):
    server = nats_server(extra='authorization { users = [ {user: relay, password: "right"} ] }')
    (tmp_path / "password").write_text("wrong\n")
    dest = nats_dest(server.url, user="relay", password_file=str(tmp_path / "password"))
    relay = await start_relay(make_config(tmp_path, destinations=[dest]))
    await post_events(relay, ["a1", "a2"])
    await wait_until(lambda: _state(relay, "paused"), what="the destination paused")
    status = (await relay.relay.status()).to_builtins()["destinations"][0]
    assert status["pending"] == 2 and status["dead_lettered"] == 0
    assert "authorization violation" in status["last_error"].lower()
    assert relay.dead_letters() == []


async def _state(relay: Any, state: str) -> bool:
    return bool((await relay.relay.status()).to_builtins()["destinations"][0]["state"] == state)


@pytest.mark.parametrize("auth", ["token_env", "nkey_seed_file", "nkey_seed_env"])
async def test_credentials_from_env_or_file_connect(tmp_path, nats_server, start_relay, monkeypatch, auth):
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    if auth == "token_env":
        server = nats_server(extra='authorization { token: "s3cret-token" }')
        monkeypatch.setenv("TEST_NATS_TOKEN", "s3cret-token")
        options: dict[str, Any] = {"token_env": "TEST_NATS_TOKEN"}
    else:
        server = nats_server(extra=f"authorization {{ users = [ {{nkey: {public}}} ] }}")
        (tmp_path / "user.nk").write_bytes(seed + b"\n")
        monkeypatch.setenv("TEST_NATS_SEED", seed.decode())
        options = ({"nkey_seed_file": str(tmp_path / "user.nk")} if auth == "nkey_seed_file"
                   else {"nkey_seed_env": "TEST_NATS_SEED"})
    relay = await start_relay(make_config(tmp_path, destinations=[nats_dest(server.url, **options)]))
    await post_events(relay, ["c1"])
    await wait_until(lambda: _delivered(relay, 1), what="the event delivered")


async def test_stream_refusing_oversized_messages_dead_letters_them_with_the_servers_reason(
        tmp_path, nats_server, start_relay):
    server = nats_server()
    dest = nats_dest(server.url, max_msg_size=4096, max_events=10)
    relay = await start_relay(make_config(tmp_path, destinations=[dest]))
    ids = [f"s{i}" for i in range(9)]
    await post_events(relay, ids[:4])
    await post_events(relay, ["big"], properties={"pad": "x" * 8000})
    await post_events(relay, ids[4:])
    await wait_until(lambda: _delivered(relay, 9), what="the small events delivered")
    assert sorted(ids_of(await stream_messages(server.url, STREAM))) == sorted(f"wk:{i}" for i in ids)
    [(destination, reason, message_id, _)] = relay.dead_letters()
    assert (destination, message_id) == ("js", "big")
    assert "message size exceeds maximum allowed" in reason and "JetStream 400" in reason


def test_config_errors_name_the_key(tmp_path):
    def check(**options: Any) -> str:
        path = tmp_path / "relay.toml"
        path.write_text(nats_toml(tmp_path, "nats://127.0.0.1:4222", **options))
        with pytest.raises(ConfigError) as caught:
            from relay import config

            config.load(path, environ={})
        return str(caught.value)

    assert "`subjekt`" in check(subjekt="x")
    assert "options.token_env" in check(token_env="NOT_SET_ANYWHERE")
    assert "options.subject" in check(subject="segment.{user}")
    assert "options.servers[0]" in check(servers=["http://127.0.0.1:4222"])
    assert "options.token" in check(token="a", token_file=str(tmp_path / "t"))
    assert "must not carry credentials" in check(servers=["nats://u:secret@127.0.0.1:4222"])


# --- .creds: decentralised auth (operator, accounts and users as JWTs, trusted by the server) ---

class Trust:
    """A nats-server in operator mode: account EDGE (JetStream on) with the users the tests need."""

    def __init__(self, tmp_path: Any, nats_server: Any) -> None:
        self.operator = Operator()
        self.account = self.operator.account("EDGE")
        self.folder = tmp_path
        # debug: the server logs why it refused a login (the account it looked up, ...)
        self.server = nats_server(extra=self.operator.server_config() + "\ndebug: true")
        self.reader = self.account.user("reader").write_creds(tmp_path / "reader.creds")

    def creds(self, user: User, name: str = "relay.creds", **kwargs: Any) -> Any:
        return user.write_creds(self.folder / name, **kwargs)

    async def messages(self) -> list[Any]:
        return await stream_messages(self.server.url, STREAM, user_credentials=str(self.reader))

    async def has(self, count: int) -> bool:
        try:
            return await stream_count(self.server.url, STREAM, user_credentials=str(self.reader)) >= count
        except Exception:  # no stream yet
            return False


def load_toml(tmp_path: Any, text: str, environ: dict[str, str] | None = None) -> Any:
    from relay import config

    path = tmp_path / "relay.toml"
    path.write_text(text)
    return config.load(path, environ=environ or {})


@pytest.mark.parametrize("given", ["creds_file", "creds_file from ${VAR}", "creds from ${file:...}",
                                   "creds_env", "creds_file with CRLF line ends", "creds inline, indented"])
async def test_a_creds_file_publishes_into_the_stream_and_progress_follows_the_pubacks(
        tmp_path, nats_server, start_relay, monkeypatch, given):
    trust = Trust(tmp_path, nats_server)
    user = trust.account.user("edge-relay")
    path = trust.creds(user)
    environ: dict[str, str] = {}
    if given == "creds_file":
        options: dict[str, Any] = {"creds_file": str(path)}
    elif given == "creds_file from ${VAR}":
        environ["NATS_CREDS_PATH"] = str(path)
        options = {"creds_file": "${NATS_CREDS_PATH}"}
    elif given == "creds from ${file:...}":
        options = {"creds": f"${{file:{path}}}"}
    elif given == "creds_env":
        monkeypatch.setenv("TEST_NATS_CREDS", path.read_text())
        options = {"creds_env": "TEST_NATS_CREDS"}
    elif given == "creds_file with CRLF line ends":  # through an editor or a tool writing \r\n
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
        options = {"creds_file": str(path)}
    else:  # pasted into relay.toml under its key, indented with it
        options = {"creds": "\n".join(f"    {line}" for line in path.read_text().splitlines())}
    loaded = load_toml(tmp_path, nats_toml(tmp_path, trust.server.url, max_events=2, **options), environ)
    relay = await start_relay(loaded)
    ids = [f"j{i}" for i in range(5)]
    await post_events(relay, ids)
    await wait_until(lambda: _delivered(relay, 5), timeout=30, what="5 events delivered")
    messages = await trust.messages()
    assert ids_of(messages) == [f"wk:{i}" for i in ids]  # each once, in order: progress only past a PubAck
    status = (await relay.relay.status()).to_builtins()["destinations"][0]
    assert status["state"] != "paused" and status["dead_lettered"] == 0
    assert user.key.seed not in repr(loaded)  # the seed, wherever it came from, is never shown


@pytest.mark.parametrize("wrong", ["user of an unknown account", "expired user JWT",
                                   "publish to the subject denied"])
async def test_unauthorised_creds_pause_the_destination_and_keep_its_events(
        tmp_path, nats_server, start_relay, wrong):
    trust = Trust(tmp_path, nats_server)
    if wrong == "user of an unknown account":  # signed by the trusted operator, not in the resolver
        rogue = Account("ROGUE", trust.operator.key)
        user = rogue.user("edge-relay")
        said, server_said = "authorization violation", f"Account [{rogue.key.public}] fetch"
    elif wrong == "expired user JWT":
        user = trust.account.user("edge-relay", expires=int(time.time()) - 60)
        said, server_said = "authorization violation", "User JWT no longer valid: &{Issues:[claim is expired"
    else:  # a user of the right account, but not on the relay's subjects (the stream it may make)
        user = trust.account.user("edge-relay", pub={"deny": ["segment.>"]})
        said = "permissions violation"
        server_said = f'jwt:{user.key.public}" - Publish Violation - Subject "segment.wk.track"'
    dest = nats_dest(trust.server.url, creds_file=str(trust.creds(user)))
    relay = await start_relay(make_config(tmp_path, destinations=[dest]))
    await post_events(relay, ["a1", "a2"])
    await wait_until(lambda: _state(relay, "paused"), timeout=30, what="the destination paused")
    status = (await relay.relay.status()).to_builtins()["destinations"][0]
    assert status["pending"] == 2 and status["dead_lettered"] == 0
    assert said in status["last_error"].lower(), status["last_error"]
    assert relay.dead_letters() == []
    assert server_said in trust.server.log.read_text()  # the relay logged in with that user's JWT
    assert not await trust.has(1)  # nothing reached the stream


def test_creds_that_cannot_be_read_are_a_config_error_naming_the_key(tmp_path):
    operator = Operator()
    user, other = (operator.account("EDGE").user(name) for name in ("relay", "other"))
    path = tmp_path / "relay.creds"

    def check(text: str) -> str:
        path.write_text(text)
        with pytest.raises(ConfigError) as caught:
            load_toml(tmp_path, nats_toml(tmp_path, "nats://127.0.0.1:4222", creds_file=str(path)))
        message = str(caught.value)
        assert "options.creds_file" in message and user.key.seed not in message, message
        return message

    assert "no NATS USER JWT" in check(user.key.seed + "\n")  # an NKey seed file given as .creds
    assert "no USER NKEY SEED" in check(
        f"-----BEGIN NATS USER JWT-----\n{user.jwt}\n------END NATS USER JWT------\n")
    # the seed block alone: nats-py would loop forever, on the event loop, looking for the JWT
    assert "no NATS USER JWT" in check(user.creds().split("\n\n", 1)[1])
    assert "not a user JWT" in check(user.creds(jwt=operator.account("X").jwt))
    assert "not the JWT's" in check(user.creds(seed=other.key.seed))  # the seed of another user
    assert "not a user seed" in check(user.creds(seed=operator.key.seed))
