"""Metrics beyond the queue's and the destinations' own: ingest requests by route and status,
their latency and bytes, destination requests by outcome, plugins' timeouts, drops and
refusals, and reloads. Counted in plain objects on the hot path; turned into Prometheus
families only when scraped (Prometheus naming: ``_total`` for counters, base units)."""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric

from relay.forward.forwarder import Forwarder
from relay.plugins.pipeline import PluginStats

# Seconds from a request's first byte handled to its answer (committed to the queue).
INGEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(slots=True)
class RouteStats:
    requests: dict[int, int] = field(default_factory=dict)  # status -> count
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(INGEST_BUCKETS) + 1))
    latency_sum: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0


@dataclass(slots=True)
class IngestStats:
    """Per route template (``/v1/track``, ``/v1/pixel/{type}``; ``other`` for no route)."""

    routes: dict[str, RouteStats] = field(default_factory=dict)

    def observe(self, route: str, status: int, seconds: float, bytes_in: int, bytes_out: int) -> None:
        stats = self.routes.get(route)
        if stats is None:
            stats = self.routes[route] = RouteStats()
        stats.requests[status] = stats.requests.get(status, 0) + 1
        stats.latency_sum += seconds
        stats.latency_counts[bisect.bisect_left(INGEST_BUCKETS, seconds)] += 1
        stats.bytes_in += bytes_in
        stats.bytes_out += bytes_out


@dataclass(slots=True)
class ReloadStats:
    succeeded: int = 0
    failed: int = 0


class Measured(Protocol):
    @property
    def http_stats(self) -> IngestStats: ...

    @property
    def reloads(self) -> ReloadStats: ...

    @property
    def forwarders(self) -> Sequence[Forwarder]: ...

    def plugin_stats(self) -> Mapping[str, PluginStats]: ...


def families(relay: Measured) -> Iterator[Metric]:
    http = relay.http_stats
    requests = CounterMetricFamily("relay_ingest_requests", "Ingest requests by route and status code.",
                                   labels=["route", "code"])
    latency = HistogramMetricFamily("relay_ingest_request_duration_seconds",
                                    "Time to answer an ingest request (after the queue's commit).",
                                    labels=["route"])
    received = CounterMetricFamily("relay_ingest_received_bytes", "Request body bytes received, by route.",
                                   labels=["route"])
    sent = CounterMetricFamily("relay_ingest_sent_bytes", "Response body bytes sent, by route.",
                               labels=["route"])
    for route, stats in sorted(http.routes.items()):
        for code, count in sorted(stats.requests.items()):
            requests.add_metric([route, str(code)], count)
        cumulative, buckets = 0, []
        for bound, count in zip((*INGEST_BUCKETS, float("inf")), stats.latency_counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(cumulative)))
        latency.add_metric([route], buckets, stats.latency_sum)
        received.add_metric([route], stats.bytes_in)
        sent.add_metric([route], stats.bytes_out)
    yield from (requests, latency, received, sent)

    outcomes = CounterMetricFamily("relay_destination_requests_by_outcome",
                                   "Destination requests by what their answer meant "
                                   "(delivered, retry, split, reject, pause).",
                                   labels=["destination", "outcome"])
    sent_bytes = CounterMetricFamily("relay_destination_sent_bytes",
                                     "Encoded event bytes sent to the destination (before gzip).",
                                     labels=["destination"])
    for f in relay.forwarders:
        for outcome, count in sorted(f.counters.outcomes.items()):
            outcomes.add_metric([f.name, outcome], count)
        sent_bytes.add_metric([f.name], f.counters.bytes_out)
    yield from (outcomes, sent_bytes)

    plugins = sorted(relay.plugin_stats().items())
    for name, text, attr in (("relay_plugin_timeouts", "Plugin calls past their budget.", "timeouts"),
                             ("relay_plugin_dropped_messages", "Messages a plugin dropped (returned None).",
                              "dropped"),
                             ("relay_plugin_refused_messages", "Messages a plugin refused (raised Block).",
                              "rejected")):
        family = CounterMetricFamily(name, text, labels=["plugin"])
        for plugin, figures in plugins:
            family.add_metric([plugin], getattr(figures, attr))
        yield family
    reloads = CounterMetricFamily("relay_reloads", "Configuration reloads, by result.", labels=["result"])
    reloads.add_metric(["success"], relay.reloads.succeeded)
    reloads.add_metric(["failure"], relay.reloads.failed)
    yield reloads
