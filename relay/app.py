"""The relay process: the queue, the listeners, the forwarders, and their start/stop in order."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler

from relay.config import Config, carry_secrets
from relay.errors import ListenError
from relay.forward.forwarder import Forwarder
from relay.ingest import admission
from relay.ingest.bodies import BODY_BYTES
from relay.ingest.cdn import Cdn
from relay.ingest.edge import Cors, error_response
from relay.ingest.guard import ConnectionGuard, GuardStats
from relay.ingest.routes import Ingest
from relay.ops import logs, notify
from relay.ops.admin import Admin
from relay.ops.metrics import IngestStats, ReloadStats
from relay.ops.tap import Tap
from relay.plugins.pipeline import Pipeline, PluginStats
from relay.queue import Queue
from relay.sinks import make_sink
from relay.sources import make_source
from relay.types import AppendResult, Arrival, StatusReport

log = logging.getLogger(__name__)
# Seconds aiohttp keeps reading the rest of a body it refused before closing (default 10).
LINGERING_TIME = 2.0


class Relay:
    """Start order: queue, plugins, admin listener, forwarders, sources, ingest listener. Stop
    order, the reverse: ingest listener (finishing requests in flight), sources (storing and
    acking the batch they hold), forwarders (finishing sends
    in flight), admin listener, plugins, queue. ``start`` and ``stop`` may each be called
    more than once; a ``start`` that fails stops what it had started."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.queue = Queue(config.queue)
        self.pipeline = Pipeline.from_config(config)
        self.tap = Tap()  # what the debugger, `relay tap` and `relay top` watch
        self.ingest = Ingest(config.server, self.queue, self.pipeline, self.tap)
        self.cdn = Cdn(config)
        self.forwarders = self._forwarders(config, self.pipeline)
        self.sources = [make_source(s, self._intake) for s in config.sources]
        self.admin = Admin(config.admin, self)
        self.cors = Cors(config.server.cors_origins)
        self._reloading = asyncio.Lock()
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self.guard = GuardStats()
        self.http_stats = IngestStats()
        self.reloads = ReloadStats()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._stopping = False
        self.port: int | None = None

    @property
    def listening(self) -> bool:
        """True while the ingest listener is bound."""
        return self._server is not None

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._edge],
                              client_max_size=2**31)
        app.add_routes(self.ingest.routes())
        app.add_routes(self.cdn.routes())
        return app

    async def start(self) -> None:
        if self._runner is not None:
            return
        self._stopping = False
        try:
            await self.queue.start()
            await self.pipeline.start()
            try:
                await self.admin.start()
            except OSError as exc:
                raise _listen_error(self.config.admin.host, self.config.admin.port, "admin", exc) from None
            cursors = await self.queue.register([f.name for f in self.forwarders])
            for forwarder in self.forwarders:
                await forwarder.start(cursors[forwarder.name])
            if not self.forwarders:
                log.warning("no destinations configured: events are queued and kept until one is added")
            for source in self.sources:
                await source.start()
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
                lambda: ConnectionGuard(handler, self.config.server.max_connections,
                                        self.config.server.header_timeout, self.guard),
                cfg.host, cfg.port, backlog=2048, reuse_address=True,
            )
        except OSError as exc:
            await runner.cleanup()
            raise _listen_error(cfg.host, cfg.port, "server", exc) from None
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
        for source in reversed(self.sources):
            await source.stop()
        await self._stop_forwarders(self.forwarders)
        await self.admin.stop()
        await self.pipeline.stop()
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
    async def _edge(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The one middleware of the ingest listener (one layer, as it runs on every event):
        counts requests in flight for the graceful stop, answers CORS, and turns every
        error into its JSON body."""
        self._in_flight += 1
        started = time.perf_counter()
        try:
            allowed = self.cors.allow(request.headers.get("Origin"))
            response = self.cors.preflight(request, allowed) or self.cors.refusal(request, allowed)
            if response is None:
                try:
                    response = await handler(request)
                except Exception as exc:
                    response = error_response(request, exc)
            if allowed:
                self.cors.decorate(response, allowed)
            if self._stopping:
                response.force_close()  # the client reconnects elsewhere (or after the restart)
            self._observe(request, response, time.perf_counter() - started)
            return response
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    def _observe(self, request: web.Request, response: web.StreamResponse, seconds: float) -> None:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "other"
        self.http_stats.observe(route, response.status, seconds,
                                request.get(BODY_BYTES, request.content_length or 0),
                                response.content_length or 0)

    async def _stop_forwarders(self, forwarders: Sequence[Forwarder]) -> None:
        timeout = self.config.server.shutdown_timeout
        await asyncio.gather(*(f.stop(timeout) for f in forwarders))

    async def _intake(self, batches: Sequence[tuple[Sequence[object], Arrival]]) -> AppendResult:
        """A source's messages: admitted as an HTTP request's, stored in one transaction."""
        events, dead = [], []
        for messages, arrival in batches:
            admitted = await admission.admit(messages, arrival, self.pipeline)
            events += admitted.events
            dead += admitted.dead
        return await self.queue.append(events, dead)

    def _forwarders(self, config: Config, pipeline: Pipeline) -> list[Forwarder]:
        mask = logs.SecretFilter(logs.secrets(config)).mask
        return [Forwarder(d, self.queue, make_sink(d), pipeline, mask=mask, tap=self.tap)
                for d in config.destinations]

    def plugin_stats(self) -> Mapping[str, PluginStats]:
        """Per-plugin figures (timeouts, drops, refusals), for /metrics."""
        return dict(self.pipeline.stats)

    def plugin_errors(self) -> Mapping[str, int]:
        """Per-plugin error counts, for /metrics."""
        return {name: stats.errors for name, stats in self.pipeline.stats.items()}

    # --- reload ----------------------------------------------------------------------------------

    async def reload(self, new: Config) -> list[str]:
        """Apply ``new`` without dropping the listener or any queued event: write keys, CORS,
        proxies, timeouts, admin token and log level at once; destinations and plugins are
        swapped (sends in flight finish first). Keys that cannot change while running keep
        their running value; what was kept is returned (and logged). A new config whose
        plugins or destinations do not start raises, and the running one stays."""
        async with self._reloading:
            try:
                kept = await self._reload(new)
            except BaseException:
                self.reloads.failed += 1  # (a config that did not load is counted by its caller)
                raise
            self.reloads.succeeded += 1
            return kept

    async def _reload(self, new: Config) -> list[str]:
        effective, kept = _keep_fixed(self.config, new)
        for key in kept:
            log.warning("this key cannot change while the relay runs; restart to apply it",
                        extra={"key": key})
        swap = (effective.plugins, effective.destinations) != (self.config.plugins,
                                                                self.config.destinations)
        if swap:
            pipeline = Pipeline.from_config(effective)
            forwarders = self._forwarders(effective, pipeline)
            await pipeline.start()
            old_pipeline, old_forwarders = self.pipeline, self.forwarders
            await self._stop_forwarders(old_forwarders)
            try:
                cursors = await self.queue.register([f.name for f in forwarders])
                for forwarder in forwarders:
                    await forwarder.start(cursors[forwarder.name])
            except BaseException:
                await self._stop_forwarders(forwarders)
                await pipeline.stop()
                for forwarder in old_forwarders:  # back to what ran before
                    await forwarder.start(forwarder.cursor)
                raise
        else:
            old_pipeline = None
        # From here to the end of the swap nothing awaits: a request sees the old config or
        # the new one, never a mix (the ingest settings are one snapshot).
        if swap:
            self.pipeline, self.forwarders = pipeline, forwarders
            self.ingest.pipeline = pipeline
        self.ingest.apply(effective.server)
        self.cdn.apply(effective)
        self.cors.update(effective.server.cors_origins)
        self.admin.apply(effective.admin)
        logging.getLogger().setLevel(effective.log.level.upper())
        self.config = effective
        if old_pipeline is not None:
            # requests admitted through the old pipeline finish with it before it is unloaded
            await old_pipeline.drained(effective.server.shutdown_timeout)
            await old_pipeline.stop()
        log.info("reloaded", extra={"destinations": [f.name for f in self.forwarders],
                                    "plugins": [p.name for p in self.pipeline.plugins]})
        return kept

    async def status(self) -> StatusReport:
        """What ``relay status --json`` prints (and the admin listener's /status answers)."""
        return await self.queue.status([f.live() for f in self.forwarders])

    async def summary(self) -> str:
        """One line for systemd's STATUS=."""
        return notify.describe(await self.status())


def _listen_error(host: str, port: int, section: str, exc: OSError) -> ListenError:
    """One line an operator can act on: the address, the key that set it, and why."""
    reason = "the address is already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
    return ListenError(f"cannot listen on {host}:{port} ([{section}] host and port, or "
                       f"RELAY_{section.upper()}_PORT): {reason}")


# Keys bound at start (sockets, the queue file): a reload keeps their running values.
FIXED_KEYS: dict[str, tuple[str, ...]] = {
    "server": ("host", "port"),
    "queue": ("path", "durability", "max_bytes", "when_full", "dedup_window"),
    "admin": ("enabled", "host", "port"),
}


def _keep_fixed(running: Config, new: Config) -> tuple[Config, list[str]]:
    kept: list[str] = []
    sections: dict[str, Any] = {}
    for section, keys in FIXED_KEYS.items():
        old_part, new_part = getattr(running, section), getattr(new, section)
        changes = {k: getattr(old_part, k) for k in keys if getattr(old_part, k) != getattr(new_part, k)}
        if changes:
            kept += [f"{section}.{k}" for k in changes]
            sections[section] = msgspec.structs.replace(new_part, **changes)
    if new.sources != running.sources:  # consumers bound at start, like the listeners
        kept.append("sources")
        sections["sources"] = running.sources
    if not sections:
        return new, kept
    return carry_secrets(new, msgspec.structs.replace(new, **sections)), kept
