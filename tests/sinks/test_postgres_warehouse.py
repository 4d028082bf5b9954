"""The ``postgres`` destination against a real PostgreSQL server started by the tests:
segment-analytics-python -> relay -> COPY into staging tables and a merge; the event tables,
``identifies``, ``users`` with the latest traits, a column added mid-run, ``discards``; and a
batch delivered twice gives one row each."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import pytest

from relay.config import DestinationConfig
from relay.sinks import make_sink
from relay.types import Stored
from tests.sinks.postgres_server import PASSWORD, PostgresServer
from tests.sinks.postgres_server import postgres_ca as postgres_ca  # fixtures
from tests.sinks.postgres_server import postgres_tls as postgres_tls
from tests.sinks.warehouse import (
    WAVE_1,
    WAVE_2,
    destination,
    relay_sql,
    send_with_sdk,
    toml_for,
    wait_delivered,
)
from tests.support.forwarding import wait_until

pytestmark = pytest.mark.slow


def pg_destination(server: PostgresServer, database: str, tmp_path: Any, **extra: Any) -> dict[str, Any]:
    """A ``postgres`` destination on ``server`` (by 127.0.0.1, no TLS, unless ``extra`` says)."""
    secret = tmp_path / "pg-password"
    secret.write_text(PASSWORD + "\n")
    options = {"host": "127.0.0.1", "port": server.port, "database": database, "user": "postgres",
               "password_file": str(secret), "ssl": "disable", **extra}
    return destination("postgres", **options)


async def rows(server: PostgresServer, database: str, statement: str) -> list[tuple[Any, ...]]:
    conn = await server.connect(database)
    try:
        return [tuple(r.values()) for r in await conn.fetch(statement)]
    finally:
        await conn.close()


async def column_types(server: PostgresServer, database: str, table: str) -> dict[str, str]:
    found = await rows(server, database, "SELECT column_name, data_type FROM information_schema.columns"
                       f" WHERE table_schema = 'web_prod' AND table_name = '{table}'"
                       " ORDER BY ordinal_position")
    return dict(found)  # type: ignore[arg-type]


async def test_sdk_events_are_copied_and_merged_into_segments_schema(start_relay, postgres, tmp_path):
    database = await postgres.fresh_database()
    dest = pg_destination(postgres, database, tmp_path, max_events=50)
    relay = await start_relay(destinations=[dest])
    await asyncio.to_thread(send_with_sdk, relay.url, WAVE_1)
    await wait_delivered(relay, 3)
    await asyncio.to_thread(send_with_sdk, relay.url, WAVE_2)
    await wait_delivered(relay, 7)

    tables = await rows(postgres, database, "SELECT table_name FROM information_schema.tables"
                                            " WHERE table_schema = 'web_prod' ORDER BY 1")
    assert [t for (t,) in tables] == ["added_to_cart", "discards", "identifies", "order_completed",
                                      "signed_up", "tracks", "users"]
    assert await rows(postgres, database, "SELECT id, event, event_text, user_id, context_ip,"
                                          " context_library_name FROM web_prod.tracks ORDER BY id") == [
        ("m-1", "order_completed", "Order Completed", "u-1", "203.0.113.9", "analytics-python"),
        ("m-2", "signed_up", "Signed Up", "u-2", "203.0.113.9", "analytics-python"),
        ("m-4", "order_completed", "Order Completed", "u-1", "203.0.113.9", "analytics-python"),
        ("m-5", "order_completed", "Order Completed", "u-1", "203.0.113.9", "analytics-python"),
        ("m-7", "added_to_cart", "Added to Cart", "u-2", "203.0.113.9", "analytics-python"),
    ]
    assert await rows(postgres, database, "SELECT id, user_id, revenue, products, shipping_method,"
                                          " shipping_cost, coupon FROM web_prod.order_completed"
                                          " ORDER BY id") == [
        ("m-1", "u-1", 42.5, '[{"sku":"sku-1","quantity":2}]', "ground", 5, None),
        ("m-4", "u-1", 42.5, '[{"sku":"sku-1","quantity":2}]', "ground", 5, "BF25"),
        ("m-5", "u-1", None, '[{"sku":"sku-1","quantity":2}]', "ground", 5, None),
    ]
    types = await column_types(postgres, database, "order_completed")
    assert (types["revenue"], types["shipping_cost"], types["received_at"], list(types)[-1]) == (
        "double precision", "bigint", "timestamp with time zone", "coupon")
    assert "coupon" not in await column_types(postgres, database, "tracks")
    assert (await column_types(postgres, database, "signed_up"))["trial"] == "boolean"
    assert await rows(postgres, database, "SELECT id, email, first_name, logins, address_city, plan"
                                          " FROM web_prod.users") == [
        ("u-1", "ada@example.com", "Ada", 4, "Berlin", "pro")]
    assert await rows(postgres, database, "SELECT count(*) FROM web_prod.identifies") == [(2,)]
    assert await rows(postgres, database, "SELECT table_name, column_name, column_value, row_id, reason"
                                          " FROM web_prod.discards") == [
        ("order_completed", "revenue", "lots", "m-5", "incompatible schema conversion from varchar to float")]
    # relay sql runs read-only queries against PostgreSQL too
    config = toml_for(tmp_path, [dest])
    count = await asyncio.to_thread(relay_sql, config, "SELECT count(*) AS n FROM web_prod.tracks")
    assert count == [{"n": 5}]
    assert relay.dead_letters() == []


def stored(i: int, message: dict[str, Any]) -> Stored:
    return Stored(i, time.time(), "sdk-key", message["messageId"], message["type"],
                  msgspec.json.encode(message))


async def test_a_batch_delivered_twice_gives_one_row_each(postgres, tmp_path):
    database = await postgres.fresh_database()
    config = msgspec.convert(pg_destination(postgres, database, tmp_path), DestinationConfig)
    sink = make_sink(config)
    messages = [
        {"type": "track", "event": "Order Completed", "messageId": f"d-{i}", "userId": f"u-{i % 2}",
         "properties": {"revenue": i}, "receivedAt": "2026-12-01T10:00:00.000Z"} for i in range(6)
    ] + [{"type": "identify", "messageId": "d-id", "userId": "u-0", "traits": {"plan": "pro"},
          "receivedAt": "2026-12-01T10:00:00.000Z"}]
    batch = [sink.prepare(stored(i, m)) for i, m in enumerate(messages)]
    await sink.start()
    try:
        first = await sink.send(batch)
        again = await sink.send(batch)  # as after a crash before its progress was recorded
    finally:
        await sink.stop()
    assert (first.status, again.status) == (200, 200)
    for table, count in (("tracks", 6), ("order_completed", 6), ("identifies", 1), ("users", 1)):
        found = await rows(postgres, database, f"SELECT count(*), count(DISTINCT id) FROM web_prod.{table}")
        assert found == [(count, count)], table


async def test_an_older_trait_in_a_batch_never_replaces_a_newer_one_the_table_holds(postgres, tmp_path):
    database = await postgres.fresh_database()
    config = msgspec.convert(pg_destination(postgres, database, tmp_path), DestinationConfig)
    sink = make_sink(config)

    def identify(i: int, hour: str, **traits: Any) -> Any:
        return sink.prepare(stored(i, {"type": "identify", "messageId": f"t-{i}", "userId": "u-1",
                                       "traits": traits, "receivedAt": f"2026-12-01T{hour}:00.000Z"}))

    await sink.start()
    try:
        held = await sink.send([identify(0, "11:00", plan="A")])
        # one batch: an identify older than the table's row (its plan only fills a gap) and a
        # newer one of another trait, merged into one staged row per id
        load = await sink.send([identify(1, "10:00", plan="B", email="old"), identify(2, "12:00", email="x")])
    finally:
        await sink.stop()
    assert (held.status, load.status) == (200, 200), (held.error, load.error)
    assert await rows(postgres, database, "SELECT plan, email, received_at::text FROM web_prod.users") == [
        ("A", "x", "2026-12-01 12:00:00+00")]


async def test_the_password_can_come_from_the_environment(start_relay, postgres, tmp_path, monkeypatch):
    database = await postgres.fresh_database()
    monkeypatch.setenv("RELAY_TEST_PG_PASSWORD", PASSWORD)
    dest = destination("postgres", port=postgres.port, database=database,
                       password_env="RELAY_TEST_PG_PASSWORD", ssl="disable")
    relay = await start_relay(destinations=[dest])
    await asyncio.to_thread(send_with_sdk, relay.url, WAVE_1[:1])
    await wait_delivered(relay, 1)
    assert await rows(postgres, database, "SELECT id FROM web_prod.tracks") == [("m-1",)]


async def test_events_are_loaded_over_tls_only_to_the_name_the_certificate_gives(
        start_relay, postgres_tls, postgres_ca, tmp_path, monkeypatch):
    """``ssl = "verify-full"`` against a server that refuses unencrypted logins and whose
    certificate names ``localhost`` only, its CA in PGSSLROOTCERT (as docs/warehouses.md says):
    the destination that connects to ``localhost`` loads every event over an encrypted
    connection; the one that connects to 127.0.0.1, the same server, loads nothing, and its
    error names the certificate's failed check."""
    by_name, by_address = await postgres_tls.fresh_database(), await postgres_tls.fresh_database()
    ca_file = tmp_path / "ca.pem"
    postgres_ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("PGSSLROOTCERT", str(ca_file))
    named = pg_destination(postgres_tls, by_name, tmp_path, name="pg", host="localhost", ssl="verify-full",
                           max_events=50)
    addressed = pg_destination(postgres_tls, by_address, tmp_path, name="pg-by-address", ssl="verify-full",
                               max_events=50)
    relay = await start_relay(destinations=[named, addressed])
    await asyncio.to_thread(send_with_sdk, relay.url, WAVE_1)
    await wait_delivered(relay, 3, "pg")
    tracks = await rows(postgres_tls, by_name, "SELECT id FROM web_prod.tracks")
    assert sorted(tracks) == [("m-1",), ("m-2",)]
    # the relay keeps its connection between loads: it is there, encrypted
    found = await rows(postgres_tls, by_name,
                       "SELECT s.ssl, s.version IS NOT NULL FROM pg_stat_ssl s JOIN pg_stat_activity a"
                       " USING (pid) WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()")
    assert found and all(row == (True, True) for row in found), found

    def refused() -> bool:
        got = relay.rows("SELECT last_error FROM progress WHERE destination = 'pg-by-address'")
        return bool(got and got[0][0] and "certificate verify failed" in got[0][0])

    await wait_until(refused, 20.0, "the load over 127.0.0.1 refused for its certificate")
    assert relay.rows("SELECT delivered FROM progress WHERE destination = 'pg-by-address'") == [(0,)]
    assert await rows(postgres_tls, by_address, "SELECT count(*) FROM information_schema.tables"
                      " WHERE table_schema = 'web_prod'") == [(0,)]


