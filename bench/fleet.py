"""Fleet benchmark: the relay draining to a local JetStream, and consuming from it, against nats-py alone.

How to run it (from the repository root, after `make test` installed the fleet extra and
nats-server):

    .venv/bin/python bench/fleet.py                     # 1,000,000 events
    .venv/bin/python bench/fleet.py --events 100000

One nats-server (JetStream, file storage, ``sync_interval: always``: fsync before every
ack) on the second CPU; the relay and the reference on the first, one after the other,
on the same server, the same payloads and the same acks in flight:

1. edge: N queued events (written as ingest stores them) drained by a relay subprocess
   to a ``nats`` destination (max_events 500, concurrency 2: 1,000 PubAcks in flight at
   most); events/s from the moment the relay listens until its progress reaches N, and
   its peak RSS. Reference: nats-py publishing the same N bodies, subjects and headers
   with ``publish_async``, 500 a batch and two batches in flight.
2. central: the N messages consumed by a relay subprocess with a ``nats`` source (fetch
   500, ack after commit, fsync durability) into its queue; events/s until its queue
   holds N. Reference: nats-py pulling 500 a fetch from a durable consumer and acking
   each message.

Targets (issue 11): edge drain at least 0.8 of the reference, peak RSS under 100 MB;
central at least 0.5 of the reference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import drain  # noqa: E402  (bench/drain.py: filling a queue file)
import ingest as common  # noqa: E402

from relay.queue import store  # noqa: E402
from relay.sinks.segment import as_sent  # noqa: E402
from tests.support.nats_server import NatsServer  # noqa: E402

STREAM = "BENCH"
BATCH = 500
IN_FLIGHT = 2
POLL = 0.2
TIMEOUT = 3600.0
SETTLE = 2.0  # seconds for the server to finish deleting the previous stream's files


def relay_toml(workdir: Path, url: str, edge: bool) -> Path:
    path = workdir / ("edge.toml" if edge else "central.toml")
    queue = workdir / ("edge.db" if edge else "central.db")
    lines = ['[server]\nhost = "127.0.0.1"\nport = 0\nshutdown_timeout = 5.0',
             f'[queue]\npath = {json.dumps(str(queue))}\ndurability = "fsync"\n'
             f"max_bytes = {common.QUEUE_MAX_BYTES}",
             "[admin]\nenabled = false"]
    if edge:
        lines.append(f'[[destinations]]\nname = "js"\ntype = "nats"\nmax_events = {BATCH}\n'
                     f"concurrency = {IN_FLIGHT}\ntimeout = 30.0\n[destinations.options]\n"
                     f'servers = ["{url}"]\nstream = "{STREAM}"\ncreate_stream = true\n'
                     f'subject = "relay.{{write_key}}.{{type}}"')
    else:
        lines.append(f'[[sources]]\nname = "js"\ntype = "nats"\n[sources.options]\nservers = ["{url}"]\n'
                     f'stream = "{STREAM}"\ndurable = "central"\nbatch = {BATCH}')
    path.write_text("\n".join(lines) + "\n")
    return path


def start(procs: common.Processes, config: Path, cpu: int | None) -> common.Server:
    return common.run_relay(procs, config, cpu, config.with_suffix(".log"))


def scalar(db: Path, sql: str) -> int:
    try:
        conn = store.open_read_only(str(db))
    except sqlite3.OperationalError:
        return 0
    try:
        row = conn.execute(sql).fetchone()
        return int(row[0]) if row and row[0] is not None else 0
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def wait_for(db: Path, sql: str, count: int, relay: common.Server) -> float:
    started = time.monotonic()
    while scalar(db, sql) < count:
        if relay.proc.poll() is not None:
            raise RuntimeError(f"relay exited:\n{relay.log_tail()}")
        if time.monotonic() - started > TIMEOUT:
            raise TimeoutError("the relay did not finish")
        time.sleep(POLL)
    return time.monotonic() - started


async def reset_stream(url: str) -> None:
    import nats
    from nats.js.api import DiscardPolicy, StorageType, StreamConfig

    nc = await nats.connect(url)
    try:
        js = nc.jetstream(timeout=30)
        try:
            await js.delete_stream(STREAM)
        except Exception:
            pass
        await js.add_stream(StreamConfig(name=STREAM, subjects=["relay.>"], storage=StorageType.FILE,
                                         duplicate_window=120.0,
                                         discard=DiscardPolicy.NEW))
    finally:
        await nc.close()


def payloads(db: Path) -> list[tuple[str, bytes, dict[str, str]]]:
    """What the relay publishes for each queued event: subject, body, headers."""
    conn = store.open_read_only(str(db))
    try:
        rows = [(e.write_key, e.message_id, e.type, e.body) for e in store.read_all_after(conn, 0, 1 << 62)]
    finally:
        conn.close()
    return [(f"relay.{key}.{kind}", as_sent(body),
             {"Nats-Msg-Id": f"{key}:{mid}", "writeKey": key, "type": kind, "Nats-Expected-Stream": STREAM})
            for key, mid, kind, body in rows]


async def bare_publish(url: str, messages: list[tuple[str, bytes, dict[str, str]]]) -> float:
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream(timeout=30, publish_async_max_pending=BATCH * IN_FLIGHT)
    try:
        started = time.monotonic()
        inflight: deque[list[asyncio.Future[Any]]] = deque()
        for at in range(0, len(messages), BATCH):
            if len(inflight) >= IN_FLIGHT:
                await asyncio.gather(*inflight.popleft())
            inflight.append([await js.publish_async(s, b, headers=h) for s, b, h in messages[at:at + BATCH]])
        while inflight:
            await asyncio.gather(*inflight.popleft())
        return time.monotonic() - started
    finally:
        await nc.close()


async def bare_consume(url: str, count: int) -> float:
    import nats

    nc = await nats.connect(url)
    try:
        sub = await nc.jetstream(timeout=30).pull_subscribe("", durable="reference", stream=STREAM)
        got, started = 0, time.monotonic()
        while got < count:
            for msg in await sub.fetch(BATCH, timeout=5):
                await msg.ack()
                got += 1
        await nc.flush()
        return time.monotonic() - started
    finally:
        await nc.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    relay_cpu, other_cpu, _ = common.choose_cpus(True)
    procs = common.Processes()
    workdir = Path(tempfile.mkdtemp(prefix="relay-fleet-"))
    server = NatsServer(workdir / "nats", max_file_store="16GB")
    n = args.events
    try:
        server.start()
        assert server.proc is not None
        if other_cpu is not None:
            os.sched_setaffinity(server.proc.pid, {other_cpu})
        edge_db = workdir / "edge.db"
        drain.fill(edge_db, n)
        messages = payloads(edge_db)
        if relay_cpu is not None:
            os.sched_setaffinity(0, {relay_cpu})  # the references run where the relay runs

        # the reference first, on a stream of its own; then the relay, on a fresh one that
        # the central tier then consumes
        asyncio.run(reset_stream(server.url))
        bare_edge = n / asyncio.run(bare_publish(server.url, messages))
        del messages
        asyncio.run(reset_stream(server.url))
        time.sleep(SETTLE)
        edge = start(procs, relay_toml(workdir, server.url, edge=True), relay_cpu)
        edge_s = wait_for(edge_db, "SELECT delivered FROM progress WHERE destination = 'js'", n, edge)
        edge_rss = common.peak_rss_bytes(edge.proc.pid) or 0
        procs.stop(edge.proc)

        bare_central = n / asyncio.run(bare_consume(server.url, n))
        central_db = workdir / "central.db"
        central = start(procs, relay_toml(workdir, server.url, edge=False), relay_cpu)
        central_s = wait_for(central_db, "SELECT coalesce(sum(count), 0) FROM batches", n, central)
        central_rss = common.peak_rss_bytes(central.proc.pid) or 0
        procs.stop(central.proc)
    finally:
        procs.stop_all()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    edge_rate, central_rate = n / edge_s, n / central_s
    print(f"fleet benchmark, {n:,} events of {drain.EVENT['type']} (about 600 bytes each); nats-server "
          f"{'on CPU ' + str(other_cpu) if other_cpu is not None else 'unpinned'} "
          "with sync_interval: always; "
          f"relay and references on CPU {relay_cpu}")
    print(f"edge drain:    relay {edge_rate:,.0f} events/s, nats-py publish_async {bare_edge:,.0f} events/s "
          f"({BATCH * IN_FLIGHT} acks in flight), ratio {edge_rate / bare_edge:.2f} (target 0.8); "
          f"relay peak RSS {edge_rss / 2**20:.0f} MiB (target < 100)")
    print(f"central tier:  relay {central_rate:,.0f} events/s into its queue, nats-py pull+ack "
          f"{bare_central:,.0f} events/s, ratio {central_rate / bare_central:.2f} (target 0.5); "
          f"relay peak RSS {central_rss / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
