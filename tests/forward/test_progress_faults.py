"""A delivered batch whose progress the queue cannot record is remembered, never sent again.

The faults: another writer holding the queue file's lock past the busy timeout, and a full
disk (a real tmpfs filled to the last byte). Before the fix the forwarder restarted from its
saved cursor and resent the same batch about once a second."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.forwarding import dest, duplicates, post_events, wait_until

pytest_plugins = ["tests.support.forwarding_fixtures"]
pytestmark = pytest.mark.usefixtures("leak_check")


async def test_a_failed_progress_write_never_resends_the_delivered_batch(start_relay, upstreams):
    upstream = await upstreams(default=503)  # down first: the events wait in the queue
    relay = await start_relay(destinations=[dest("seg", upstream.url, max_events=50)])
    ids = [f"lock{i}" for i in range(20)]
    await post_events(relay, ids)
    holder = sqlite3.connect(relay.db_path, isolation_level=None, timeout=10)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the file's write lock
        upstream.default = 200
        await upstream.wait_for(1, timeout=10)
        # the relay's busy timeout (5 s) passes, its progress write fails and is retried; the
        # old code sent the batch again about once a second from then on
        await asyncio.sleep(8.0)
        assert duplicates(upstream.delivered_ids()) == {}
        assert upstream.delivered_ids() == ids
        assert "cannot record progress" in (relay.relay.forwarders[0].last_error or "")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    await wait_until(lambda: relay.rows("SELECT count(*) FROM events") == [(0,)], 15,
                     "progress recorded once the lock is gone")
    assert relay.rows("SELECT cursor > 0 FROM progress WHERE destination = 'seg'") == [(1,)]
    assert upstream.delivered_ids() == ids  # still once each


@contextlib.contextmanager
def small_disk(where: Path, size_mib: int) -> Iterator[Path]:
    """A real file system of ``size_mib`` MiB (tmpfs), mounted for the test and unmounted after."""
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(where)],
                   check=True, timeout=30)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, timeout=30)


def fill(disk: Path) -> Path:
    """Write a file until the disk refuses another byte."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 1 << 12, 1):
            block = b"\0" * size
            while True:
                try:
                    os.write(fd, block)
                except OSError:
                    break
    finally:
        os.close(fd)
    return filler


async def test_a_full_disk_still_records_progress_and_deletes_what_was_delivered(
        start_relay, upstreams, tmp_path):
    with small_disk(tmp_path / "disk", 64) as disk:
        upstream = await upstreams(default=503)
        relay = await start_relay(queue={"path": str(disk / "queue.db"), "dedup_window": 0},
                                  destinations=[dest("seg", upstream.url, max_events=100)])
        ids = [f"full{i}" for i in range(300)]
        await post_events(relay, ids)
        filler = await asyncio.to_thread(fill, disk)
        status, body, _ = await relay.post("/v1/track", {"userId": "u", "event": "E"})
        assert (status, body["code"]) == (503, "queue_full")  # the disk is full: ingest refuses
        upstream.default = 200
        await upstream.wait_for(3, timeout=15)
        await wait_until(lambda: relay.rows("SELECT count(*) FROM events") == [(0,)], 15,
                         "delivered events deleted while the disk is full")
        assert upstream.delivered_ids() == ids and duplicates(upstream.delivered_ids()) == {}
        filler.unlink()
        await wait_until(lambda: _accepts(relay), 15, "ingest answers 200 once space returns")


async def _accepts(relay) -> bool:
    status, _, _ = await relay.post("/v1/track", {"userId": "u", "event": "E"})
    return status == 200
