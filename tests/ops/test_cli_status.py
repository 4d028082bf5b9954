"""``relay status [--json]`` reads the queue file, whether or not a relay has it open."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import urllib.request
from pathlib import Path
from typing import Any

STATUS_KEYS = {("queue", "events"), ("queue", "bytes"), ("queue", "oldest_age_s"), ("dead_letter", "events")}


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}


def config_file(tmp_path: Path, queue_path: Path) -> Path:
    path = tmp_path / "status.toml"
    path.write_text(f'[server]\nport = 0\n[queue]\npath = "{queue_path}"\n[admin]\nenabled = false\n')
    return path


async def status(config: Path, *flags: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "status", "--config", str(config), *flags,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env(), cwd=config.parent)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def status_json(config: Path) -> dict[str, Any]:
    code, out, err = await status(config, "--json")
    assert code == 0, err
    report: dict[str, Any] = json.loads(out)
    for section, key in STATUS_KEYS:
        assert key in report[section], (section, key)
    return report


def figures(report: dict[str, Any]) -> tuple[Any, ...]:
    return (report["queue"]["events"], report["queue"]["bytes"], report["dead_letter"]["events"])


async def fill(relay: Any) -> None:
    """Four events and two dead letters."""
    status_, _, _ = await relay.post("/v1/track", {"userId": "u", "event": "One", "messageId": "m1"})
    assert status_ == 200
    status_, body, _ = await relay.post("/v1/batch", {"batch": [
        {"type": "track", "userId": "u", "event": "Two", "messageId": "m2"},
        {"type": "track", "userId": "u", "messageId": "no-event"},
        {"type": "identify", "userId": "u", "messageId": "m3"},
        {"type": "page", "messageId": "no-user"},
        {"type": "group", "userId": "u", "groupId": "g", "messageId": "m4"},
    ]})
    assert (status_, body["accepted"], body["rejected"]) == (200, 3, 2)


def file_bytes_in_use(relay) -> int:
    """queue.bytes is the queue file's size in use (what max_bytes caps), read here independently."""
    [(size,)] = relay.rows("SELECT page_size * (page_count - freelist_count)"
                           " FROM pragma_page_size, pragma_page_count, pragma_freelist_count")
    return int(size)


async def test_status_json_reports_the_queue_while_the_relay_runs_and_after_it_stops(tmp_path, start_relay):
    relay = await start_relay()
    config = config_file(tmp_path, Path(relay.db_path))
    await fill(relay)
    stored_bytes = file_bytes_in_use(relay)
    assert stored_bytes >= relay.rows("SELECT sum(length(body)) FROM events")[0][0]

    running = await status_json(config)
    assert figures(running) == (4, stored_bytes, 2)
    assert isinstance(running["queue"]["oldest_age_s"], int | float)
    assert 0 <= running["queue"]["oldest_age_s"] < 3600

    await relay.relay.stop()
    stopped = await status_json(config)
    assert figures(stopped) == (4, file_bytes_in_use(relay), 2)
    assert stopped["queue"]["oldest_age_s"] >= running["queue"]["oldest_age_s"]


async def test_status_json_on_an_empty_queue_reports_zeros(tmp_path, start_relay):
    relay = await start_relay()
    await relay.relay.stop()
    report = await status_json(config_file(tmp_path, Path(relay.db_path)))
    assert figures(report) == (0, file_bytes_in_use(relay), 0)  # an empty queue still has its schema
    assert report["queue"]["oldest_age_s"] == 0


async def test_status_reads_a_queue_left_by_a_killed_relay(tmp_path, relay_process):
    queue = tmp_path / "killed" / "queue.db"
    proc = relay_process(f'[server]\nport = 0\n[queue]\npath = "{queue}"\ndurability = "fsync"\n'
                         '[admin]\nenabled = false\n')
    port = await asyncio.to_thread(proc.start)

    def post(path: str, body: dict[str, Any]) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)

    for i in range(5):
        message = {"userId": "u", "event": "E", "messageId": f"k{i}"}
        assert await asyncio.to_thread(post, "/v1/track", message) == 200
    assert await asyncio.to_thread(post, "/v1/batch", {"batch": [{"type": "alias", "userId": "u"}]}) == 200
    proc.kill()

    report = await status_json(config_file(tmp_path, queue))
    assert (report["queue"]["events"], report["dead_letter"]["events"]) == (5, 1)
    assert report["queue"]["bytes"] > 0


async def test_status_text_names_each_figure(tmp_path, start_relay):
    relay = await start_relay()
    await fill(relay)
    stored_bytes = file_bytes_in_use(relay)
    code, out, err = await status(config_file(tmp_path, Path(relay.db_path)))
    assert code == 0, err
    assert out.splitlines()[0].split() == ["queue", relay.db_path]
    assert re.search(r"^\s+events\s+(\d+)$", out, re.M).group(1) == "4"  # type: ignore[union-attr]
    assert re.search(r"^\s+bytes\s+(\d+)\b", out, re.M).group(1) == str(stored_bytes)  # type: ignore[union-attr]
    assert re.search(r"^dead letters\s+(\d+)$", out, re.M).group(1) == "2"  # type: ignore[union-attr]


async def test_status_reads_a_queue_whose_path_has_uri_characters(tmp_path, start_relay):
    # "#" and "?" end the path of a file: URI; the queue path is a plain file path.
    queue = tmp_path / "data#1" / "queue?.db"
    relay = await start_relay(queue={"path": str(queue)})
    await fill(relay)
    report = await status_json(config_file(tmp_path, queue))
    assert figures(report)[0::2] == (4, 2)


async def test_status_without_a_queue_file_fails_and_creates_none(tmp_path):
    queue = tmp_path / "nothing" / "queue.db"
    code, out, err = await status(config_file(tmp_path, queue), "--json")
    assert code != 0
    assert out == ""
    assert f"no queue file at {queue}" in err
    assert not queue.exists() and not queue.parent.exists()


async def test_status_does_not_write_to_the_queue_file(tmp_path, start_relay):
    relay = await start_relay()
    await fill(relay)
    await relay.relay.stop()
    before = {p.name: p.read_bytes() for p in Path(relay.db_path).parent.iterdir()
              if p.name.startswith("queue.db")}
    await status_json(config_file(tmp_path, Path(relay.db_path)))
    after = {p.name: p.read_bytes() for p in Path(relay.db_path).parent.iterdir()
             if p.name.startswith("queue.db")}
    assert after.get("queue.db") == before["queue.db"]


async def test_status_with_a_bad_config_names_the_problem(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[queue]\nmax_bytes = 1\n")
    code, _, err = await status(bad, "--json")
    assert code == 2
    assert str(bad) in err and "$.queue.max_bytes" in err
