"""The relay process: the queue, the ingest listener, and their start/stop in order."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Any

from aiohttp import web

from relay.config import Config
from relay.forwarder import Forwarder
from relay.ingest import Ingest
from relay.middleware import Cors, errors_as_json
from relay.queue import Queue
from relay.sinks import make_sink

log = logging.getLogger(__name__)


class Relay:
    """Start order: queue, forwarders, listener. Stop order: listener (finishing requests
    in flight), forwarders (finishing sends in flight), queue. ``start`` and ``stop`` may
    each be called more than once."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.queue = Queue(config.queue)
        self.ingest = Ingest(config.server, self.queue)
        self.forwarders = [Forwarder(d, self.queue, make_sink(d)) for d in config.destinations]
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.port: int | None = None

    def build_app(self) -> web.Application:
        cors = Cors(self.config.server.cors_origins)
        app = web.Application(middlewares=[cors.middleware, errors_as_json], client_max_size=2**31)
        app.add_routes(self.ingest.routes())
        return app

    async def start(self) -> None:
        if self._runner is not None:
            return
        await self.queue.start()
        try:
            cursors = await self.queue.register([f.name for f in self.forwarders])
            for forwarder in self.forwarders:
                await forwarder.start(cursors[forwarder.name])
        except BaseException:
            await self._stop_forwarders()
            await self.queue.stop()
            raise
        if not self.forwarders:
            log.warning("no destinations configured: events are queued and kept until one is added")
        runner = web.AppRunner(
            self.build_app(),
            auto_decompress=False,
            access_log=None,
            shutdown_timeout=self.config.server.shutdown_timeout,
        )
        try:
            await runner.setup()
            site = web.TCPSite(runner, self.config.server.host, self.config.server.port,
                               backlog=2048, reuse_address=True)
            await site.start()
        except BaseException:
            await runner.cleanup()
            await self._stop_forwarders()
            await self.queue.stop()
            raise
        self._runner, self._site = runner, site
        self.port = _bound_port(site)
        log.info("listening", extra={"host": self.config.server.host, "port": self.port,
                                     "queue": self.config.queue.path, "pid": os.getpid()})

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner, self._site = self._runner, None, None
            await runner.cleanup()
        await self._stop_forwarders()
        await self.queue.stop()

    async def _stop_forwarders(self) -> None:
        timeout = self.config.server.shutdown_timeout
        await asyncio.gather(*(f.stop(timeout) for f in self.forwarders))

    async def status(self) -> dict[str, Any]:
        report = await self.queue.status()
        report["destinations"] = [await f.status() for f in self.forwarders]
        return report


def _bound_port(site: web.TCPSite) -> int:
    server: Any = site._server
    sockets = getattr(server, "sockets", None) or []
    return int(sockets[0].getsockname()[1]) if sockets else 0


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    relay = Relay(config)
    await relay.start()
    try:
        await stopping.wait()
        log.info("stopping")
    finally:
        await relay.stop()
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
