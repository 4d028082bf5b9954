"""Drain benchmark: how fast the relay delivers a backlog, and what ingest does meanwhile.

How to run it (from the repository root):

    .venv/bin/python bench/drain.py                        # 1,000,000 events, gzip on and off
    .venv/bin/python bench/drain.py --events 200000 --only gzip
    .venv/bin/python bench/drain.py --json

For each mode (gzip on, gzip off) it:
1. fills a fresh queue file with N queued events (normalised as ingest does and written
   straight into SQLite with the relay's own schema code, as a relay would have left
   them after an outage);
2. starts the discarding upstream (bench/bare.py: reads each request, answers 200) on the
   second CPU and the relay (`python -m relay run`, durability "fsync", one `segment`
   destination pointing at that upstream, max_events 500) on the first CPU;
3. measures the drain: events delivered per second from the moment the relay listens
   until the destination's `delivered` count reaches N, and the relay's peak RSS (VmHWM);
4. repeats with a fresh backlog while the ingest load generator (wrk, else bench/loadgen.py)
   posts 100-event batches for `--ingest-duration` seconds: the ingest events/s and the
   drain events/s while both run.

Targets (issue 3, kept by issue 15): at least 100,000 events/s drained on one core, peak RSS
under 100 MB. The last line printed says whether each is met: the slowest drain without ingest
against the first, the largest peak RSS of all runs against the second.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import ingest as common  # noqa: E402  (bench/ingest.py: processes, servers, load generators)

from relay.ingest.normalise import normalise  # noqa: E402
from relay.queue import store  # noqa: E402
from relay.types import Arrival  # noqa: E402

DRAIN_TARGET_EVENTS = 100_000
RSS_TARGET_MIB = 100
FILL_CHUNK = 20_000
POLL = 0.1
DRAIN_TIMEOUT = 600.0
EVENT = {
    "type": "track", "event": "Order Completed", "userId": "user-{i}", "anonymousId": "anon-{i}",
    "properties": {"orderId": "o-{i}", "total": 42.5, "currency": "USD", "items": 3, "coupon": "SPRING"},
    "context": {"library": {"name": "analytics-python", "version": "2.3.0"}, "ip": "10.1.2.3",
                "locale": "en-US", "timezone": "Europe/Berlin"},
    "timestamp": "2026-11-28T20:00:00.000Z",
}


REQUEST_EVENTS = 100


def fill(path: Path, count: int) -> int:
    """Write ``count`` queued events, normalised exactly as ingest stores them; return the
    bytes of their bodies."""
    template = json.dumps(EVENT, separators=(",", ":"))
    conn = sqlite3.connect(path, isolation_level=None)
    store.prepare(conn, "os", common.QUEUE_MAX_BYTES)
    arrival = Arrival(common.WRITE_KEY, datetime.now(UTC), "10.1.2.3", "2026-11-28T20:00:01.000Z")
    total = 0
    for start in range(0, count, FILL_CHUNK):
        rows = []
        for i in range(start, min(count, start + FILL_CHUNK)):
            message = json.loads(template.replace("{i}", str(i)))
            message["messageId"] = f"drain-{i}"
            event = normalise(message, arrival)
            body = event.encode()
            rows.append((event.received_at, event.write_key, event.message_id, event.type, body))
            total += len(body)
        conn.execute("BEGIN")
        for at in range(0, len(rows), REQUEST_EVENTS):  # a row per 100-event request, as ingest stores them
            store.insert_events(conn, rows[at:at + REQUEST_EVENTS])
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return total


def start_relay(procs: common.Processes, workdir: Path, cpu: int | None, upstream: int, gzip: bool,
                concurrency: int = 1) -> common.Server:
    config_path = workdir / "relay.toml"
    config_path.write_text(
        '[server]\nhost = "127.0.0.1"\nport = 0\nshutdown_timeout = 5.0\n'
        f'[queue]\npath = {json.dumps(str(workdir / "queue.db"))}\ndurability = "fsync"\n'
        f"max_bytes = {common.QUEUE_MAX_BYTES}\n"
        "[admin]\nenabled = false\n"
        '[[destinations]]\nname = "upstream"\ntype = "segment"\n'
        f'endpoint = "http://127.0.0.1:{upstream}"\ngzip = {"true" if gzip else "false"}\n'
        f"max_events = 500\nconcurrency = {concurrency}\n"
    )
    log_path = workdir / "relay.log"
    with open(log_path, "wb") as log:
        proc = procs.start(
            [sys.executable, "-m", "relay", "run", "--config", str(config_path), "--log-level", "info"],
            cpu, stdout=log, stderr=common.subprocess.STDOUT, env=common._child_env(), cwd=common.ROOT,
        )
    server = common.Server("relay", proc, log_path, config_path=config_path)
    server.wait_listening()
    return server


def delivered(db: Path) -> int:
    conn = store.open_read_only(str(db))
    try:
        row = conn.execute("SELECT delivered FROM progress WHERE destination = 'upstream'").fetchone()
        return int(row[0]) if row else 0
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def run_mode(args: argparse.Namespace, gzip: bool, generator: common.Generator | None,
             procs: common.Processes, relay_cpu: int | None, other_cpu: int | None) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="relay-drain-"))
    try:
        db = workdir / "queue.db"
        body_bytes = fill(db, args.events)
        upstream = common.start_bare(procs, workdir, other_cpu)
        relay = start_relay(procs, workdir, relay_cpu, upstream.port, gzip, args.concurrency)
        # the clock starts once the relay listens (opening and checking a large queue file
        # is start-up, not drain); what it delivered before that is not counted
        started, before_start = time.monotonic(), delivered(db)
        ingest: dict[str, Any] | None = None
        if generator is not None:
            template = workdir / "batch.json"
            template.write_text(common.WORKLOADS["batch"].body_template())
            before, t0 = delivered(db), time.monotonic()
            load = generator.run(f"http://127.0.0.1:{relay.port}/v1/batch", template, args.ingest_duration,
                                 f"drain-{time.time_ns()}")
            during = (delivered(db) - before) / (time.monotonic() - t0)
            ingest = {"ingest_events_per_s": load.ok * common.BATCH_EVENTS / load.duration_s,
                      "ingest_p99_ms": load.latency_us.get("p99", 0.0) / 1000,
                      "drain_events_per_s_during_ingest": during, "non_2xx": load.non2xx}
        deadline = started + DRAIN_TIMEOUT
        while delivered(db) < args.events and time.monotonic() < deadline:
            if relay.proc.poll() is not None:
                raise RuntimeError(f"relay exited:\n{relay.log_tail()}")
            time.sleep(POLL)
        elapsed = time.monotonic() - started
        done = delivered(db)
        counted = done - before_start
        rss = common.peak_rss_bytes(relay.proc.pid)
        procs.stop(relay.proc)
        procs.stop(upstream.proc)
        result: dict[str, Any] = {
            "gzip": gzip, "concurrency": args.concurrency, "events": args.events, "delivered": done,
            "seconds": elapsed,
            "events_per_s": counted / elapsed if elapsed else 0.0,
            "peak_rss_mib": rss / 2**20 if rss else None, "body_bytes": body_bytes,
        }
        if ingest is not None:
            result.update(ingest)
        return result
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--only", choices=["gzip", "plain"])
    parser.add_argument("--ingest-duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--no-ingest", action="store_true", help="skip the drain-while-ingesting runs")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="the destination's requests in flight (1, the default, keeps strict order)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    relay_cpu, other_cpu, _ = common.choose_cpus(True)
    procs = common.Processes()
    generator_cls = common.Wrk if shutil.which("wrk") else common.PythonLoad
    generator = generator_cls(procs, other_cpu, 1, args.connections)
    modes = [m for m in (True, False) if args.only is None or args.only == ("gzip" if m else "plain")]
    results = []
    try:
        for gzip in modes:
            results.append(run_mode(args, gzip, None, procs, relay_cpu, other_cpu))
            if not args.no_ingest:
                results.append(run_mode(args, gzip, generator, procs, relay_cpu, other_cpu))
    finally:
        procs.stop_all()
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"drain of {args.events:,} queued events to a discarding upstream; relay pinned to CPU "
          f"{relay_cpu}, upstream and load generator ({generator.name}) on CPU {other_cpu}")
    for r in results:
        line = (f"gzip={'on ' if r['gzip'] else 'off'}  drained {r['delivered']:,} in {r['seconds']:.1f} s"
                f" = {r['events_per_s']:,.0f} events/s, peak RSS {r['peak_rss_mib']:.0f} MiB")
        if "ingest_events_per_s" in r:
            line += (f"; with ingest: {r['ingest_events_per_s']:,.0f} ingest events/s (p99 "
                     f"{r['ingest_p99_ms']:.1f} ms), drain "
                     f"{r['drain_events_per_s_during_ingest']:,.0f} events/s")
        print(line)
    # Issue 3's targets, which issue 15 keeps: judged on the drains without ingest (the slowest
    # of them) and on the largest peak RSS of every run, ingest running or not.
    drains = [r["events_per_s"] for r in results if "ingest_events_per_s" not in r]
    rss = [r["peak_rss_mib"] for r in results if r["peak_rss_mib"] is not None]
    drain_met = "met" if min(drains) >= DRAIN_TARGET_EVENTS else "NOT met"
    rss_shown = f"largest {max(rss):.0f} MiB" if rss else "not read"
    rss_met = "met" if rss and max(rss) < RSS_TARGET_MIB else "NOT met"
    print(f"targets: drain >= {DRAIN_TARGET_EVENTS:,} events/s: slowest {min(drains):,.0f} -> {drain_met}; "
          f"peak RSS < {RSS_TARGET_MIB} MB: {rss_shown} -> {rss_met}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
