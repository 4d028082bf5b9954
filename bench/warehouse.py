"""Warehouse benchmark: the relay loading a backlog into DuckDB and into Parquet files, against
the bare engine writing the same rows in the same run.

How to run it (from the repository root):

    .venv/bin/python bench/warehouse.py                    # 200,000 events, DuckDB and Parquet
    .venv/bin/python bench/warehouse.py --events 50000 --only duckdb

For each of DuckDB and Parquet it:
1. fills a fresh queue file with N queued track events (10 event names with 5 to 20
   properties each, normalised as ingest does and written with the relay's schema code),
   received as requests of 100 events at 40,000 events/s (so that their ``receivedAt`` moves
   on as a real backlog's does);
2. starts the relay (``python -m relay run``, one ``duckdb`` or ``parquet`` destination,
   max_events 2,500, concurrency 4) and measures from the moment it listens until the
   destination has delivered N events: rows/s (each event is two rows: ``tracks`` and its
   event table) and the relay's peak RSS (VmHWM);
3. runs the reference in this process: the same rows (mapped beforehand, untimed, by the
   relay's schema core in loads of 10,000 events, as Python values) written by a bare
   script into the same tables: DuckDB, one connection held open, each load's tables
   turned into Arrow and inserted (``INSERT ... BY NAME SELECT``), one commit per load
   (and, printed beside it but not the target's reference, the same script closing the
   file after each load as the relay does so that readers can open it: a checkpoint and a
   new connection every load);
   Parquet, each load's tables turned into Arrow and written by
   ``pyarrow.parquet.write_table`` (and, printed beside it, the same with each file fsynced
   once written, as the relay makes a load's files durable before it records them). The
   reference does no queue reads, no JSON decoding, no mapping, no type checks and records
   no progress.

Targets (issue 12): the relay at least 0.5 of the bare engine's rows/s; peak RSS under 150 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import ingest as common  # noqa: E402  (bench/ingest.py: processes, servers)

from relay.ingest.normalise import normalise  # noqa: E402
from relay.queue import store  # noqa: E402
from relay.sinks.warehouse import arrow, load, schema, sql  # noqa: E402
from relay.sinks.warehouse.duckdb import create_table  # noqa: E402
from relay.types import Arrival  # noqa: E402

RATIO_TARGET = 0.5
RSS_TARGET_MB = 150
FILL_CHUNK = 20_000
REQUEST_EVENTS = 100  # events of one request, received together
RECEIVED_EVERY = 1 / 40_000  # seconds between receptions: a backlog queued at 40,000 events/s
MAX_EVENTS = 2500
CONCURRENCY = 4
POLL = 0.1
LOAD_TIMEOUT = 900.0
NAMES = ["Order Completed", "Product Viewed", "Product Added", "Checkout Started", "Signed Up",
         "Page Scrolled", "Video Played", "Coupon Applied", "Search Performed", "Subscription Renewed"]


def make_event(rnd: random.Random, i: int) -> dict[str, Any]:
    n = rnd.randrange(len(NAMES))
    count = 5 + (n * 15) // 9  # 5 to 20 properties, fixed per event name
    properties: dict[str, Any] = {}
    for k in range(count):
        key = f"prop{k}Value" if k % 4 else f"nested{k}"
        if k % 5 == 0:
            properties[key] = rnd.randrange(1000)
        elif k % 5 == 1:
            properties[key] = round(rnd.uniform(0, 500), 2)
        elif k % 5 == 2:
            properties[key] = rnd.random() < 0.5
        elif k % 4 == 0:
            properties[key] = {"sku": f"sku-{rnd.randrange(500)}", "size": rnd.randrange(30, 48)}
        else:
            properties[key] = f"text-{rnd.randrange(10000)}"
    return {"type": "track", "event": NAMES[n], "userId": f"user-{rnd.randrange(20000)}",
            "anonymousId": f"anon-{i}", "messageId": f"wh-{i}", "properties": properties,
            "timestamp": "2026-12-01T09:59:59.000Z",
            "context": {"library": {"name": "analytics.js", "version": "5.2.1"}, "ip": "203.0.113.9",
                        "locale": "en-US", "page": {"path": "/p", "url": "https://shop.example/p"}}}


def fill(path: Path, count: int) -> list[bytes]:
    """``count`` queued events, normalised as ingest stores them; their bodies are returned
    for the reference."""
    rnd = random.Random(12)
    conn = sqlite3.connect(path, isolation_level=None)
    store.prepare(conn, "os", common.QUEUE_MAX_BYTES)
    began = datetime.now(UTC) - timedelta(seconds=count * RECEIVED_EVERY)
    bodies = []
    arrival = None
    for start in range(0, count, FILL_CHUNK):
        rows = []
        for i in range(start, min(count, start + FILL_CHUNK)):
            if i % REQUEST_EVENTS == 0:  # each request of 100 received a moment after the last
                arrival = Arrival(common.WRITE_KEY, began + timedelta(seconds=i * RECEIVED_EVERY),
                                  "203.0.113.9", "2026-12-01T10:00:00.000Z")
            assert arrival is not None
            event = normalise(make_event(rnd, i), arrival)
            body = event.encode()
            bodies.append(body)
            rows.append((event.received_at, event.write_key, event.message_id, event.type, body))
        conn.execute("BEGIN")
        store.insert_events(conn, rows)
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return bodies


def delivered(db: Path) -> int:
    conn = store.open_read_only(str(db))
    try:
        row = conn.execute("SELECT delivered FROM progress WHERE destination = 'wh'").fetchone()
        return int(row[0]) if row else 0
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def run_relay(kind: str, workdir: Path, count: int, procs: common.Processes, args: argparse.Namespace
              ) -> dict[str, Any]:
    target = workdir / ("lake" if kind == "parquet" else "wh.duckdb")
    config_path = workdir / "relay.toml"
    config_path.write_text(
        '[server]\nhost = "127.0.0.1"\nport = 0\nshutdown_timeout = 10.0\n'
        f'[queue]\npath = {json.dumps(str(workdir / "queue.db"))}\ndurability = "fsync"\n'
        f"max_bytes = {common.QUEUE_MAX_BYTES}\n[admin]\nenabled = false\n"
        f'[[destinations]]\nname = "wh"\ntype = "{kind}"\nmax_events = {args.max_events}\n'
        f"concurrency = {args.concurrency}\nflush_interval = 0.2\n"
        f"[destinations.options]\npath = {json.dumps(str(target))}\n"
        f'schemas = {{ {json.dumps(common.WRITE_KEY)} = "bench" }}\n'
        + (f'memory_limit = "{args.memory_limit}"\nthreads = {args.threads}\n' if kind == "duckdb" else ""))
    server = common.run_relay(procs, config_path, None, workdir / "relay.log")
    proc = server.proc
    started, before = time.monotonic(), delivered(workdir / "queue.db")
    deadline = started + LOAD_TIMEOUT
    while delivered(workdir / "queue.db") < count and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"relay exited:\n{server.log_tail()}")
        time.sleep(POLL)
    elapsed = time.monotonic() - started
    done = delivered(workdir / "queue.db")
    rss = common.peak_rss_bytes(proc.pid)
    procs.stop(proc)
    if done < count:
        raise RuntimeError(f"the relay loaded {done} of {count} events in {LOAD_TIMEOUT} s:\n"
                           f"{server.log_tail()}")
    rows = 2 * (done - before)
    return {"seconds": elapsed, "rows": rows, "rows_per_s": rows / elapsed, "peak_rss_mb": (rss or 0) / 1e6}


def planned(bodies: list[bytes], size: int) -> list[load.Plan]:
    """The rows the relay writes, mapped and fitted by its own schema core (not timed)."""
    decode = json.loads
    catalog = load.Catalog()
    plans = []
    now = datetime.now(UTC)
    for start in range(0, len(bodies), size):
        events = [load.Mapped("bench", m["messageId"], schema.map_message(m))
                  for m in map(decode, bodies[start:start + size])]
        plan = load.plan(events, catalog, now)
        plan.apply(catalog)
        plans.append(plan)
    return plans


def reference_duckdb(plans: list[load.Plan], workdir: Path, args: argparse.Namespace, *, reopen: bool = False
                     ) -> dict[str, Any]:
    """The bare load; ``reopen``: the file closed after each load and opened for the next."""
    import duckdb

    path = workdir / ("bare-reopened.duckdb" if reopen else "bare.duckdb")
    config = {"memory_limit": args.memory_limit, "threads": args.threads}
    con = duckdb.connect(str(path), config=config)
    started = time.perf_counter()
    rows = 0
    con.execute("CREATE SCHEMA bench")
    for n, plan in enumerate(plans):
        if reopen and n:
            con.close()
            con = duckdb.connect(str(path), config=config)
        con.execute("BEGIN TRANSACTION")
        for table in plan.tables:
            if table.create:
                con.execute(create_table(table))  # the tables the relay makes
            con.register("stage", arrow.table(table))
            con.execute(f"INSERT INTO {sql.qualified(table.schema, table.table)} BY NAME SELECT * FROM stage")
            con.unregister("stage")
            rows += table.rows
        con.execute("COMMIT")
    con.close()
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "rows": rows, "rows_per_s": rows / elapsed}


def reference_parquet(plans: list[load.Plan], workdir: Path, *, durable: bool = False) -> dict[str, Any]:
    """The bare write; ``durable``: each file fsynced once written."""
    import pyarrow.parquet as pq

    catalog: dict[tuple[str, str], dict[str, schema.Kind]] = {}
    lake = workdir / ("bare-lake-durable" if durable else "bare-lake")
    started = time.perf_counter()
    rows = 0
    for n, plan in enumerate(plans):
        for t in plan.tables:
            columns = catalog.setdefault((t.schema, t.table), {})
            columns.update(t.add)
            data = arrow.table(t, dict(columns))
            folder = lake / t.table
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"part-{n:05d}.parquet"
            pq.write_table(data, path, compression="snappy")
            if durable:
                descriptor = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(descriptor)
                finally:
                    os.close(descriptor)
            rows += data.num_rows
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "rows": rows, "rows_per_s": rows / elapsed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--only", choices=["duckdb", "parquet"])
    parser.add_argument("--max-events", type=int, default=MAX_EVENTS)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--memory-limit", default="128MB", help="the duckdb type's memory_limit option")
    parser.add_argument("--threads", type=int, default=1, help="the duckdb type's threads option")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    procs = common.Processes()
    results = []
    try:
        for kind in [k for k in ("duckdb", "parquet") if args.only in (None, k)]:
            workdir = Path(tempfile.mkdtemp(prefix=f"relay-wh-{kind}-"))
            try:
                bodies = fill(workdir / "queue.db", args.events)
                relay = run_relay(kind, workdir, args.events, procs, args)
                plans = planned(bodies, args.max_events * args.concurrency)
                del bodies
                bare = (reference_duckdb(plans, workdir, args) if kind == "duckdb"
                        else reference_parquet(plans, workdir))
                result = {"kind": kind, "events": args.events, "relay": relay, "bare": bare,
                          "ratio": relay["rows_per_s"] / bare["rows_per_s"]}
                second = (reference_duckdb(plans, workdir, args, reopen=True) if kind == "duckdb"
                          else reference_parquet(plans, workdir, durable=True))
                result["bare_as_relay"] = second
                result["ratio_as_relay"] = relay["rows_per_s"] / second["rows_per_s"]
                results.append(result)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
    finally:
        procs.stop_all()
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"warehouse load of {args.events:,} queued track events (10 names, 5-20 properties; "
          f"2 rows each); relay max_events {args.max_events}, concurrency {args.concurrency}; "
          f"duckdb memory_limit {args.memory_limit}, threads {args.threads}")
    for r in results:
        relay, bare = r["relay"], r["bare"]
        print(f"{r['kind']:<8} relay {relay['rows']:,} rows in {relay['seconds']:.1f} s = "
              f"{relay['rows_per_s']:,.0f} rows/s, peak RSS {relay['peak_rss_mb']:.0f} MB | bare "
              f"{bare['rows']:,} rows in {bare['seconds']:.1f} s = {bare['rows_per_s']:,.0f} rows/s | "
              f"ratio {r['ratio']:.2f} (target >= {RATIO_TARGET}; RSS target < {RSS_TARGET_MB} MB)")
        again = r["bare_as_relay"]
        what = ("closing the file after each load" if r["kind"] == "duckdb" else "fsyncing each file")
        print(f"{'':<8} bare {what}, as the relay does: {again['rows']:,} rows in {again['seconds']:.1f} s = "
              f"{again['rows_per_s']:,.0f} rows/s | ratio {r['ratio_as_relay']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
