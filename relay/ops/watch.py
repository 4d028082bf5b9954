"""``relay tap`` and ``relay top``: clients of a running relay's admin listener.

tap prints the debugger's stream as NDJSON on stdout (records lost because the reader fell
behind are reported on stderr); top draws rates, the queue and each destination with rich,
once a second, until ``q`` or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

from relay import config

STREAM_TIMEOUT = 30.0  # seconds without a byte (the relay sends a comment every 5 s) before giving up
POLL_TIMEOUT = 5.0


def admin_url(cfg: config.Config, given: str | None) -> str:
    if given:
        return given.rstrip("/")
    host = cfg.admin.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{'[' + host + ']' if ':' in host else host}:{cfg.admin.port}"


def _request(url: str, token: str) -> urllib.request.Request:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return urllib.request.Request(url, headers=headers)


def stream_lines(base: str, token: str, query: dict[str, str]) -> Iterator[bytes]:
    """The stream's records, each the one line of JSON the relay sent."""
    url = f"{base}/debugger/stream?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(_request(url, token), timeout=STREAM_TIMEOUT) as resp:
        for raw in resp:
            line = raw.rstrip(b"\r\n")
            if line.startswith(b"data: "):
                yield line[6:]


def cmd_tap(args: argparse.Namespace, cfg: config.Config) -> int:
    query = {"outcomes": "1" if args.outcomes else "0"}
    for key, value in (("type", args.type), ("event", args.event), ("user", args.user),
                       ("destination", args.destination), ("writeKey", args.write_key),
                       ("outcome", args.outcome)):
        if value:
            query[key] = value
    base = admin_url(cfg, args.url)
    try:
        out = sys.stdout.buffer
        for line in stream_lines(base, cfg.admin.token, query):
            if line.startswith(b'{"kind":"lost"'):
                record = json.loads(line)
                print(f"relay tap: {record['count']} records lost so far (this reader fell behind)",
                      file=sys.stderr, flush=True)
                continue
            out.write(line + b"\n")  # as the relay encoded it: compact JSON, UTF-8, one line
            out.flush()
    except KeyboardInterrupt:
        return 0
    except urllib.error.HTTPError as exc:
        print(f"relay tap: {base} answered {exc.code}: {exc.read().decode(errors='replace')[:200]}",
              file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"relay tap: cannot read {base}: {exc}", file=sys.stderr)
        return 1
    return 0


# --- top -----------------------------------------------------------------------------------------


def _get(base: str, token: str, path: str) -> Any:
    with urllib.request.urlopen(_request(base + path, token), timeout=POLL_TIMEOUT) as resp:
        return json.loads(resp.read())


def _rate(samples: list[dict[str, Any]], pick: Any, seconds: int = 5) -> float:
    recent = samples[-seconds:]
    return sum(pick(s) for s in recent) / len(recent) if recent else 0.0


def render(series: dict[str, Any] | None, status: dict[str, Any] | None, error: str | None) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = Text("relay top", style="bold")
    head.append("   q quits", style="dim")
    if error:
        return Group(head, Text(f"cannot read the relay: {error}", style="red"))
    assert series is not None and status is not None
    samples = series["samples"]
    rate_in = _rate(samples, lambda s: s["received"])
    rate_out = _rate(samples, lambda s: sum(s["delivered"].values()))
    queue = status["queue"]
    summary = Table.grid(padding=(0, 3))
    summary.add_row(f"in {rate_in:,.1f} ev/s", f"out {rate_out:,.1f} ev/s",
                    f"queue depth {queue['events']:,}", f"oldest {queue['oldest_age_s']:.1f} s",
                    f"dead letters {status['dead_letter']['events']:,}")
    table = Table(box=None, header_style="bold")
    for column in ("destination", "state", "ev/s", "delivered", "pending", "retries", "dead letters",
                   "last error"):
        table.add_column(column)
    pending = {d["name"]: d for d in status.get("destinations", [])}
    colours = {"ok": "green", "retrying": "yellow", "paused": "red"}
    for dest in series["destinations"]:
        name = dest["name"]
        report = pending.get(name, {})
        throughput = _rate(samples, lambda s, n=name: s["delivered"].get(n, 0))
        table.add_row(name, Text(dest["state"], style=colours.get(dest["state"], "")), f"{throughput:,.1f}",
                      f"{dest['delivered']:,}", f"{report.get('pending', 0):,}", f"{dest['retries']:,}",
                      f"{dest['dead_lettered']:,}", (dest["last_error"] or "")[:60])
    return Group(head, summary, Text(""), table)


@contextlib.contextmanager
def _keys() -> Iterator[Any]:
    """Single keypresses from a terminal (None where stdin is not one)."""
    if not sys.stdin.isatty():
        yield None
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _pressed(fd: Any, timeout: float) -> str:
    if fd is None:
        time.sleep(timeout)
        return ""
    ready, _, _ = select.select([fd], [], [], timeout)
    return os.read(fd, 32).decode(errors="replace") if ready else ""


def cmd_top(args: argparse.Namespace, cfg: config.Config) -> int:
    from rich.console import Console
    from rich.live import Live

    base, token = admin_url(cfg, args.url), cfg.admin.token
    console = Console()

    def frame() -> Any:
        try:
            return render(_get(base, token, "/debugger/series"), _get(base, token, "/status"), None)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return render(None, None, str(exc))

    try:
        with _keys() as fd, Live(frame(), console=console, auto_refresh=False, screen=False) as live:
            next_at = time.monotonic() + args.interval
            while True:
                keys = _pressed(fd, max(0.0, next_at - time.monotonic()))
                if "q" in keys.lower():
                    return 0
                if time.monotonic() >= next_at:
                    live.update(frame(), refresh=True)
                    next_at += args.interval
    except KeyboardInterrupt:
        return 0
