"""Helpers shared by the forwarding tests (fixtures: ``tests.support.forwarding_fixtures``)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import aiohttp

from tests.support.upstream import FakeUpstream

FAST: dict[str, Any] = {
    "flush_interval": 0.05,
    "retry_initial": 0.05,
    "retry_max": 0.2,
    "timeout": 5.0,
    "gzip": True,
}


def dest(name: str, endpoint: str, **options: Any) -> dict[str, Any]:
    return {"name": name, "type": "segment", "endpoint": endpoint, **FAST, **options}


def track(message_id: str, **fields: Any) -> dict[str, Any]:
    return {"type": "track", "userId": "u1", "event": "Tested", "messageId": message_id,
            "properties": {"n": message_id}, **fields}


async def post_events(relay: Any, ids: Iterable[str], write_key: str = "wk", chunk: int = 50,
                      **fields: Any) -> None:
    """Post the events (as /v1/batch requests of ``chunk``) and check each was acknowledged."""
    ids = list(ids)
    for start in range(0, len(ids), chunk):
        body = {"batch": [track(i, **fields) for i in ids[start:start + chunk]], "writeKey": write_key}
        status, answer, _ = await relay.post("/v1/batch", body)
        assert status == 200, answer
        assert answer["accepted"] == len(ids[start:start + chunk]), answer


async def wait_until(condition: Callable[[], bool | Awaitable[bool]], timeout: float = 15.0,
                     what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def wait_requests(upstream: FakeUpstream, count: int, timeout: float = 15.0) -> None:
    await wait_until(lambda: len(upstream.requests) >= count, timeout, f"{count} upstream requests")


def duplicates(ids: Iterable[str]) -> dict[str, int]:
    return {i: n for i, n in Counter(ids).items() if n > 1}


def refuses(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            return True
        return False


def closed_port() -> int:
    """A loopback port where nothing listens (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def relay_toml(tmp_path: Any, endpoint: str, server: str = "", **destination: Any) -> str:
    """A relay.toml for a subprocess relay: loopback, port 0, one segment destination."""
    options = {**FAST, "max_events": 10, **destination}
    lines = [f"{k} = {json.dumps(v)}" for k, v in options.items()]
    return "\n".join([
        "[server]", 'host = "127.0.0.1"', "port = 0", server,
        "[queue]", f"path = {json.dumps(str(tmp_path / 'queue.db'))}",
        "[admin]", "enabled = false",
        "[[destinations]]", 'name = "seg"', 'type = "segment"', f"endpoint = {json.dumps(endpoint)}",
        *lines, "",
    ])


async def post_to(port: int, ids: list[str], chunk: int = 50, write_key: str = "wk") -> None:
    """Post events to a relay subprocess; each request must be acknowledged (200)."""
    async with aiohttp.ClientSession() as session:
        for start in range(0, len(ids), chunk):
            body = {"batch": [track(i) for i in ids[start:start + chunk]], "writeKey": write_key}
            async with session.post(f"http://127.0.0.1:{port}/v1/batch", json=body,
                                    timeout=aiohttp.ClientTimeout(total=10)) as resp:
                answer = await resp.json()
                assert resp.status == 200, answer
                assert answer["accepted"] == len(ids[start:start + chunk]), answer


async def destination_report(relay: Any, name: str) -> dict[str, Any]:
    """The destination's entry of the running relay's status report, as /status shows it."""
    report = (await relay.relay.status()).to_builtins()
    entry: dict[str, Any] = next(d for d in report["destinations"] if d["name"] == name)
    return entry
