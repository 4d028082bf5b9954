"""The ``file`` destination: NDJSON files, rotated by size, optionally gzipped (one member
per batch), with a torn last record trimmed when the relay starts."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Any

import pytest

from tests.support.forwarding import post_events, wait_until

pytest_plugins = ["tests.support.forwarding_fixtures"]
pytestmark = pytest.mark.usefixtures("leak_check")

ROTATE = 2048


def file_dest(folder: Path, **options: Any) -> dict[str, Any]:
    return {"name": "file", "type": "file", "path": str(folder), "flush_interval": 0.05,
            "max_events": 5, "rotate_bytes": ROTATE, "gzip": False, **options}


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("events-*") if p.is_file())


def read_lines(path: Path) -> list[bytes]:
    raw = gzip.open(path).read() if path.name.endswith(".gz") else path.read_bytes()
    assert raw == b"" or raw.endswith(b"\n"), path
    return raw.splitlines()


def all_lines(folder: Path) -> list[bytes]:
    return [line for path in files(folder) for line in read_lines(path)]


def gzip_members(path: Path) -> int:
    data, count = path.read_bytes(), 0
    while data:
        d = zlib.decompressobj(wbits=31)
        d.decompress(data)
        assert d.eof, f"{path}: a truncated gzip member"
        data, count = d.unused_data, count + 1
    return count


@pytest.mark.parametrize("compress", [False, True])
async def test_events_are_written_as_ndjson_in_order_and_rotated_by_size(start_relay, tmp_path, compress):
    folder = tmp_path / "out"
    relay = await start_relay(destinations=[file_dest(folder, gzip=compress)])
    ids = [f"f{i:03d}" for i in range(60)]
    await post_events(relay, ids[:30], chunk=7)
    await post_events(relay, ids[30:], chunk=30)
    await wait_until(lambda: folder.is_dir() and len(all_lines(folder)) >= 60, 10, "60 lines")
    await wait_until(lambda: relay.rows("SELECT count(*) FROM events") == [(0,)], 10, "an empty queue")

    events = [json.loads(line) for line in all_lines(folder)]
    assert [e["messageId"] for e in events] == ids  # every event once, in queue order
    assert all(e["type"] == "track" and e["properties"] == {"n": e["messageId"]} for e in events)
    assert all("receivedAt" in e and "timestamp" in e for e in events)

    paths = files(folder)
    suffix = ".ndjson.gz" if compress else ".ndjson"
    assert all(p.name.endswith(suffix) for p in paths)
    assert len(paths) >= 2, "rotation by size never happened"
    biggest_batch = 5 * max(len(line) + 1 for line in all_lines(folder))
    for path in paths[:-1]:  # a file is closed once it has reached rotate_bytes
        assert ROTATE <= path.stat().st_size < ROTATE + biggest_batch
    if compress:  # one gzip member per batch, and gzip.open reads them all
        assert max(gzip_members(p) for p in paths) > 1
    assert relay.rows("SELECT delivered FROM progress WHERE destination = 'file'") == [(60,)]


def torn_member() -> bytes:
    whole = gzip.compress(b'{"messageId":"torn-gz"}\n')
    return whole[: len(whole) // 2]


async def test_a_torn_tail_is_trimmed_at_start_and_new_events_follow(start_relay, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    plain = folder / "events-20200101T00-0001.ndjson"
    plain.write_bytes(b'{"messageId":"old1"}\n{"messageId":"old2"}\n{"messageId":"tor')
    intact = folder / "events-20200101T00-0002.ndjson"
    intact.write_bytes(b'{"messageId":"old3"}\n')
    packed = folder / "events-20200101T00-0003.ndjson.gz"
    packed.write_bytes(gzip.compress(b'{"messageId":"old4"}\n') + gzip.compress(b'{"messageId":"old5"}\n')
                       + torn_member())
    relay = await start_relay(destinations=[file_dest(folder)])

    assert plain.read_bytes() == b'{"messageId":"old1"}\n{"messageId":"old2"}\n'
    assert intact.read_bytes() == b'{"messageId":"old3"}\n'
    assert gzip_members(packed) == 2
    assert read_lines(packed) == [b'{"messageId":"old4"}', b'{"messageId":"old5"}']

    await post_events(relay, ["new1", "new2"])
    await wait_until(lambda: len(files(folder)) == 4 and len(read_lines(files(folder)[-1])) == 2, 10,
                     "a new file with the new events")
    new = files(folder)[-1]
    assert new not in (plain, intact, packed)  # old files are never appended to
    assert [json.loads(line)["messageId"] for line in read_lines(new)] == ["new1", "new2"]
