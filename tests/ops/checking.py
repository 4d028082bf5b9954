"""What the ``relay check --connect`` suites share: an HTTP upstream that checks credentials as
the real services do (and records every request, to show that no event was sent), and the
CLI run as a user runs it, bounded and stopped by its PID."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

GOOD_KEY = "good-key-1234"
BAD_KEY = "wrong-key-5678"
GOOD_TOKEN = "Bearer good-token-1234"
CHECK_TIMEOUT = 60.0


@dataclass
class Seen:
    method: str
    path: str
    body: Any  # the decoded JSON body, or None


class AuthUpstream:
    """Segment's, a webhook receiver's, Amplitude's and PostHog's routes on loopback (over
    TLS with ``tls``), each answering a good credential 200 and a wrong one as that service
    does: 401 for Segment-compatible collectors, webhooks and PostHog, 400 "Invalid API key"
    for Amplitude."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.seen: list[Seen] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def start(self) -> AuthUpstream:
        app = web.Application()
        app.router.add_post("/v1/batch", self._segment)
        app.router.add_route("HEAD", "/hook", self._hook)
        app.router.add_post("/hook", self._hook)
        app.router.add_route("HEAD", "/moved", self._moved)
        app.router.add_route("HEAD", "/broken", self._broken)
        app.router.add_post("/post-only", self._hook)
        app.router.add_post("/2/httpapi", self._amplitude)
        app.router.add_post("/batch/", self._posthog)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _record(self, request: web.Request) -> Any:
        raw = await request.read()  # aiohttp has undone Content-Encoding: gzip
        body = json.loads(raw) if raw else None
        self.seen.append(Seen(request.method, request.path, body))
        return body

    async def _segment(self, request: web.Request) -> web.Response:
        await self._record(request)
        auth = request.headers.get("Authorization", "")
        user = base64.b64decode(auth[6:]).decode().partition(":")[0] if auth.startswith("Basic ") else ""
        if user != GOOD_KEY:  # echoing the key it was given, as some collectors do: the relay masks it
            return web.json_response({"success": False, "message": f"invalid write key {user}"}, status=401)
        return web.json_response({"success": True})

    async def _hook(self, request: web.Request) -> web.Response:
        await self._record(request)
        if request.headers.get("Authorization") != GOOD_TOKEN:
            return web.Response(status=401)
        return web.Response(status=200)

    async def _moved(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(status=301, headers={"Location": f"{self.url}/hook?token=in-the-query"})

    async def _broken(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(status=503)

    async def _amplitude(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        if body.get("api_key") != GOOD_KEY:
            return web.json_response({"code": 400, "error": "Invalid API key"}, status=400)
        return web.json_response({"code": 200, "events_ingested": len(body["events"])})

    async def _posthog(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        if body.get("api_key") != GOOD_KEY:
            return web.json_response({"type": "authentication_error", "detail": "Project API key invalid"},
                                     status=401)
        return web.json_response({"status": 1})

    def events_sent(self) -> list[Any]:
        """Every event any request carried: none, if the checks are no-ops."""
        events: list[Any] = []
        for seen in self.seen:
            if isinstance(seen.body, dict):
                for key in ("batch", "events"):
                    events += seen.body.get(key) or []
        return events


def config_file(tmp_path: Path, destinations: str, name: str = "relay.toml") -> Path:
    path = tmp_path / name
    path.write_text(f'[queue]\npath = "{tmp_path}/q.db"\n{destinations}')
    return path


@dataclass
class CheckRun:
    code: int
    stdout: str
    stderr: str

    def line(self, destination: str) -> str:
        """The stderr line that reports ``destination``."""
        found = [line for line in self.stderr.splitlines() if line.startswith(f"destination {destination} (")]
        assert len(found) == 1, self.stderr
        return found[0]


async def run_check(path: Path, env: dict[str, str] | None = None, unset: tuple[str, ...] = (),
                    connect_timeout: float = 5.0) -> CheckRun:
    """``python -m relay check --connect --config path`` in a subprocess, as a user runs it,
    with ``env`` added to this environment and ``unset`` taken out of it."""
    environ = {k: v for k, v in os.environ.items() if k not in unset} | (env or {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "check", "--connect", "--connect-timeout", str(connect_timeout),
        "--config", str(path), cwd=path.parent, env=environ,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CHECK_TIMEOUT)
    except TimeoutError:
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise
    assert proc.returncode is not None
    return CheckRun(proc.returncode, out.decode(), err.decode())
