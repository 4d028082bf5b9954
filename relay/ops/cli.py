"""The ``relay`` command line: run | check | status | reload | tap | top | dlq | export | recover | send |
sql | version."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from relay import __version__, config
from relay.errors import ConfigError, ListenError, QueueError
from relay.ops import logs
from relay.queue import deadletters
from relay.queue.deadletters import DeadLetterFilter
from relay.queue.files import QueueFile
from relay.types import Arrival, Event, Live, StatusReport

DEFAULT_CONFIG_NAMES = ("relay.toml",)
EXIT_USAGE = 2


def _config_path(given: str | None) -> str | None:
    """--config, else $RELAY_CONFIG, else ./relay.toml when present, else the defaults."""
    if given:
        return given
    if os.environ.get("RELAY_CONFIG"):
        return os.environ["RELAY_CONFIG"]
    for name in DEFAULT_CONFIG_NAMES:
        if Path(name).is_file():
            return name
    return None


def load_config(given: str | None) -> config.Config:
    loaded = config.load(_config_path(given))
    return config.with_state_directory(loaded, os.environ)


def pid_path(cfg: config.Config) -> Path:
    return Path(cfg.queue.path + ".pid")


def _emit(data: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    print(json.dumps(data, indent=2, default=str) if as_json else text(data))


@contextmanager
def _progress(total: int | None, what: str) -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal; silence otherwise."""
    from tqdm import tqdm

    with tqdm(total=total, desc=what, unit="ev", disable=not sys.stderr.isatty(), file=sys.stderr) as bar:
        def advance(n: int) -> None:
            bar.update(n)

        yield advance


@contextmanager
def _open_queue(cfg: config.Config, write: bool = False) -> Iterator[QueueFile]:
    with QueueFile.open(cfg.queue.path, write) as queue:
        yield queue


