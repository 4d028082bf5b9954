"""The ``duckdb`` destination end to end: segment-analytics-python -> relay -> a DuckDB file,
then SQL over the file: the event tables, ``identifies``, ``users`` with the latest traits, a
column added mid-run and a type conflict in ``discards``; and a reader holding the file only
delays a load."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pytest

from relay.config import DestinationConfig
from relay.sinks.warehouse.duckdb import DuckDBSink, insert
from relay.sinks.warehouse.load import Catalog
from relay.types import Stored
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

pytest_plugins = ["tests.support.forwarding_fixtures"]
pytestmark = pytest.mark.usefixtures("leak_check")


def query(path: Path, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(statement, list(params)).fetchall()
    finally:
        con.close()


def column_types(path: Path, table: str) -> dict[str, str]:
    return dict(query(path, "SELECT column_name, data_type FROM duckdb_columns()"
                            " WHERE schema_name = 'web_prod' AND table_name = ?", table))


async def test_sdk_events_land_in_segments_schema_and_evolve(start_relay, tmp_path):
    path = tmp_path / "wh.duckdb"
    dest = destination("duckdb", path=str(path), max_events=50)
    relay = await start_relay(destinations=[dest])
    await asyncio.to_thread(send_with_sdk, relay.url, WAVE_1)
    await wait_delivered(relay, 3)
    # the file is there to query while the relay runs: `relay sql`, a process of its own
    config = toml_for(tmp_path, [dest])
    assert relay_sql(config, "SELECT event, count(*) AS n FROM web_prod.tracks GROUP BY 1 ORDER BY 1") == [
        {"event": "order_completed", "n": 1}, {"event": "signed_up", "n": 1}]
    await asyncio.to_thread(send_with_sdk, relay.url, WAVE_2)  # a new column, a bad value, a new table
    await wait_delivered(relay, 7)

    tables = {t for (t,) in query(path, "SELECT table_name FROM duckdb_tables()"
                                        " WHERE schema_name = 'web_prod'")}
    assert tables == {"tracks", "order_completed", "signed_up", "added_to_cart", "identifies", "users",
                      "discards"}
    assert query(path, "SELECT id, event, event_text, user_id, context_ip, context_page_path,"
                       " context_library_name FROM web_prod.tracks ORDER BY id") == [
        ("m-1", "order_completed", "Order Completed", "u-1", "203.0.113.9", "/checkout", "analytics-python"),
        ("m-2", "signed_up", "Signed Up", "u-2", "203.0.113.9", "/checkout", "analytics-python"),
        ("m-4", "order_completed", "Order Completed", "u-1", "203.0.113.9", "/checkout", "analytics-python"),
        ("m-5", "order_completed", "Order Completed", "u-1", "203.0.113.9", "/checkout", "analytics-python"),
        ("m-7", "added_to_cart", "Added to Cart", "u-2", "203.0.113.9", "/checkout", "analytics-python"),
    ]
    assert query(path, "SELECT id, user_id, order_id, revenue, currency, products, shipping_method,"
                       " shipping_cost, coupon FROM web_prod.order_completed ORDER BY id") == [
        ("m-1", "u-1", "o-m-1", 42.5, "USD", '[{"sku":"sku-1","quantity":2}]', "ground", 5, None),
        ("m-4", "u-1", "o-m-4", 42.5, "USD", '[{"sku":"sku-1","quantity":2}]', "ground", 5, "BF25"),
        ("m-5", "u-1", "o-m-5", None, "USD", '[{"sku":"sku-1","quantity":2}]', "ground", 5, None),
    ]
    types = column_types(path, "order_completed")
    assert (types["revenue"], types["shipping_cost"], types["coupon"], types["received_at"]) == (
        "DOUBLE", "BIGINT", "VARCHAR", "TIMESTAMP WITH TIME ZONE")
    assert list(types)[-1] == "coupon"  # added by ALTER TABLE, after the columns of the first load
    assert "coupon" not in column_types(path, "tracks")
    assert query(path, "SELECT plan, account_type, trial FROM web_prod.signed_up") == [
        ("Pro Annual", "Facebook", True)]
    assert column_types(path, "signed_up")["trial"] == "BOOLEAN"
    assert query(path, "SELECT id, email, first_name, logins, address_city, plan FROM web_prod.identifies"
                       " ORDER BY id") == [("m-3", "ada@example.com", "Ada", 3, "Berlin", None),
                                           ("m-6", None, None, 4, None, "pro")]
    assert column_types(path, "identifies")["created_at"] == "TIMESTAMP WITH TIME ZONE"
    # users: one row per userId, the newest traits over the older ones, which fill the gaps
    assert query(path, "SELECT id, email, first_name, logins, address_city, plan FROM web_prod.users") == [
        ("u-1", "ada@example.com", "Ada", 4, "Berlin", "pro")]
    assert "anonymous_id" not in column_types(path, "users")
    assert query(path, "SELECT table_name, column_name, column_value, row_id, reason"
                       " FROM web_prod.discards") == [
        ("order_completed", "revenue", "lots", "m-5", "incompatible schema conversion from varchar to float")]
    assert query(path, "SELECT count(*) FROM web_prod.tracks WHERE uuid_ts IS NULL OR loaded_at IS NULL"
                       " OR received_at IS NULL OR timestamp IS NULL") == [(0,)]
    assert relay.dead_letters() == []


async def test_a_batch_the_sdk_sends_again_gives_one_row_per_event(start_relay, tmp_path):
    path = tmp_path / "wh.duckdb"
    relay = await start_relay(destinations=[destination("duckdb", path=str(path))])
    for _ in range(2):  # the queue's dedup keeps the first copy of each
        await asyncio.to_thread(send_with_sdk, relay.url, WAVE_1)
    await wait_delivered(relay, 3)
    assert query(path, "SELECT id, count(*) FROM web_prod.tracks GROUP BY 1 ORDER BY 1") == [
        ("m-1", 1), ("m-2", 1)]
    assert query(path, "SELECT count(*) FROM web_prod.identifies") == [(1,)]
    assert query(path, "SELECT count(*) FROM web_prod.users") == [(1,)]


HOLDER = """
import sys, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
print("open", flush=True)
sys.stdin.readline()
con.close()
"""


async def test_a_reader_holding_the_file_delays_the_load_which_then_succeeds(start_relay, tmp_path):
    path = tmp_path / "wh.duckdb"
    relay = await start_relay(destinations=[destination("duckdb", path=str(path))])
    await asyncio.to_thread(send_with_sdk, relay.url, WAVE_1[:1])
    await wait_delivered(relay, 1)
    reader = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)],  # noqa: ASYNC220 - a process to hold
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert await asyncio.wait_for(asyncio.to_thread(reader.stdout.readline), 30) == "open\n"
        await asyncio.to_thread(send_with_sdk, relay.url, WAVE_1[1:])

        def waiting() -> bool:
            rows = relay.rows("SELECT state, last_error FROM progress WHERE destination = 'wh'")
            return rows[0][0] == "retrying" and "held by another process" in (rows[0][1] or "")

        await wait_until(waiting, 20, "the load to wait for the reader")
        assert relay.rows("SELECT delivered FROM progress WHERE destination = 'wh'") == [(1,)]
    finally:
        reader.communicate("\n", timeout=30)
    await wait_delivered(relay, 3)
    assert relay.dead_letters() == []
    assert query(path, "SELECT id FROM web_prod.tracks ORDER BY id") == [("m-1",), ("m-2",)]
    assert query(path, "SELECT id FROM web_prod.users") == [("u-1",)]


async def test_an_event_that_cannot_be_mapped_is_dead_lettered_alone(start_relay, tmp_path):
    path = tmp_path / "wh.duckdb"
    relay = await start_relay(destinations=[destination("duckdb", path=str(path), max_events=10)])
    batch = [{"type": "track", "event": "Tested", "userId": "u", "messageId": f"b-{i}",
              "properties": [1, 2] if i == 3 else {"n": i}} for i in range(6)]
    status, answer, _ = await relay.post("/v1/batch", {"batch": batch, "writeKey": "sdk-key"})
    assert status == 200 and answer["accepted"] == 6
    await wait_until(lambda: relay.rows("SELECT delivered + dead_lettered FROM progress") == [(6,)], 20,
                     "every event loaded or dead-lettered")
    assert query(path, "SELECT id FROM web_prod.tested ORDER BY id") == [(f"b-{i}",) for i in (0, 1, 2, 4, 5)]
    (letter,) = relay.dead_letters()
    assert letter[0] == "wh" and letter[2] == "b-3" and "`properties` is not a JSON object" in letter[1]


async def test_batches_loaded_together_merge_a_users_row_in_queue_order(start_relay, tmp_path):
    path = tmp_path / "wh.duckdb"
    dest = destination("duckdb", path=str(path), max_events=2, concurrency=4)
    relay = await start_relay(destinations=[dest])
    calls = [{"type": "identify", "userId": "u-1", "messageId": f"i-{i}",
              "traits": {"step": i, **({"email": "first@example.com"} if i == 0 else {})}} for i in range(12)]
    status, _, _ = await relay.post("/v1/batch", {"batch": calls, "writeKey": "sdk-key"})  # one receivedAt
    assert status == 200
    await wait_delivered(relay, 12)
    assert query(path, "SELECT id, step, email FROM web_prod.users") == [("u-1", 11, "first@example.com")]
    assert query(path, "SELECT count(*) FROM web_prod.identifies") == [(12,)]


def at(hour: str) -> str:
    return f"2026-12-01T{hour}:00.000Z"


# (the users row the table holds, the load's batches of identifies (received at, traits), the
# row after the load): each trait the value of the newest identify that has one, the table's
# values counting as received at its row's received_at; an older value only fills a gap, also
# when it reaches the merge beside a newer identify of other traits
STORED_THEN_LOADED = [
    ("older beside newer, two batches", {"11:00": {"plan": "A"}},
     [[("10:00", {"plan": "B"})], [("12:00", {"email": "x"})]], ("A", "x")),
    ("the same, batches the other way", {"11:00": {"plan": "A"}},
     [[("12:00", {"email": "x"})], [("10:00", {"plan": "B"})]], ("A", "x")),
    ("the same, one batch", {"11:00": {"plan": "A"}},
     [[("10:00", {"plan": "B"}), ("12:00", {"email": "x"})]], ("A", "x")),
    ("newer than the table, older than the load's newest", {"11:00": {"plan": "A"}},
     [[("12:00", {"email": "x"})], [("11:30", {"plan": "B"})]], ("B", "x")),
    ("older fills the table's gap", {"11:00": {"plan": "A"}},
     [[("10:00", {"plan": "B", "email": "old"})]], ("A", "old")),
    ("newest wins in the load", {"11:00": {"plan": "A"}},
     [[("12:30", {"plan": "C"})], [("12:00", {"plan": "B", "email": "x"})]], ("C", "x")),
]


@pytest.mark.parametrize(("stored_row", "batches", "expected"), [case[1:] for case in STORED_THEN_LOADED],
                         ids=[case[0] for case in STORED_THEN_LOADED])
async def test_an_older_trait_never_replaces_a_newer_one_the_table_holds(tmp_path, stored_row, batches,
                                                                         expected):
    path = tmp_path / "wh.duckdb"
    sink = wh_sink(path)
    await sink.start()
    ((hour, traits),) = stored_row.items()
    assert (await sink._load([[identified(0, "u-1", received=at(hour), **traits)]])).status == 200
    n = iter(range(1, 100))
    load = [[identified(next(n), "u-1", received=at(h), **t) for h, t in batch] for batch in batches]
    assert (await sink._load(load)).status == 200
    newest = max([hour, *(h for batch in batches for h, _ in batch)])  # the row's received_at
    assert query(path, "SELECT plan, email, received_at FROM web_prod.users") == [
        (*expected, datetime.fromisoformat(at(newest)))]
    await sink.stop()


def stored(i: int, received: str = "2026-12-01T10:00:00.000Z", message_id: str | None = None,
           **fields: Any) -> Stored:
    message_id = message_id or f"r-{i}"
    message = {"type": "track", "event": "Order Completed", "messageId": message_id, "userId": "u-1",
               "receivedAt": received, "properties": {"n": i, **fields}}
    return Stored(i, 1_764_583_200.0, "sdk-key", message_id, "track", msgspec.json.encode(message))


def identified(i: int, user_id: str, message_id: str | None = None,
               received: str = "2026-12-01T10:00:00.000Z", **traits: Any) -> Stored:
    message_id = message_id or f"i-{i}"
    message = {"type": "identify", "messageId": message_id, "userId": user_id,
               "receivedAt": received, "traits": traits}
    return Stored(i, 1_764_583_200.0, "sdk-key", message_id, "identify", msgspec.json.encode(message))


FIRST_RECEIVED = datetime(2026, 12, 1, 10, tzinfo=UTC)  # ``stored``'s receivedAt


def primary_keys(path: Path) -> set[str]:
    return {t for (t,) in query(path, "SELECT table_name FROM duckdb_constraints()"
                                      " WHERE constraint_type = 'PRIMARY KEY'")}


def wh_sink(path: Path, **options: Any) -> DuckDBSink:
    return DuckDBSink(DestinationConfig(name="wh", type="duckdb", options={
        "path": str(path), "schemas": {"sdk-key": "web_prod"}, **options}))


async def test_events_sent_again_are_loaded_once_without_a_primary_key(tmp_path):
    path = tmp_path / "wh.duckdb"
    sink = wh_sink(path)
    await sink.start()
    first = [stored(i) for i in range(4)]
    assert (await sink._load([first])).status == 200
    # no table has a primary key (DuckDB would hold its index in memory), users neither
    assert (await sink._load([[identified(9, "u-1")]])).status == 200
    assert primary_keys(path) == set()
    # sent again after a crash (the same receptions), with new events, over two batches of one
    # load: one row each, the earlier row kept
    again = [[*first[2:], stored(4)], [stored(5), stored(0, extra="later copy")]]
    assert (await sink._load(again)).status == 200 and not sink._careful
    assert query(path, "SELECT id, n, extra FROM web_prod.order_completed ORDER BY id") == [
        (f"r-{i}", i, None) for i in range(6)]
    assert query(path, "SELECT count(*), count(DISTINCT id) FROM web_prod.tracks") == [(6, 6)]
    assert (await sink._load([[stored(7)], [stored(7)]])).status == 200  # twice in one load: one row
    assert query(path, "SELECT count(*), count(DISTINCT id) FROM web_prod.tracks") == [(7, 7)]
    # in batches whose rows have other columns (two inserts into the table): one row as well
    assert (await sink._load([[stored(8)], [stored(8, extra="a column more")]])).status == 200
    assert query(path, "SELECT count(*), count(DISTINCT id) FROM web_prod.order_completed") == [(8, 8)]
    # a message the relay received a second time (no dedup, or past its window) is a second row
    assert (await sink._load([[stored(1, received="2026-12-03T10:00:00.000Z")]])).status == 200
    assert query(path, "SELECT id, count(*) FROM web_prod.tracks WHERE id = 'r-1' GROUP BY 1") == [("r-1", 2)]
    # and two receptions of a message in two batches of one load: two rows
    assert (await sink._load([[stored(2, received="2026-12-03T10:00:00.000Z")],
                              [stored(2, received="2026-12-04T10:00:00.000Z")]])).status == 200
    assert query(path, "SELECT count(*) FROM web_prod.tracks WHERE id = 'r-2'") == [(3,)]
    await sink.stop()


REPEATS = [
    # (case, the load's batches as (event number, received) pairs, the tables made distinct)
    ("no id twice", [[(0, None), (1, None)], [(2, None)]], set()),
    ("one id in two batches", [[(0, None), (1, None)], [(1, None)]], {"tracks", "order_completed"}),
    ("two receptions in two batches", [[(0, None)], [(0, "2026-12-03T10:00:00.000Z")]],
     {"tracks", "order_completed"}),
    ("an id twice in one batch", [[(0, None), (0, None)], [(1, None)]], set()),  # the plan keeps one
]


@pytest.mark.parametrize(("batches", "distinct"), [case[1:] for case in REPEATS], ids=[c[0] for c in REPEATS])
def test_a_load_makes_its_rows_distinct_only_where_an_id_is_in_two_batches(tmp_path, batches, distinct):
    sink = wh_sink(tmp_path / "wh.duckdb")
    load = [[stored(i, **({"received": r} if r else {})) for i, r in batch] for batch in batches]
    work = sink._stage(load, Catalog(), tmp_path)
    assert {key[1] for key in work.repeated} == distinct
    for key, group in work.events.items():
        statement = insert(group[0].load, group, distinct=key in work.repeated)
        assert ("DISTINCT ON" in statement) == (key[1] in distinct)


DAY = "2026-12-0{}T10:00:00.000Z".format


async def loaded_once(path: Path) -> None:
    """The file with its tables made and one event in them (r-0, received on day 1)."""
    sink = wh_sink(path)
    await sink.start()
    assert (await sink._load([[stored(0, received=DAY(1))]])).status == 200
    await sink.stop()


async def test_rows_received_after_all_a_table_holds_go_in_without_the_joins(tmp_path, monkeypatch):
    from relay.sinks.warehouse import duckdb as module

    fresh: dict[str, bool] = {}  # table -> how its last insert went

    def insert(load, stages, **options):
        fresh[load.table] = options["fresh"]
        return real(load, stages, **options)

    real = module.insert
    monkeypatch.setattr(module, "insert", insert)
    path = tmp_path / "wh.duckdb"
    sink = wh_sink(path)
    await sink.start()
    assert (await sink._load([[stored(0, received=DAY(1))]])).status == 200
    assert fresh == {"tracks": True, "order_completed": True}  # new tables
    assert (await sink._load([[stored(1, received=DAY(2))], [stored(2, received=DAY(3))]])).status == 200
    assert fresh == {"tracks": True, "order_completed": True}
    # sent again (received before the newest row), among new ones: the joins keep it once
    assert (await sink._load([[stored(1, received=DAY(2)), stored(3, received=DAY(4))]])).status == 200
    assert fresh == {"tracks": False, "order_completed": False}
    await sink.stop()
    # after a restart the newest time is read from the file: a batch sent again is found
    sink = wh_sink(path)
    await sink.start()
    assert (await sink._load([[stored(3, received=DAY(4))]])).status == 200
    assert fresh == {"tracks": False, "order_completed": False}
    assert (await sink._load([[stored(4, received=DAY(5))]])).status == 200
    assert fresh == {"tracks": True, "order_completed": True}
    # an event in two batches of one load: in tracks one insert makes it distinct; in its own
    # table (another column, so another insert) the second insert finds what the first wrote
    twice = [[stored(5, received=DAY(6))], [stored(5, received=DAY(6), extra="x")]]
    assert (await sink._load(twice)).status == 200
    assert fresh == {"tracks": True, "order_completed": False}
    await sink.stop()
    assert query(path, "SELECT id, count(*) FROM web_prod.tracks GROUP BY 1 ORDER BY 1") == [
        (f"r-{i}", 1) for i in range(6)]
    assert query(path, "SELECT count(*) FROM web_prod.order_completed") == [(6,)]


@pytest.mark.parametrize("received_at", [
    "TIMESTAMP",  # retyped by hand: DuckDB gives its values without a zone
    "TIMESTAMP_NS",
    "VARCHAR",
    "TIMESTAMPTZ with infinity",  # a row another program wrote
])
async def test_a_received_at_column_of_another_type_still_loads_each_event_once(tmp_path, received_at):
    path = tmp_path / "wh.duckdb"
    await loaded_once(path)
    con = duckdb.connect(str(path))
    for table in ("tracks", "order_completed"):
        if received_at.endswith("infinity"):
            con.execute(f"INSERT INTO web_prod.{table} (id, received_at) VALUES ('other', 'infinity')")
        else:
            con.execute(f"ALTER TABLE web_prod.{table} ALTER received_at TYPE {received_at}")
    con.close()
    sink = wh_sink(path)  # started again: the newest time is read from the file
    await sink.start()
    for batch in ([stored(1, received=DAY(2))], [stored(1, received=DAY(2)), stored(2, received=DAY(3))]):
        answer = await sink._load([batch])
        assert answer.status == 200, answer
    await sink.stop()
    rows = query(path, "SELECT id, count(*) FROM web_prod.tracks WHERE id <> 'other' GROUP BY 1 ORDER BY 1")
    assert rows == [("r-0", 1), ("r-1", 1), ("r-2", 1)]


SUMMER_TIME = """
import asyncio, json, sys
import duckdb
from tests.sinks.test_duckdb_warehouse import query, stored, wh_sink

