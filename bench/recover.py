"""`relay recover` figures: duplicates, rows salvaged from damaged files, ingest beside it.

How to run it (from the repository root):

    .venv/bin/python bench/recover.py                  # all four figures
    .venv/bin/python bench/recover.py --only live --live-events 200000
    .venv/bin/python bench/recover.py --json

1. **duplicates**: a moved-aside file of 20,000 events whose one `file` destination had
   delivered the first half; `relay recover` into a fresh live queue with that destination
   configured; counts the recovered events queued for it that it had already delivered.
2. **truncated**: 20,000 events, the file cut at 60% of its length; rows recovered against
   the rows whose bytes are still in the file (every body carries a unique marker).
3. **zeroed header**: 20,000 events, the first 100 bytes zeroed; rows recovered.
4. **live**: a relay (`python -m relay run`) on the live queue, one client posting a track
   call after the other, while `relay recover` salvages a file of 200,000 events: every
   answer's status and the longest answer seen.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from relay.queue import store  # noqa: E402

FILL_CHUNK = 20_000


def body(i: int) -> bytes:
    return json.dumps({"type": "track", "event": "Order Completed", "userId": f"user-{i}",
                       "messageId": f"m{i:07d}", "properties": {"pad": "x" * 160}},
                      separators=(",", ":")).encode()


def fill(path: Path, count: int, delivered: int = 0, destination: str = "out") -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    store.prepare(conn, "os", 1 << 34)
    store.register_destinations(conn, [destination], time.time())
    for start in range(0, count, FILL_CHUNK):
        conn.execute("BEGIN")
        store.insert_events(conn, [(1.0 + i, "wk", f"m{i:07d}", "track", body(i))
                                   for i in range(start, min(count, start + FILL_CHUNK))])
        conn.execute("COMMIT")
    if delivered:
        conn.execute("UPDATE progress SET cursor = ?, delivered = ?", (delivered, delivered))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def write_config(folder: Path, queue: Path, port: int = 0) -> Path:
    config = folder / "relay.toml"
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n'
        f'[queue]\npath = "{queue}"\ndurability = "fsync"\n'
        f'[admin]\nhost = "127.0.0.1"\nport = 0\n'
        f'[[destinations]]\nname = "out"\ntype = "file"\npath = "{folder / "out"}"\n')
    return config


def recover(config: Path, source: Path) -> tuple[int, dict[str, Any] | str]:
    done = subprocess.run([sys.executable, "-m", "relay", "recover", str(source), "--json",
                           "--config", str(config)], capture_output=True, text=True, cwd=ROOT)
    try:
        return done.returncode, json.loads(done.stdout)
    except ValueError:
        return done.returncode, (done.stdout + done.stderr).strip()[-300:]


def live_rows(queue: Path) -> list[tuple[str, str | None]]:
    conn = sqlite3.connect(queue)
    try:
        return [(event.message_id, target) for event, target in store.queued(conn)]
    except sqlite3.OperationalError:  # recover never created the live queue
        return []
    finally:
        conn.close()


def duplicates(folder: Path) -> dict[str, Any]:
    old, live = folder / "old.db", folder / "live.db"
    fill(old, 20_000, delivered=10_000)
    code, counts = recover(write_config(folder, live), old)
    rows = live_rows(live)
    # ids are 1-based: event m{i} has id i + 1; "out" finished ids 1..10,000
    again = sum(1 for message_id, target in rows
                if target in (None, "out") and int(message_id[1:]) + 1 <= 10_000)
    return {"exit": code, "queued": len(rows), "duplicates_for_out": again, "counts": counts}


def readable_markers(path: Path, count: int) -> int:
    found = {int(m) for m in re.findall(rb'"messageId":"m(\d{7})"', path.read_bytes())}
    return sum(1 for i in found if i < count)


def damaged(folder: Path, how: str) -> dict[str, Any]:
    old, live = folder / f"{how}.db", folder / f"{how}-live.db"
    fill(old, 20_000)
    if how == "truncated":
        size = old.stat().st_size
        with old.open("r+b") as f:
            f.truncate(int(size * 0.6) // 4096 * 4096)
    else:
        with old.open("r+b") as f:
            f.write(b"\0" * 100)
    readable = readable_markers(old, 20_000)
    code, counts = recover(write_config(folder, live), old)
    return {"exit": code, "rows_in_readable_pages": readable, "recovered": len(live_rows(live)),
            "counts": counts}


def post_loop(url: str, stop: threading.Event, out: dict[str, Any]) -> None:
    statuses: dict[int, int] = {}
    worst = 0.0
    payload = json.dumps({"userId": "u", "event": "E"}).encode()
    while not stop.is_set():
        request = urllib.request.Request(url + "/v1/track", data=payload,
                                         headers={"Content-Type": "application/json"})
        began = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                status = resp.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except OSError:
            status = -1
        worst = max(worst, time.monotonic() - began)
        statuses[status] = statuses.get(status, 0) + 1
    out.update(statuses=statuses, max_latency_s=round(worst, 3))


def live(folder: Path, events: int) -> dict[str, Any]:
    old, queue = folder / "big.db", folder / "queue.db"
    fill(old, events)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = write_config(folder, queue, port)
    log = (folder / "relay.log").open("wb")
    env = {**os.environ, "RELAY_ADMIN_PORT": "0"}
    relay = subprocess.Popen([sys.executable, "-m", "relay", "run", "--config", str(config)],
                             stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(url + "/v1/track", data=b"{}", timeout=1)
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                time.sleep(0.1)
        stop, out = threading.Event(), {}  # type: ignore[var-annotated]
        poster = threading.Thread(target=post_loop, args=(url, stop, out))
        poster.start()
        time.sleep(1.0)
        began = time.monotonic()
        code, counts = recover(config, old)
        took = time.monotonic() - began
        time.sleep(0.5)
        stop.set()
        poster.join()
    finally:
        relay.terminate()
        relay.wait(timeout=30)
    return {"exit": code, "recover_s": round(took, 1), "counts": counts, **out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("duplicates", "truncated", "zeroed", "live"))
    parser.add_argument("--live-events", type=int, default=200_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="relay-recover-") as tmp:
        folder = Path(tmp)
        for name in ("duplicates", "truncated", "zeroed", "live"):
            if args.only and args.only != name:
                continue
            part = folder / name
            part.mkdir()
            if name == "duplicates":
                results[name] = duplicates(part)
            elif name == "live":
                results[name] = live(part, args.live_events)
            else:
                results[name] = damaged(part, name)
            if not args.json:
                print(name, json.dumps(results[name]), flush=True)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
