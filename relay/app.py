"""The relay process: the queue, the listeners, the forwarders, and their start/stop in order."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from relay import logs, notify
from relay.admin import Admin, PluginErrors
from relay.config import Config
from relay.errors import QueueError
from relay.forwarder import Forwarder
from relay.guard import ConnectionGuard, GuardStats
from relay.ingest import Ingest
from relay.middleware import Cors, errors_as_json
from relay.queue import Queue
from relay.sinks import make_sink

log = logging.getLogger(__name__)
# Seconds aiohttp keeps reading the rest of a body it refused before closing (default 10).
LINGERING_TIME = 2.0


class Relay:
    """Start order: queue, admin listener, forwarders, ingest listener. Stop order, the
    reverse: ingest listener (finishing requests in flight), forwarders (finishing sends in
    flight), admin listener, queue. ``start`` and ``stop`` may each be called more than once;
    a ``start`` that fails stops what it had started."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.queue = Queue(config.queue)
        self.ingest = Ingest(config.server, self.queue)
        self.forwarders = [Forwarder(d, self.queue, make_sink(d)) for d in config.destinations]
        self.admin = Admin(config.admin, self)
        # per-plugin error counts for /metrics; the plugin runner replaces this
        self.plugin_errors: PluginErrors = _no_plugin_errors
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self.guard = GuardStats()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._stopping = False
        self.port: int | None = None

    @property
    def listening(self) -> bool:
        """True while the ingest listener is bound."""
        return self._server is not None

    def build_app(self) -> web.Application:
        cors = Cors(self.config.server.cors_origins)
        app = web.Application(middlewares=[self._track, cors.middleware, errors_as_json],
                              client_max_size=2**31)
        app.add_routes(self.ingest.routes())
        return app

    async def start(self) -> None:
        if self._runner is not None:
            return
        try:
            await self.queue.start()
            await self.admin.start()
            cursors = await self.queue.register([f.name for f in self.forwarders])
            for forwarder in self.forwarders:
                await forwarder.start(cursors[forwarder.name])
            if not self.forwarders:
                log.warning("no destinations configured: events are queued and kept until one is added")
            await self._listen()
        except BaseException:
            await self.stop()
            raise
        log.info("listening", extra={"host": self.config.server.host, "port": self.port,
                                     "admin_port": self.admin.port, "queue": self.config.queue.path,
                                     "pid": os.getpid()})

    async def _listen(self) -> None:
        cfg = self.config.server
        runner = web.AppRunner(
            self.build_app(),
            auto_decompress=False,
            access_log=None,
            shutdown_timeout=cfg.shutdown_timeout,
            lingering_time=LINGERING_TIME,
        )
        await runner.setup()
        handler = runner.server
        assert handler is not None
        try:
            server = await asyncio.get_running_loop().create_server(
                lambda: ConnectionGuard(handler, cfg.max_connections, cfg.header_timeout, self.guard),
                cfg.host, cfg.port, backlog=2048, reuse_address=True,
            )
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._server = runner, server
        self.port = int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._runner is not None:
            runner, server = self._runner, self._server
            self._runner = self._server = None
            if server is not None:
                server.close()  # no new connections
            await self._finish_requests(self.config.server.shutdown_timeout)
            await runner.cleanup()
        await self._stop_forwarders()
        await self.admin.stop()
        await self.queue.stop()

    async def _finish_requests(self, timeout: float) -> None:
        """Let requests already being handled (a body may still be arriving) finish before
        aiohttp's shutdown, which would stop reading their bytes."""
        self._stopping = True
        try:
            async with asyncio.timeout(timeout):
                while self._in_flight:
                    self._idle.clear()
                    await self._idle.wait()
        except TimeoutError:
            log.warning("requests still in flight at the shutdown timeout",
                        extra={"requests": self._in_flight})

    @web.middleware
    async def _track(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self._in_flight += 1
        try:
            response = await handler(request)
            if self._stopping:
                response.force_close()  # the client reconnects elsewhere (or after the restart)
            return response
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def _stop_forwarders(self) -> None:
        timeout = self.config.server.shutdown_timeout
        await asyncio.gather(*(f.stop(timeout) for f in self.forwarders))

    async def status(self) -> dict[str, Any]:
        """What ``relay status --json`` prints (and the admin listener's /status answers)."""
        report = await self.queue.status()
        report["queue"]["path"] = self.config.queue.path
        report["destinations"] = [await f.status() for f in self.forwarders]
        return report

    async def summary(self) -> str:
        """One line for systemd's STATUS=."""
        return notify.describe(await self.status())


def _no_plugin_errors() -> Mapping[str, int]:
    return {}


async def _summary(relay: Relay) -> str:
    try:
        return await relay.summary()
    except (QueueError, sqlite3.Error) as exc:  # the queue answers /ready and /status with the why
        return f"running; queue figures unavailable: {exc}"


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully; tell systemd (when it started us)
    as each of those happens."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    logs.mask_secrets(logs.secrets(config))
    notifier = notify.Notifier.from_environment()
    relay = Relay(config)
    await notifier.start(relay.summary)
    try:
        notifier.status("starting: opening the queue")
        await relay.start()
        notifier.ready(await _summary(relay))
        await stopping.wait()
        log.info("stopping")
    finally:
        notifier.stopping()
        try:
            await relay.stop()
        finally:
            await notifier.stop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    log.info("stopped")


def run(config: Config) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        asyncio.run(serve(config))
    else:
        uvloop.run(serve(config))
