"""Helpers shared by the warehouse suites: destinations, the real SDK, waiting for loads."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from segment.analytics import Client

from tests.support.forwarding import wait_until

SDK_KEY = "sdk-key"
SDK_CONTEXT = {"ip": "203.0.113.9", "page": {"path": "/checkout"}}
FAST: dict[str, Any] = {"flush_interval": 0.05, "retry_initial": 0.05, "retry_max": 0.5, "timeout": 10.0}


def destination(kind: str, name: str = "wh", **options: Any) -> dict[str, Any]:
    common = ("max_events", "concurrency", "flush_interval")
    settings = {k: options.pop(k) for k in list(options) if k in common}
    return {"name": name, "type": kind, **FAST, **settings,
            "options": {"schemas": {SDK_KEY: "web_prod"}, **options}}


def send_with_sdk(host: str, calls: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Runs in a thread (the SDK is synchronous): each call posted at once (``sync_mode``),
    bounded by the SDK's own timeout. Returns the messages the SDK sent."""
    errors: list[Any] = []
    client = Client(SDK_KEY, host=host, sync_mode=True, timeout=10, max_retries=1,
                    on_error=lambda error, batch: errors.append(error))
    sent = []
    for method, kwargs in calls:
        ok, message = getattr(client, method)(**{"context": dict(SDK_CONTEXT), **kwargs})
        assert ok, message
        sent.append(message)
    assert errors == []  # sync mode: no consumer threads to shut down
    return sent


def order(mid: str, user: str = "u-1", **extra: Any) -> tuple[str, dict[str, Any]]:
    properties = {"orderId": f"o-{mid}", "revenue": 42.5, "currency": "USD",
                  "products": [{"sku": "sku-1", "quantity": 2}], "shipping": {"method": "ground", "cost": 5},
                  "coupon": None, "user_id": "spoof", **extra}
    return "track", {"user_id": user, "anonymous_id": "a-1", "event": "Order Completed",
                     "properties": properties, "message_id": mid}


def signed_up(mid: str) -> tuple[str, dict[str, Any]]:
    return "track", {"user_id": "u-2", "anonymous_id": "a-2", "event": "Signed Up", "message_id": mid,
                     "properties": {"plan": "Pro Annual", "accountType": "Facebook", "trial": True}}


def identify(mid: str, traits: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return "identify", {"user_id": "u-1", "anonymous_id": "a-1", "traits": traits, "message_id": mid}


WAVE_1 = [order("m-1"), signed_up("m-2"),
          identify("m-3", {"email": "ada@example.com", "firstName": "Ada", "logins": 3,
                           "address": {"city": "Berlin"}, "createdAt": "2026-01-05T10:00:00Z"})]
WAVE_2 = [order("m-4", coupon="BF25"), order("m-5", revenue="lots"),
          identify("m-6", {"plan": "pro", "logins": 4}),
          ("track", {"user_id": "u-2", "event": "Added to Cart", "message_id": "m-7",
                     "properties": {"sku": "sku-9", "price": 19.5}})]


async def wait_delivered(relay: Any, count: int, name: str = "wh", timeout: float = 20.0) -> None:
    def done() -> bool:
        rows = relay.rows("SELECT delivered FROM progress WHERE destination = ?", name)
        return bool(rows) and rows[0][0] >= count

    await wait_until(done, timeout, f"{count} events loaded by {name}")


def relay_sql(config: Path, statement: str, *args: str) -> Any:
    """``relay sql --json`` as a subprocess (bounded), its rows decoded."""
    done = subprocess.run([sys.executable, "-m", "relay", "sql", "--config", str(config), "--json", *args,
                           statement], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def toml_for(tmp_path: Path, destinations: list[dict[str, Any]], queue: str = "queue.db") -> Path:
    """A relay.toml for the CLI or a subprocess relay: loopback, port 0, these destinations."""
    lines = ["[server]", 'host = "127.0.0.1"', "port = 0", "[queue]",
             f"path = {json.dumps(str(tmp_path / queue))}", "[admin]", "enabled = false"]
    for dest in destinations:
        lines.append("[[destinations]]")
        for key, value in dest.items():
            if key != "options":
                lines.append(f"{key} = {json.dumps(value)}")
        lines.append("[destinations.options]")
        for key, value in dest["options"].items():
            if isinstance(value, dict):
                inner = ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in value.items())
                lines.append(f"{key} = {{ {inner} }}")
            else:
                lines.append(f"{key} = {json.dumps(value)}")
    path = tmp_path / "relay.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