async def main(path):
    sink = wh_sink(path)
    await sink.start()
    first = stored(0, message_id="b", received="2026-03-08T07:00:00.000Z")
    assert (await sink._load([[first]])).status == 200
    await sink.stop()
    con = duckdb.connect(str(path))  # retyped by hand, and a row another program wrote
    for table in ("tracks", "order_completed"):
        con.execute(f"ALTER TABLE web_prod.{table} ALTER received_at TYPE TIMESTAMP")
        con.execute(f"INSERT INTO web_prod.{table} (id, received_at)"
                    " VALUES ('a', TIMESTAMP '2026-03-08 02:30:00')")
    con.close()
    sink = wh_sink(path)
    await sink.start()
    again = stored(1, message_id="a", received="2026-03-08T07:30:00.000Z")
    assert (await sink._load([[again]])).status == 200
    await sink.stop()
    print(json.dumps(query(path, "SELECT id, count(*) FROM web_prod.tracks GROUP BY 1 ORDER BY 1")))

asyncio.run(main(sys.argv[1]))
"""


def test_a_time_in_the_gap_of_a_change_to_summer_time_is_still_found(tmp_path):
    """A TIMESTAMP column is compared in the session's zone (the machine's), where 02:30 on the
    night clocks go forward is 07:30Z and 03:00 is 07:00Z: the newest time a table holds is
    the maximum of the values so compared, not of the wall-clock values."""
    env = {**os.environ, "TZ": "America/New_York"}
    done = subprocess.run([sys.executable, "-c", SUMMER_TIME, str(tmp_path / "wh.duckdb")], env=env,
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [["a", 1], ["b", 1]]


async def test_loads_need_no_time_zone_database_in_python(tmp_path):
    """DuckDB turns a TIMESTAMPTZ it hands to Python into the session's zone with Python's
    zoneinfo; on a host without a zone database (Windows without tzdata, a slim image) that
    fails, so the newest time a table holds is read as a number."""
    import zoneinfo

    path = tmp_path / "wh.duckdb"
    await loaded_once(path)
    empty = tmp_path / "no-zones"
    empty.mkdir()
    zoneinfo.reset_tzpath([str(empty)])
    zoneinfo.ZoneInfo.clear_cache()
    try:
        with pytest.raises(zoneinfo.ZoneInfoNotFoundError):
            zoneinfo.ZoneInfo("Etc/UTC")  # (the condition this test stands for)
        sink = wh_sink(path)
        await sink.start()
        for i in (1, 2):
            answer = await sink._load([[stored(i, received=DAY(i + 1))]])
            assert answer.status == 200, answer
        assert (await sink._load([[stored(2, received=DAY(3))]])).status == 200  # sent again
        await sink.stop()
    finally:
        zoneinfo.reset_tzpath()
        zoneinfo.ZoneInfo.clear_cache()
    assert query(path, "SELECT id, count(*) FROM web_prod.tracks GROUP BY 1 ORDER BY 1") == [
        (f"r-{i}", 1) for i in range(3)]


async def test_a_file_whose_event_tables_have_a_primary_key_is_still_loaded_once(tmp_path, monkeypatch):
    from relay.sinks.warehouse import duckdb as module
    from relay.sinks.warehouse import sql

    path = tmp_path / "wh.duckdb"
    older = wh_sink(path)  # tables made as an earlier relay made them: every one with its key
    monkeypatch.setattr(module, "create_table", lambda load: sql.create_table(load, module.TYPES))
    await older.start()
    first = [stored(i) for i in range(4)]
    assert (await older._load([first])).status == 200
    await older.stop()
    monkeypatch.undo()
    assert primary_keys(path) == {"tracks", "order_completed"}
    sink = wh_sink(path)
    await sink.start()
    again = [[*first[2:], stored(4)], [stored(5), stored(0, extra="later copy")]]
    assert (await sink._load(again)).status == 200 and not sink._careful  # found without the key
    # a second reception of r-1: the key refuses it; the load runs again merging by key
    assert (await sink._load([[stored(6)], [stored(1, received="2026-12-03T10:00:00.000Z")]])).status == 200
    assert sink._careful
    assert query(path, "SELECT id, n, extra, received_at FROM web_prod.order_completed ORDER BY id") == [
        (f"r-{i}", i, None, FIRST_RECEIVED) for i in range(7)]
    # two receptions of r-8 in batches whose rows have different columns: the first one stays
    assert (await sink._load([[stored(8)], [stored(8, received="2026-12-03T10:00:00.000Z", b=1)],
                              [stored(8, received="2026-12-04T10:00:00.000Z")]])).status == 200
    assert (await sink._load([[stored(8, received="2026-12-05T10:00:00.000Z")]])).status == 200
    assert query(path, "SELECT count(*), min(received_at) FROM web_prod.order_completed"
                       " WHERE id = 'r-8'") == [(1, FIRST_RECEIVED)]
    # a careful load that meets none goes back to the plain way
    assert (await sink._load([[stored(7)]])).status == 200 and not sink._careful
    assert query(path, "SELECT count(*), count(DISTINCT id) FROM web_prod.tracks") == [(9, 9)]
    await sink.stop()


async def test_after_a_load_merging_by_key_a_keyed_table_s_newest_time_is_read_again(tmp_path, monkeypatch):
    """A load merged by key does not keep the newest times of the tables it merged into: the
    next plain load reads them again, and does not take an event those loads wrote as fresh
    (the key would then refuse it, and the load would run again merging by key)."""
    from relay.sinks.warehouse import duckdb as module
    from relay.sinks.warehouse import sql

    path = tmp_path / "wh.duckdb"
    older = wh_sink(path)  # tables made with their key, as an earlier relay made them
    monkeypatch.setattr(module, "create_table", lambda load: sql.create_table(load, module.TYPES))
    await older.start()
    assert (await older._load([[stored(0), stored(1)]])).status == 200
    await older.stop()
    monkeypatch.undo()
    sink = wh_sink(path)
    await sink.start()
    assert (await sink._load([[stored(2, received=DAY(2))]])).status == 200 and not sink._careful
    # a second reception of r-1: merged by key, writing r-9 too
    assert (await sink._load([[stored(9, received=DAY(6))], [stored(1, received=DAY(7))]])).status == 200
    assert sink._careful
    assert (await sink._load([[stored(10, received=DAY(8))]])).status == 200 and not sink._careful
    assert (await sink._load([[stored(9, received=DAY(6))]])).status == 200  # sent again
    assert not sink._careful
    await sink.stop()
    assert query(path, "SELECT count(*) FROM web_prod.order_completed WHERE id = 'r-9'") == [(1,)]


@pytest.mark.parametrize("row_group_size", [2048, 4096])
async def test_the_file_is_written_in_row_groups_of_the_configured_size(tmp_path, row_group_size):
    path = tmp_path / "wh.duckdb"
    sink = wh_sink(path, row_group_size=row_group_size)
    await sink.start()
    for first, count in [(0, 6000), (6000, 3000)]:  # each load closes the file: a checkpoint
        assert (await sink._load([[stored(first + i) for i in range(count)]])).status == 200
    await sink.stop()
    groups = query(path, "SELECT row_group_id, max(count) FROM pragma_storage_info('web_prod.tracks')"
                         " GROUP BY row_group_id ORDER BY row_group_id")
    assert sum(rows for _, rows in groups) == 9000
    # (DuckDB's default, 122,880 rows, would hold all of them in one)
    assert max(rows for _, rows in groups) == row_group_size and len(groups) >= 9000 / row_group_size
    # and a reader with DuckDB's defaults reads it
    assert query(path, "SELECT count(*), count(DISTINCT id) FROM web_prod.order_completed") == [(9000, 9000)]


async def test_a_large_table_is_loaded_within_a_small_memory_limit(tmp_path):
    """Tables of 1,000,000 events and 1,000,000 users take a load of 12,500 events under
    ``memory_limit = 64MB`` (UUID ids, as the SDKs make them). With a primary key on ``id`` (as
    tables were made before) DuckDB read the key's whole index into memory to insert, and the
    same load failed for want of memory (DuckDB 2.0.1, checked when the keys went)."""
    path = tmp_path / "wh.duckdb"
    sink = wh_sink(path, memory_limit="64MB")
    await sink.start()
    assert (await sink._load([[stored(0), identified(1, "u-1", "i-0", plan="pro")]])).status == 200
    con = duckdb.connect(str(path))
    try:
        con.execute("INSERT INTO web_prod.tracks (id, received_at, event, event_text)"
                    " SELECT uuid()::VARCHAR, TIMESTAMPTZ '2026-11-30 00:00:00Z', 'order_completed',"
                    " 'Order Completed' FROM range(1000000)")
        con.execute("INSERT INTO web_prod.users (id, received_at)"
                    " SELECT uuid()::VARCHAR, TIMESTAMPTZ '2026-11-30 00:00:00Z' FROM range(1000000)")
    finally:
        con.close()
    assert primary_keys(path) == set()
    identifies = [identified(i, str(uuid.uuid4()), str(uuid.uuid4()), plan="free") for i in range(1, 2501)]
    tracks = [stored(i, message_id=str(uuid.uuid4())) for i in range(1, 10001)]
    answer = await sink._load([tracks, identifies])
    await sink.stop()
    assert answer.status == 200
    assert query(path, "SELECT count(*), count(DISTINCT id) FROM web_prod.tracks") == [(1010001, 1010001)]
    assert query(path, "SELECT count(*), count(DISTINCT id) FROM web_prod.users") == [(1002501, 1002501)]
    assert query(path, "SELECT plan FROM web_prod.users WHERE id = 'u-1'") == [("pro",)]