async def test_with_no_ca_to_verify_against_the_destination_waits_naming_the_missing_file(
        start_relay, postgres_tls, tmp_path, monkeypatch):
    """``verify-full`` with neither PGSSLROOTCERT nor ~/.postgresql/root.crt: the relay runs,
    the destination loads nothing and retries, its error naming the file it looked for."""
    database = await postgres_tls.fresh_database()
    monkeypatch.delenv("PGSSLROOTCERT", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    dest = pg_destination(postgres_tls, database, tmp_path, name="pg", host="localhost", ssl="verify-full")
    relay = await start_relay(destinations=[dest])
    await asyncio.to_thread(send_with_sdk, relay.url, WAVE_1[:1])

    def waiting() -> bool:
        got = relay.rows("SELECT last_error FROM progress WHERE destination = 'pg'")
        return bool(got and got[0][0] and str(home / ".postgresql" / "root.crt") in got[0][0])

    await wait_until(waiting, 20.0, "the destination's error naming the missing root.crt")
    assert relay.rows("SELECT delivered FROM progress WHERE destination = 'pg'") == [(0,)]
    assert relay.rows("SELECT sum(count) FROM batches") == [(1,)]  # kept for when the CA is there
    assert relay.rows("SELECT count(*) FROM dead_letters") == [(0,)]
