"""The ``relay`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from relay import __version__, config, logs, store
from relay.errors import ConfigError

DEFAULT_CONFIG_NAMES = ("relay.toml",)


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


def cmd_run(args: argparse.Namespace) -> int:
    from relay import app

    cfg = load_config(args.config)
    logs.setup(args.log_level)
    app.run(cfg)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    print(json.dumps(config.masked(cfg), indent=2))
    print(f"config OK ({_config_path(args.config) or 'embedded defaults'})", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    path = cfg.queue.path
    if not Path(path).exists():
        print(f"relay: no queue file at {path}", file=sys.stderr)
        return 1
    conn = store.open_read_only(path)
    try:
        report = store.status(conn)
    finally:
        conn.close()
    report["queue"]["path"] = path
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_text_status(report))
    return 0


def _text_status(report: dict[str, Any]) -> str:
    q, d = report["queue"], report["dead_letter"]
    return "\n".join([
        f"queue         {q['path']}",
        f"  events      {q['events']}",
        f"  bytes       {q['bytes']} (file in use: {q['file_bytes']})",
        f"  oldest age  {q['oldest_age_s']} s",
        f"  evicted     {q['evicted_events']}",
        f"dead letters  {d['events']}",
    ])


def cmd_version(args: argparse.Namespace) -> int:
    print(f"relay {__version__}")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="relay", description=__doc__)
    top.add_argument("--version", action="version", version=f"relay {__version__}")
    sub = top.add_subparsers(dest="command", required=True)

    def command(name: str, fn: Any, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(fn=fn)
        p.add_argument("--config", "-c", help="path to relay.toml (default: ./relay.toml or "
                       "$RELAY_CONFIG, else the embedded defaults)")
        return p

    run = command("run", cmd_run, "run the relay")
    run.add_argument("--log-level", default=os.environ.get("RELAY_LOG_LEVEL", "info"),
                     choices=["debug", "info", "warning", "error"])
    command("check", cmd_check, "validate the config and print it, secrets masked")
    status = command("status", cmd_status, "report the queue file's state")
    status.add_argument("--json", action="store_true")
    command("version", cmd_version, "print the version")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except ConfigError as exc:
        print(f"relay: config error: {exc}", file=sys.stderr)
        return 2