# --- run, check, status, reload, version -------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from relay import process

    cfg = load_config(args.config)
    level = args.log_level or cfg.log.level
    logs.setup(level, {"json": True, "text": False, "auto": None}[cfg.log.format])
    process.run(cfg, _config_path(args.config), pid_path(cfg))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """What ``relay run`` would do short of listening: the config, every plugin loaded and
    unloaded, and with ``--connect`` each destination opened with its credentials
    (``relay.ops.connect``)."""
    import asyncio

    from relay.ops import connect
    from relay.plugins.pipeline import Pipeline

    cfg = load_config(args.config)
    pipeline = Pipeline.from_config(cfg)  # plugins are found and take their options

    async def prove() -> list[connect.Reached]:
        await pipeline.start()  # each plugin's load(), as at start-up; a failure names it
        await pipeline.stop()
        if not args.connect:
            return []
        return await connect.reach_all(cfg.destinations, args.connect_timeout)

    reached = asyncio.run(prove())
    print(json.dumps(config.masked(cfg), indent=2))
    for result in reached:
        print(result.line(), file=sys.stderr)
    failed = [r.name for r in reached if not r.ok]
    if failed:
        print(f"relay: {len(failed)} of {len(reached)} destinations failed the connection check: "
              f"{', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"config OK ({_config_path(args.config) or 'embedded defaults'})", file=sys.stderr)
    return 0


def status_report(cfg: config.Config) -> StatusReport:
    with _open_queue(cfg) as queue:
        return queue.status([Live(d.name, d.type) for d in cfg.destinations], cfg.queue.max_bytes)


def cmd_status(args: argparse.Namespace) -> int:
    _emit(status_report(load_config(args.config)).to_builtins(), args.json, _text_status)
    return 0


def _text_status(report: dict[str, Any]) -> str:
    q, d = report["queue"], report["dead_letter"]
    lines = [
        f"queue         {q['path']}",
        f"  events      {q['events']}",
        f"  bytes       {q['bytes']} in use of the file (cap {q['max_bytes']})",
        f"  oldest age  {q['oldest_age_s']} s",
        f"  evicted     {q['evicted_events']}",
        f"dead letters  {d['events']}",
    ]
    if q.get("corrupt_files"):
        lines.append(f"corrupt files moved aside: {q['corrupt_files']} (last: {q['last_corrupt_file']})")
    for dest in report.get("destinations", []):
        lines.append(
            f"destination {dest['name']} ({dest['type']}): {dest['state']}, pending {dest['pending']}, "
            f"delivered {dest['delivered']}, dead-lettered {dest['dead_lettered']}, "
            f"oldest pending {dest['oldest_pending_age_s']} s"
            + (f", last error: {dest['last_error']}" if dest["last_error"] else "")
        )
    return "\n".join(lines)


def cmd_reload(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)  # a config that does not load is never sent
    pid_file = pid_path(cfg)
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        print(f"relay: cannot signal the running relay ({pid_file}): {exc}", file=sys.stderr)
        return 1
    print(f"sent SIGHUP to relay (pid {pid})")
    return 0


def cmd_tap(args: argparse.Namespace) -> int:
    from relay.ops import watch

    return watch.cmd_tap(args, load_config(args.config))


def cmd_top(args: argparse.Namespace) -> int:
    from relay.ops import watch

    return watch.cmd_top(args, load_config(args.config))


def cmd_sdk_install(args: argparse.Namespace) -> int:
    from relay.ingest import cdn

    cfg = load_config(args.config)
    try:
        folder = cdn.install(cfg, args.version, timeout=args.timeout)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 1
    print(f"analytics.js installed in {folder}")
    if cfg.server.sdk_dir and Path(cfg.server.sdk_dir).resolve() != folder.resolve():
        print(f"note: [server] sdk_dir = {cfg.server.sdk_dir!r} is what the relay serves", file=sys.stderr)
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    print(f"relay {__version__}")
    return 0


# --- dead letters, export, recover -------------------------------------------------------------


def _filter(args: argparse.Namespace) -> DeadLetterFilter:
    destination = deadletters.INGEST if getattr(args, "ingest", False) else args.destination
    return DeadLetterFilter(destination, args.reason, tuple(getattr(args, "ids", None) or ()))


def cmd_dlq_list(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    with _open_queue(cfg) as queue:
        rows = queue.dead_letters(_filter(args), args.limit)
    _emit(rows, args.json, lambda rs: "\n".join(
        f"{r['id']:>8}  {r['failed_at']}  {r['destination']:<16} {r['message_id'] or '-':<38} {r['reason']}"
        for r in rs) or "no dead letters")
    return 0


def cmd_dlq_show(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    with _open_queue(cfg) as queue:
        rows = queue.dead_letters(DeadLetterFilter(ids=(args.id,)), 1, with_body=True)
    if not rows:
        print(f"relay: no dead letter {args.id}", file=sys.stderr)
        return 1
    print(json.dumps(rows[0], indent=2))
    return 0


def _require_filter(args: argparse.Namespace) -> DeadLetterFilter:
    flt = _filter(args)
    if flt == DeadLetterFilter() and not args.all:
        raise SystemExit("relay: name --destination, --ingest, --reason or ids, or say --all")
    return flt


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    flt = _require_filter(args)
    with _admission(cfg) as admit, _open_queue(cfg, write=True) as queue, \
            _progress(queue.dead_letter_count(flt), "replay") as bar:
        result = queue.replay(flt, admit, bar)
    _emit({"queued": result.queued, "still_invalid": result.still_invalid}, args.json,
          lambda r: f"queued {r['queued']} dead letters again; {r['still_invalid']} still invalid")
    return 0


@contextmanager
def _admission(cfg: config.Config) -> Iterator[deadletters.Admit]:
    """Ingest admission with the configured plugins, on an event loop of this command's
    own, as a replay's ``admit`` step."""
    import asyncio

    from relay.ingest import admission
    from relay.plugins.pipeline import Pipeline

    pipeline = Pipeline.from_config(cfg)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(pipeline.start())

        def admit(message: object, arrival: Arrival) -> list[Event] | None:
            admitted = loop.run_until_complete(admission.admit([message], arrival, pipeline))
            return None if admitted.dead else admitted.events

        yield admit
    finally:
        loop.run_until_complete(pipeline.stop())
        loop.close()


def cmd_dlq_purge(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    flt = _require_filter(args)
    with _open_queue(cfg, write=True) as queue:
        deleted = queue.purge(flt)
    _emit({"deleted": deleted}, args.json, lambda r: f"deleted {r['deleted']} dead letters")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")
    written = 0
    try:
        with _open_queue(cfg) as queue:
            if args.what == "dead-letters":
                flt = _filter(args)
                total = queue.dead_letter_count(flt)
                rows: Iterator[Any] = queue.each_dead_letter(flt)
            else:
                total = queue.event_count()
                rows = queue.events(args.destination)
            with _progress(total, "export") as bar:
                for row in rows:
                    out.write(json.dumps(row, separators=(",", ":")) + "\n")
                    written += 1
                    bar(1)
    finally:
        if out is not sys.stdout:
            out.close()
    if args.output != "-":
        print(f"exported {written} {args.what} to {args.output}", file=sys.stderr)
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if not Path(args.file).exists():
        print(f"relay: no file {args.file}", file=sys.stderr)
        return 1
    if Path(args.file).resolve() == Path(cfg.queue.path).resolve():
        print("relay: that is the live queue; recover reads a file that was moved aside", file=sys.stderr)
        return EXIT_USAGE
    with QueueFile.create(cfg.queue.path, cfg.queue.durability, cfg.queue.max_bytes) as live, \
            _progress(None, "recover") as bar:
        result = live.recover_from(args.file, [d.name for d in cfg.destinations], bar)
    _emit(result.as_dict(), args.json, lambda c: _text_recovery(c, args.file))
    for name, count in sorted(result.for_unknown_destinations.items()):
        print(f"relay: {count} events the old file's destination {name!r} had not finished were not queued:"
              " it is not in the config (add it, then recover again)", file=sys.stderr)
    if result.salvaged_nothing:
        print(f"relay: nothing could be read from {args.file}", file=sys.stderr)
        return 1
    return 0


def _text_recovery(c: dict[str, Any], source: str) -> str:
    unreadable = f"{c['unreadable']}" if c["unreadable_exact"] else f"at least {c['unreadable']}"
    lines = [
        f"recovered {c['events']} events ({c['rows']} rows) and {c['dead_letters']} dead letters"
        f" from {source};"
        f" {c['already_delivered']} already delivered, {c['duplicates']} already queued,"
        f" {unreadable} unreadable",
    ]
    if c["progress"] != "read":
        lines.append("its progress could not be read: every event was queued for every destination")
    if c["dead_letters_skipped"]:
        lines.append("its dead letters were copied by an earlier recovery")
    return "\n".join(lines)


def cmd_send(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.request
    import uuid

    cfg = load_config(args.config)
    host = "127.0.0.1" if cfg.server.host in ("0.0.0.0", "::", "") else cfg.server.host
    url = args.url or f"http://{host}:{cfg.server.port}"
    message = {"type": args.type, "userId": args.user_id, "messageId": str(uuid.uuid4()),
               "event": args.event, "properties": {"source": "relay send"},
               "context": {"library": {"name": "relay-cli", "version": __version__}}}
    write_key = args.write_key or (cfg.server.write_keys[0] if cfg.server.write_keys else "relay-send")
    body = json.dumps({"batch": [message], "writeKey": write_key}).encode()
    request = urllib.request.Request(f"{url.rstrip('/')}/v1/batch", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as resp:
            answer = resp.read().decode()
            status = resp.status
    except urllib.error.HTTPError as exc:
        answer, status = exc.read().decode(), exc.code
    except (urllib.error.URLError, OSError) as exc:
        print(f"relay: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    _emit({"status": status, "answer": json.loads(answer), "messageId": message["messageId"]}, args.json,
          lambda r: f"{r['status']} {json.dumps(r['answer'])} messageId={r['messageId']}")
    return 0 if status == 200 else 1


def cmd_sql(args: argparse.Namespace) -> int:
    from relay.sinks.warehouse import query

    try:
        result = query.run(load_config(args.config), args.destination, args.statement, args.wait)
    except query.QueryFailed as exc:
        print(f"relay: sql: {exc}", file=sys.stderr)
        return 1
    _emit(query.as_records(result), args.json, lambda _: query.render(result))
    return 0


# --- the parser ----------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="relay", description=__doc__)
    top.add_argument("--version", action="version", version=f"relay {__version__}")
    sub = top.add_subparsers(dest="command", required=True)

    def command(parent: Any, name: str, fn: Callable[[argparse.Namespace], int],
                help_text: str, json_flag: bool = False) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(fn=fn)
        p.add_argument("--config", "-c", help="path to relay.toml (default: $RELAY_CONFIG, else "
                       "./relay.toml when present, else the embedded defaults)")
        if json_flag:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    def filters(p: argparse.ArgumentParser) -> None:
        p.add_argument("--destination", "-d", help="only this destination's dead letters")
        p.add_argument("--ingest", action="store_true", help="only dead letters refused at ingest")
        p.add_argument("--reason", "-r", help="only reasons containing this text")

    run = command(sub, "run", cmd_run, "run the relay")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                     default=os.environ.get("RELAY_LOG_LEVEL") or None)
    p = command(sub, "check", cmd_check, "validate the config (loading and unloading every plugin) "
                "and print it, secrets masked")
    p.add_argument("--connect", action="store_true",
                   help="also open each destination with its credentials: TCP and TLS, then a request "
                   "that changes nothing upstream (see the README's `relay check`)")
    p.add_argument("--connect-timeout", type=float, default=5.0, help="seconds per destination")
    command(sub, "status", cmd_status, "report the queue file's state", json_flag=True)
    command(sub, "reload", cmd_reload, "validate the config, then tell the running relay to reload it")
    command(sub, "version", cmd_version, "print the version")
    p = command(sub, "tap", cmd_tap, "print a running relay's events (and outcomes) as NDJSON")
    p.add_argument("--url", help="the admin listener's base URL (default: from [admin] host and port)")
    p.add_argument("--type", help="only messages of this type (track, identify, ...)")
    p.add_argument("--event", help="only this event (or page/screen) name")
    p.add_argument("--user", help="only this userId or anonymousId")
    p.add_argument("--write-key", help="only this write key (or its masked form)")
    p.add_argument("--destination", help="only this destination's outcomes")
    p.add_argument("--outcome", help="only records with this outcome (stored, delivered, retrying, "
                   "dead_lettered, refused, dropped)")
    p.add_argument("--outcomes", action="store_true", help="also each destination's outcomes")
    p = command(sub, "top", cmd_top, "a live view of a running relay: rates, queue, destinations")
    p.add_argument("--url", help="the admin listener's base URL (default: from [admin] host and port)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    sdk = sub.add_parser("sdk", help="the analytics.js files the relay serves")
    sdk_sub = sdk.add_subparsers(dest="sdk_command", required=True)
    p = command(sdk_sub, "install", cmd_sdk_install,
                "fetch @segment/analytics-next with npm into the data directory")
    p.add_argument("--version", help="the package version (default: the latest)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds npm may take")

    dlq = sub.add_parser("dlq", help="inspect, replay or purge dead letters")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    p = command(dlq_sub, "list", cmd_dlq_list, "list dead letters", json_flag=True)
    filters(p)
    p.add_argument("--limit", type=int, default=100)
    p = command(dlq_sub, "show", cmd_dlq_show, "show one dead letter with its event")
    p.add_argument("id", type=int)
    for name, fn, text in (("replay", cmd_dlq_replay, "queue dead letters again"),
                           ("purge", cmd_dlq_purge, "delete dead letters")):
        p = command(dlq_sub, name, fn, text, json_flag=True)
        filters(p)
        p.add_argument("ids", nargs="*", type=int, help="dead letter ids")
        p.add_argument("--all", action="store_true", help="every dead letter")

    p = command(sub, "export", cmd_export, "write queued events or dead letters as NDJSON")
    p.add_argument("what", choices=["events", "dead-letters"], nargs="?", default="events")
    p.add_argument("--output", "-o", default="-", help="file to write (default: standard output)")
    filters(p)
    p = command(sub, "recover", cmd_recover, "salvage readable events from a damaged queue file into "
                "the live queue", json_flag=True)
    p.add_argument("file")
    p = command(sub, "send", cmd_send, "post a test event to a running relay", json_flag=True)
    p.add_argument("--url", help="the relay's base URL (default: from [server] host and port)")
    p.add_argument("--write-key")
    p.add_argument("--type", default="track", choices=["track", "identify", "page", "screen"])
    p.add_argument("--event", default="Relay Test Event")
    p.add_argument("--user-id", default="relay-test-user")
    p.add_argument("--timeout", type=float, default=10.0)
    p = command(sub, "sql", cmd_sql, "run a read-only query against a warehouse destination", json_flag=True)
    p.add_argument("statement", help='e.g. "SELECT event, count(*) FROM events.tracks GROUP BY 1"')
    p.add_argument("--destination", "-d", help="the warehouse destination (needed when there are several)")
    p.add_argument("--wait", type=float, default=10.0, help="seconds to wait while a load holds the file")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except ConfigError as exc:
        print(f"relay: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (QueueError, ListenError) as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
