"""The admin listener: liveness, readiness, Prometheus metrics and status, apart from ingest
(so that ingest can face a LAN while admin stays on loopback).

    /health   200 while the event loop answers; never asks for the token
    /ready    200 when the ingest listener is bound and the queue answers and takes writes,
              else 503 with the reason
    /metrics  Prometheus text (or OpenMetrics when asked for), from a registry of our own
    /status   the report ``relay status --json`` prints
    /debugger the live debugger page, its stream and series (see ``relay.ops.debugger``)

With ``[admin] token`` set, every route but /health wants ``Authorization: Bearer <token>``.
Metrics are read from the relay's live counters when scraped; nothing on the ingest or
delivery path updates a metric object.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, cast

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, ProcessCollector, exposition
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from relay import __version__
from relay.config import AdminConfig
from relay.errors import QueueClosed, QueueError
from relay.forward.forwarder import LATENCY_BUCKETS, Forwarder
from relay.ingest import responses
from relay.ingest.edge import errors_as_json
from relay.ingest.guard import ConnectionGuard, GuardStats
from relay.ingest.routes import Ingest
from relay.ops import debugger, metrics
from relay.ops.series import Series
from relay.ops.tap import Tap
from relay.queue import Queue
from relay.types import DESTINATION_STATES, DestinationStatus, StatusReport

log = logging.getLogger(__name__)

READY_QUEUE_TIMEOUT = 2.0  # seconds the queue may take to answer a readiness check
SHUTDOWN_TIMEOUT = 2.0  # seconds admin requests in flight may take to finish at stop
# The admin listener's connection guard: a probe, a scraper and an operator need a handful
# of connections; past the limit new ones are refused, so that idle or slow admin clients
# cannot use up the file descriptors ingest needs.
MAX_CONNECTIONS = 32
HEADER_TIMEOUT = 5.0  # seconds for an admin client to send its request headers
_encode = msgspec.json.Encoder().encode

PluginErrors = Callable[[], Mapping[str, int]]


class Observed(Protocol):
    """What the admin listener reads from the running relay."""

    @property
    def queue(self) -> Queue: ...

    @property
    def ingest(self) -> Ingest: ...

    @property
    def forwarders(self) -> Sequence[Forwarder]: ...

    @property
    def listening(self) -> bool: ...

    @property
    def tap(self) -> Tap: ...

    @property
    def plugin_errors(self) -> PluginErrors: ...

    async def status(self) -> StatusReport: ...


@dataclass(frozen=True, slots=True)
class Unready:
    reason: str
    message: str


async def readiness(relay: Observed) -> Unready | None:
    """None when the relay takes events, else why not."""
    if not relay.listening:
        return Unready("not_listening", "the ingest listener is not bound (starting or stopping)")
    full_since = relay.queue.full_since
    if full_since is not None:
        since = datetime.fromtimestamp(full_since, UTC).isoformat(timespec="seconds")
        return Unready("queue_full", f"the queue has refused writes since {since}: "
                                     "at its byte cap or out of disk space")
    try:
        await asyncio.wait_for(relay.queue.ping(), READY_QUEUE_TIMEOUT)
    except QueueClosed:
        return Unready("queue_closed", "the queue is closed")
    except TimeoutError:
        return Unready("queue_busy", f"the queue did not answer within {READY_QUEUE_TIMEOUT:g} s")
    except QueueError as exc:
        return Unready("queue_error", f"the queue cannot be read: {exc}")
    return None


@dataclass(slots=True)
class Snapshot:
    """The figures a scrape needs from the queue file, read just before it is encoded."""

    report: StatusReport | None = None
    unready: Unready | None = None


class RelayCollector:
    """Builds the relay's metric families from live counters and the scrape's snapshot."""

    def __init__(self, relay: Observed) -> None:
        self.relay = relay
        self.snapshot = Snapshot()

    def collect(self) -> Iterator[Metric]:
        relay, snap = self.relay, self.snapshot
        yield InfoMetricFamily("relay_build", "The relay's version.", value={"version": __version__})
        yield GaugeMetricFamily("relay_ready", "1 when /ready answers 200.", value=int(snap.unready is None))
        yield from self._ingest(relay)
        yield from self._queue(relay.queue, snap.report)
        reports = {d.name: d for d in snap.report.destinations} if snap.report else {}
        yield from self._destinations(relay.forwarders, reports)
        plugins = CounterMetricFamily("relay_plugin_errors", "Errors raised by plugins, per plugin.",
                                      labels=["plugin"])
        for name, count in sorted(relay.plugin_errors().items()):
            plugins.add_metric([name], count)
        yield plugins
        yield from metrics.families(cast(metrics.Measured, relay))

    @staticmethod
    def _ingest(relay: Observed) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "relay_ingest_received_events",
            "Messages received in requests that passed the request-level checks.",
            value=relay.ingest.received,
        )
        rejected = CounterMetricFamily(
            "relay_ingest_rejected",
            "Rejections by reason: a whole request, or one message of a batch (invalid_message).",
            labels=["reason"],
        )
        for reason, count in sorted(relay.ingest.counters.items()):
            rejected.add_metric([reason], count)
        yield rejected
        yield CounterMetricFamily("relay_queue_stored_events", "Events committed to the queue.",
                                  value=relay.queue.stored_events)
        yield CounterMetricFamily(
            "relay_dedup_hits",
            "Events acknowledged but not stored again: their (writeKey, messageId) was seen "
            "inside the dedup window.",
            value=relay.queue.duplicates,
        )

    @staticmethod
    def _queue(queue: Queue, report: StatusReport | None) -> Iterator[Metric]:
        yield GaugeMetricFamily("relay_queue_full", "1 while the queue refuses writes (cap or disk full).",
                                value=int(queue.full_since is not None))
        yield GaugeMetricFamily("relay_queue_max_bytes", "The queue's byte cap ([queue] max_bytes).",
                                value=queue.config.max_bytes)
        if report is None:  # the queue is closed or failing: /ready says why
            return
        figures = report.queue
        yield GaugeMetricFamily("relay_queue_events", "Events in the queue.", value=figures.events)
        yield GaugeMetricFamily("relay_queue_bytes", "Bytes of the queue file in use (what max_bytes caps).",
                                value=figures.bytes)
        yield GaugeMetricFamily("relay_queue_oldest_event_age_seconds", "Age of the oldest queued event.",
                                value=figures.oldest_age_s)
        yield CounterMetricFamily("relay_queue_evicted_events",
                                  "Events evicted to stay under the cap (when_full = drop_oldest).",
                                  value=figures.evicted_events)
        yield CounterMetricFamily("relay_queue_corrupt_files",
                                  "Corrupt queue files found at start and moved aside.",
                                  value=figures.corrupt_files)
        yield GaugeMetricFamily("relay_dead_letter_events", "Events in the dead-letter table.",
                                value=report.dead_letter.events)

    @staticmethod
    def _destinations(forwarders: Sequence[Forwarder],
                      reports: Mapping[str, DestinationStatus]) -> Iterator[Metric]:
        def family(kind: type[CounterMetricFamily | GaugeMetricFamily], name: str, text: str,
                   value: Callable[[Forwarder], float | None]) -> Metric:
            metric = kind(name, text, labels=["destination"])
            for f in forwarders:
                number = value(f)
                if number is not None:
                    metric.add_metric([f.name], number)
            return metric

        def reported(key: str) -> Callable[[Forwarder], float | None]:
            return lambda f: getattr(reports[f.name], key) if f.name in reports else None

        yield family(CounterMetricFamily, "relay_destination_delivered_events",
                     "Events delivered since the relay started.", lambda f: f.counters.delivered)
        yield family(CounterMetricFamily, "relay_destination_dead_lettered_events",
                     "Events dead-lettered since the relay started.", lambda f: f.counters.dead_lettered)
        yield family(CounterMetricFamily, "relay_destination_retries",
                     "Requests that will be retried (server errors, timeouts, unreachable).",
                     lambda f: f.counters.retries)
        yield family(CounterMetricFamily, "relay_destination_requests", "Requests sent.",
                     lambda f: f.counters.requests)
        yield family(GaugeMetricFamily, "relay_destination_pending_events",
                     "Queued events not yet delivered to the destination.", reported("pending"))
        yield family(GaugeMetricFamily, "relay_destination_oldest_pending_age_seconds",
                     "Age of the oldest event waiting for the destination.",
                     reported("oldest_pending_age_s"))
        state = GaugeMetricFamily("relay_destination_state", "1 for the destination's current state.",
                                  labels=["destination", "state"])
        for f in forwarders:
            for name in DESTINATION_STATES:
                state.add_metric([f.name, name], int(f.state == name))
        yield state
        latency = HistogramMetricFamily("relay_destination_request_duration_seconds",
                                        "Time from sending a batch to its answer.", labels=["destination"])
        for f in forwarders:
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), f.counters.latency_counts,
                                    strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(cumulative)))
            latency.add_metric([f.name], buckets, f.counters.latency_sum)
        yield latency


class Admin:
    """``start`` and ``stop`` may each be called more than once; ``port`` is the bound port."""

    def __init__(self, config: AdminConfig, relay: Observed) -> None:
        self.config = config
        self.relay = relay
        self.registry = CollectorRegistry()
        self.collector = RelayCollector(relay)
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)
        self._token = config.token.encode()
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self.guard = GuardStats()
        self.port: int | None = None
        self.series = Series(lambda: relay.ingest.received, lambda: relay.forwarders, relay.status)
        self.debugger = debugger.Debugger(relay.tap, self.series, lambda: self._token)

    def apply(self, config: AdminConfig) -> None:
        """A reload: the token changes at once (host, port and enabled are fixed while running)."""
        self.config = config
        self._token = config.token.encode()

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[errors_as_json, self._authenticate])
        app.add_routes([
            web.get("/health", self.health),
            web.get("/ready", self.ready),
            web.get("/metrics", self.metrics),
            web.get("/status", self.status),
            *self.debugger.routes(),
        ])
        return app

    async def start(self) -> None:
        if self._runner is not None or not self.config.enabled:
            return
        runner = web.AppRunner(self.build_app(), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        handler = runner.server
        assert handler is not None
        try:
            server = await asyncio.get_running_loop().create_server(
                lambda: ConnectionGuard(handler, MAX_CONNECTIONS, HEADER_TIMEOUT, self.guard),
                self.config.host, self.config.port, reuse_address=True,
            )
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._server = runner, server
        self.port = int(server.sockets[0].getsockname()[1])
        self.series.start()
        log.info("admin listening", extra={"host": self.config.host, "port": self.port})

    async def stop(self) -> None:
        if self._runner is not None:
            runner, server = self._runner, self._server
            self._runner, self._server, self.port = None, None, None
            if server is not None:
                server.close()
            await self.series.stop()
            self.relay.tap.end_all()  # the debugger's streams finish rather than wait out the timeout
            await runner.cleanup()

    # --- routes ------------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def ready(self, request: web.Request) -> web.Response:
        unready = await readiness(self.relay)
        if unready is None:
            return _json({"status": "ready"})
        return _json({"status": "unready", "reason": unready.reason, "message": unready.message}, 503)

    async def metrics(self, request: web.Request) -> web.Response:
        self.collector.snapshot = await self._snapshot()
        encoder, content_type = exposition.choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(self.registry), headers={"Content-Type": content_type})

    async def status(self, request: web.Request) -> web.Response:
        try:
            report = await self.relay.status()
        except QueueError as exc:
            return responses.error(503, "queue_unavailable", f"the queue cannot be read: {exc}")
        return _json(report)

    async def _snapshot(self) -> Snapshot:
        started = time.monotonic()
        snap = Snapshot(unready=await readiness(self.relay))
        try:
            snap.report = await self.relay.status()
        except QueueError as exc:
            log.debug("metrics without the queue's figures: %s", exc)
        log.debug("metrics snapshot", extra={"seconds": round(time.monotonic() - started, 4)})
        return snap

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if self._token and path.startswith("/debugger") and not debugger.is_open_route(path):
            if not (self._authorised(request) or debugger.has_session(request, self._token)):
                if path == "/debugger":
                    return self.debugger.login_page()
                return responses.error(401, "unauthorized", "sign in at /debugger, or send "
                                       "Authorization: Bearer <[admin] token>")
        elif self._token and path != "/health" and not debugger.is_open_route(path) \
                and not self._authorised(request):
            return responses.error(401, "unauthorized", "this admin route wants Authorization: Bearer "
                                   "<[admin] token>", {"WWW-Authenticate": 'Bearer realm="relay admin"'})
        return await handler(request)

    def _authorised(self, request: web.Request) -> bool:
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), self._token)


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=_encode(body), content_type="application/json")
