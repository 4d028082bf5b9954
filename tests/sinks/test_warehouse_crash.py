"""kill -9 of the relay in the middle of loads, restarted: every acknowledged event is in the
warehouse exactly once (DuckDB, PostgreSQL, Parquet); Parquet files appear only whole.

The first kill is placed where a resend is certain: the test holds the queue's write lock, so
the relay commits a load but cannot record its progress, and is killed there; after the
restart it sends those events again. The second kill lands while loads are running."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest

from tests.sinks.postgres_server import PASSWORD
from tests.sinks.warehouse import destination, toml_for
from tests.support.forwarding import post_to, wait_until

pytestmark = pytest.mark.slow

EVENTS = 400
WRITE_KEY = "sdk-key"  # loads into the schema web_prod


def _queue(tmp_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(tmp_path / "queue.db", timeout=10, isolation_level=None)


def cursor(tmp_path: Path) -> int:
    conn = _queue(tmp_path)
    try:
        row = conn.execute("SELECT cursor FROM progress WHERE destination = 'wh'").fetchone()
        return int(row[0]) if row else 0
    finally:
        conn.close()


class Warehouse:
    """Reads the ids a destination holds, whatever its type."""

    def __init__(self, kind: str, tmp_path: Path, request: Any) -> None:
        self.kind = kind
        self.path = tmp_path / ("lake" if kind == "parquet" else "wh.duckdb")
        self.server = request.getfixturevalue("postgres") if kind == "postgres" else None
        self.database = ""

    async def destination(self) -> dict[str, Any]:
        common = {"max_events": 10, "concurrency": 2}
        if self.kind == "postgres":
            assert self.server is not None
            self.database = await self.server.fresh_database()
            secret = self.path.with_name("pg-password")
            secret.write_text(PASSWORD)
            return destination("postgres", port=self.server.port, database=self.database,
                               password_file=str(secret), ssl="disable", **common)
        return destination(self.kind, path=str(self.path), **common)

    async def ids(self, table: str) -> list[str]:
        if self.kind == "postgres":
            assert self.server is not None
            conn = await self.server.connect(self.database)
            try:
                return [r[0] for r in await conn.fetch(f"SELECT id FROM web_prod.{table}")]
            except Exception as exc:  # not created yet
                if "does not exist" in str(exc):
                    return []
                raise
            finally:
                await conn.close()
        return await asyncio.to_thread(self._local_ids, table)

    def _local_ids(self, table: str) -> list[str]:
        if self.kind == "parquet":
            folder = self.path / "web_prod" / table
            if not any(folder.glob("day=*/hr=*/*.parquet")):
                return []
            con = duckdb.connect()
            try:
                return [r[0] for r in con.execute(
                    "SELECT id FROM read_parquet(?, union_by_name = true)",
                    [str(folder / "**" / "*.parquet")]).fetchall()]
            finally:
                con.close()
        if not self.path.exists():
            return []
        for _ in range(200):  # the relay may be loading: it lets go once the load commits
            try:
                con = duckdb.connect(str(self.path), read_only=True)
            except duckdb.IOException:
                time.sleep(0.05)
                continue
            try:
                found = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?",
                                    [table]).fetchone()
                if not found or not found[0]:
                    return []
                return [r[0] for r in con.execute(f"SELECT id FROM web_prod.{table}").fetchall()]
            finally:
                con.close()
        raise AssertionError("the DuckDB file stayed locked")


def whole_parquet_files(root: Path) -> list[Path]:
    """Every visible Parquet file, each read to its end (a torn file raises)."""
    files = sorted(root.rglob("*.parquet"))
    for path in files:
        pq.read_table(path)
    return files


@pytest.mark.parametrize("kind", ["duckdb", "parquet", "postgres"])
async def test_kill_9_mid_load_then_restart_leaves_every_event_exactly_once(kind, tmp_path, relay_process,
                                                                          request):
    warehouse = Warehouse(kind, tmp_path, request)
    config = toml_for(tmp_path, [await warehouse.destination()])
    proc = relay_process(config.read_text())
    port = await asyncio.to_thread(proc.start)
    ids = [f"k{i:04d}" for i in range(EVENTS)]
    await post_to(port, ids, chunk=25, write_key=WRITE_KEY)  # every one acknowledged

    # 1. a load committed, its progress not recorded: kill there
    lock = _queue(tmp_path)
    lock.execute("BEGIN IMMEDIATE")
    try:
        recorded = lock.execute("SELECT cursor FROM progress WHERE destination = 'wh'").fetchone()[0]
        assert recorded < EVENTS, "everything was loaded before the test could hold the queue"

        async def loaded_beyond_record() -> bool:
            return len(await warehouse.ids("tracks")) > recorded

        await wait_until(loaded_beyond_record, 20, "a load committed beyond the recorded progress")
        proc.kill()
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert proc.proc is not None and proc.proc.returncode == -9

    # 2. restarted, killed again while loads run
    await asyncio.to_thread(proc.start)
    start = cursor(tmp_path)
    await wait_until(lambda: cursor(tmp_path) > start, 20, "loads after the restart")
    proc.kill()
    if kind == "parquet":
        whole_parquet_files(warehouse.path)  # what a reader sees is whole, even right after a kill

    # 3. restarted, left to finish
    await asyncio.to_thread(proc.start)
    await wait_until(lambda: cursor(tmp_path) >= EVENTS, 30, "every event loaded")
    assert await asyncio.to_thread(proc.terminate) == 0

    for table in ("tracks", "tested"):
        loaded = await warehouse.ids(table)
        assert sorted(loaded) == ids, table  # every acknowledged event, once
    conn = _queue(tmp_path)
    try:
        assert conn.execute("SELECT count(*) FROM dead_letters").fetchone() == (0,)
    finally:
        conn.close()
    if kind == "parquet":
        assert whole_parquet_files(warehouse.path)
        assert not [p for p in warehouse.path.rglob("*.tmp")], "temporary files left after the restart"
