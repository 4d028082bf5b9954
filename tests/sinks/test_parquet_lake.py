"""The ``parquet`` destination: Segment Data Lakes' layout, one schema per table that grows by
new columns, and ``duckdb.read_parquet`` over a table's folder returning every event once."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import duckdb
import msgspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from relay.config import DestinationConfig
from relay.sinks.warehouse import arrow
from relay.sinks.warehouse.columns import Builder
from relay.sinks.warehouse.load import Catalog, plan_columns
from relay.sinks.warehouse.parquet import ParquetSink, _partitions
from relay.types import Stored
from tests.sinks.test_warehouse_schema import LOADED
from tests.sinks.warehouse import (
    WAVE_1,
    WAVE_2,
    destination,
    relay_sql,
    send_with_sdk,
    toml_for,
    wait_delivered,
)

pytest_plugins = ["tests.support.forwarding_fixtures"]
pytestmark = pytest.mark.usefixtures("leak_check")

LAYOUT = re.compile(r"^web_prod/(\w+)/day=\d{4}-\d{2}-\d{2}/hr=\d{2}/part-\d{20}-\d{4}\.parquet$")


def read(root: Path, table: str, columns: str, order: str = "id") -> list[tuple[object, ...]]:
    con = duckdb.connect()
    try:
        return con.execute(f"SELECT {columns} FROM read_parquet(?, union_by_name = true,"
                           f" hive_partitioning = true) ORDER BY {order}",
                           [str(root / "web_prod" / table / "**" / "*.parquet")]).fetchall()
    finally:
        con.close()


async def test_sdk_events_become_a_data_lake_that_duckdb_reads_once_each(start_relay, tmp_path):
    root = tmp_path / "lake"
    dest = destination("parquet", path=str(root), max_events=50)
    relay = await start_relay(destinations=[dest])
    await asyncio.to_thread(send_with_sdk, relay.url, WAVE_1)
    await wait_delivered(relay, 3)
    await asyncio.to_thread(send_with_sdk, relay.url, WAVE_2)
    await wait_delivered(relay, 7)

    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.parquet"))
    assert files and all(LAYOUT.match(f) for f in files), files
    assert {LAYOUT.match(f).group(1) for f in files} == {  # type: ignore[union-attr]
        "tracks", "order_completed", "signed_up", "added_to_cart", "identifies", "users", "discards"}
    assert not list(root.rglob("*.tmp"))
    assert read(root, "tracks", "id, event, user_id, context_ip") == [
        ("m-1", "order_completed", "u-1", "203.0.113.9"), ("m-2", "signed_up", "u-2", "203.0.113.9"),
        ("m-4", "order_completed", "u-1", "203.0.113.9"), ("m-5", "order_completed", "u-1", "203.0.113.9"),
        ("m-7", "added_to_cart", "u-2", "203.0.113.9")]
    assert read(root, "order_completed", "id, revenue, shipping_cost, products, coupon") == [
        ("m-1", 42.5, 5, '[{"sku":"sku-1","quantity":2}]', None),
        ("m-4", 42.5, 5, '[{"sku":"sku-1","quantity":2}]', "BF25"),
        ("m-5", None, 5, '[{"sku":"sku-1","quantity":2}]', None)]
    # one schema per table: a later file has every column of the earlier ones, and the new one
    orders = sorted((root / "web_prod" / "order_completed").rglob("*.parquet"), key=lambda p: p.name)
    first, last = (pq.read_schema(p) for p in (orders[0], orders[-1]))
    assert "coupon" not in first.names and last.names[: len(first.names)] == first.names
    assert last.names[-1] == "coupon" and str(last.field("shipping_cost").type) == "int64"
    assert str(last.field("received_at").type) == "timestamp[us, tz=UTC]"
    # pyarrow (and so pandas) reads the folder as one dataset under the newest file's schema
    orders_read = ds.dataset(root / "web_prod" / "order_completed", format="parquet", schema=last).to_table()
    assert sorted(zip(orders_read["id"].to_pylist(), orders_read["coupon"].to_pylist(), strict=True)) == [
        ("m-1", None), ("m-4", "BF25"), ("m-5", None)]
    assert read(root, "discards", "row_id AS id, column_name, column_value") == [
        ("m-5", "revenue", "lots")]
    # users are appended: the latest row of an id is its newest state
    assert read(root, "users", "id, email, plan", order="received_at") == [
        ("u-1", "ada@example.com", None), ("u-1", None, "pro")]
    latest = relay_sql(toml_for(tmp_path, [dest]),
                       "SELECT id, plan FROM web_prod.users QUALIFY row_number() OVER"
                       " (PARTITION BY id ORDER BY received_at DESC) = 1")
    assert latest == [{"id": "u-1", "plan": "pro"}]
    assert relay.dead_letters() == []


def test_a_load_across_hours_is_split_by_the_hour_of_each_row():
    def at(mid: str, received: str) -> dict[str, object]:
        return {"type": "track", "event": "E", "messageId": mid, "userId": "u", "receivedAt": received}

    builder = Builder()
    for m in (at("a", "2026-12-01T09:59:59.999Z"), at("b", "2026-12-01T10:00:00.000Z"),
              at("c", "2026-12-01T09:00:00.000Z"), at("d", "2026-12-02T00:30:00.000Z")):
        builder.add("web_prod", m)
    tracks = plan_columns(builder.tables.values(), Catalog(), LOADED).tables[0]
    assert _partitions(tracks) == {"day=2026-12-01/hr=09": [0, 2], "day=2026-12-01/hr=10": [1],
                                   "day=2026-12-02/hr=00": [3]}
    one = Builder()
    one.add("web_prod", at("a", "2026-12-01T09:00:00.000Z"))
    one.add("web_prod", at("b", "2026-12-01T09:59:00.000Z"))
    assert _partitions(plan_columns(one.tables.values(), Catalog(), LOADED).tables[0]) == {
        "day=2026-12-01/hr=09": None}  # all the rows


def test_times_become_arrow_timestamps_exactly():
    times = [datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=UTC), None, datetime(1, 1, 1, tzinfo=UTC),
             datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
             datetime(2026, 1, 1, 5, 30, tzinfo=timezone(timedelta(hours=5, minutes=30)))]
    assert arrow._times(times).equals(pa.array(times, pa.timestamp("us", tz="UTC")))


def _track(i: int, write_key: str = "sdk-key") -> Stored:
    message = {"type": "track", "event": "E", "messageId": f"m-{i}", "userId": "u",
               "receivedAt": "2026-12-01T10:00:00.000Z"}
    return Stored(i, 1_764_583_200.0, write_key, f"m-{i}", "track", msgspec.json.encode(message))


async def test_events_the_journal_holds_are_not_written_again(tmp_path):
    """A batch sent again (after a crash the forwarder sends its batches in flight again) adds
    only the events the journal's loads do not hold; the same message id of another source is
    another event."""
    root = tmp_path / "lake"

    def sink() -> ParquetSink:
        return ParquetSink(DestinationConfig(name="wh", type="parquet", max_events=10, options={
            "path": str(root), "schemas": {"sdk-key": "web_prod", "app-key": "app"}}))

    first = sink()
    await first.start()
    assert (await first._load([[_track(0), _track(1)]])).status == 200
    await first.stop()
    again = sink()  # a restart: the journal read again
    await again.start()
    assert (await again._load([[_track(1), _track(2)], [_track(0)]])).status == 200
    assert (await again._load([[_track(0)]])).status == 200  # nothing new: no file
    assert (await again._load([[_track(1, "app-key")]])).status == 200
    await again.stop()
    assert read(root, "e", "id") == [("m-0",), ("m-1",), ("m-2",)]
    assert len(list((root / "web_prod" / "e").rglob("*.parquet"))) == 2
    assert sorted(p.parts[-4] for p in (root / "app").rglob("*.parquet")) == ["e", "tracks"]  # its table
