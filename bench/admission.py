"""CPU per event of ingest admission: the dict path against the typed path, on one core.

    .venv/bin/python bench/admission.py              # 4 bodies, 7 interleaved rounds
    .venv/bin/python bench/admission.py --rounds 15

No HTTP, no queue: each request's body bytes to the events that would be stored. The dict
path is what a batch request takes with the typed path off (``bodies.parse_json``, the
batch checks, ``admission.admit``: normalise and encode each message); the typed path is
``typed.read_batch`` + ``typed.admit_batch``. Bodies of 100 events each: ``bench`` is
bench/ingest.py's (``_event``: near-identical analytics-python tracks), ``server`` varies
users, event names, properties and traits (analytics-python, batch sentAt), ``browser``
the same as analytics.js sends it (each message's own sentAt: the clock-skew correction);
``single`` is bench/ingest.py's /v1/track body, one event a request.

Timing is thread CPU time (this process is pinned to one CPU when it can be), the 10th
percentile of many short runs in each round, the median over rounds: other work on a
noisy machine lengthens runs, it does not shorten them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from ingest import _event  # noqa: E402

from relay.ingest import admission, bodies, routes, typed  # noqa: E402
from relay.types import Arrival  # noqa: E402

EVENTS = 100
NOW = datetime(2024, 5, 1, 13, 0, 0, 250000, tzinfo=UTC)
NAMES = ["Order Completed", "Product Viewed", "Signed Up", "Checkout Started", "Video Played", "Page Loaded"]


def bench_body() -> bytes:
    batch = [_event(i, with_type=True) for i in range(EVENTS)]
    for message in batch:
        message["messageId"] = str(uuid.uuid4())
    return json.dumps({"batch": batch, "sentAt": "2024-05-01T12:00:01.000000+00:00"},
                      separators=(",", ":")).encode()


def varied_body(library: str, seed: int) -> bytes:
    """Distinct users, event names, properties and traits; ``library`` as the SDK sends it."""
    r = random.Random(seed)
    browser = library == "analytics.js"
    messages = []
    for i in range(EVENTS):
        kind = r.choice(["track"] * 6 + ["identify", "page", "screen", "group"])
        message: dict[str, Any] = {
            "type": kind, "messageId": str(uuid.UUID(int=r.getrandbits(128), version=4)),
            "userId": f"user-{r.randrange(10**6)}", "anonymousId": str(uuid.UUID(int=r.getrandbits(128))),
            "context": {"library": {"name": library, "version": "2.4.0"},
                        "userAgent": f"Mozilla/5.0 (X11; Linux x86_64) Chrome/{r.randrange(100, 130)}.0",
                        "page": {"path": f"/p/{r.randrange(1000)}", "url": f"https://example.com/p/{i}"},
                        "traits": {"email": f"u{r.randrange(10**6)}@example.com",
                                   "plan": r.choice(["free", "pro"])}},
            "integrations": {},
        }
        minute, second, ms = r.randrange(60), r.randrange(60), r.randrange(1000)
        message["timestamp"] = f"2024-05-01T12:{minute:02d}:{second:02d}.{ms:03d}Z"
        if browser:
            message["sentAt"] = "2024-05-01T12:59:59.000Z"
        if kind == "track":
            message["event"] = r.choice(NAMES)
            values = [r.random() * 100, r.randrange(10**6), f"v{r.randrange(1000)}", True, None,
                      [1, 2, {"a": "b"}]]
            message["properties"] = {f"p{k}": r.choice(values) for k in range(r.randrange(3, 12))}
        elif kind == "identify":
            message["traits"] = {"name": f"N {r.randrange(1000)}", "age": r.randrange(90), "email": "x@y.z"}
        elif kind in ("page", "screen"):
            message["name"] = r.choice(["Home", "Settings", "Cart"])
            message["properties"] = {"title": "T", "path": "/"}
        else:
            message["groupId"] = f"g{r.randrange(100)}"
            message["traits"] = {"size": r.randrange(500)}
        messages.append(message)
    body: dict[str, Any] = {"batch": messages, "writeKey": "wk"}
    if not browser:
        body["sentAt"] = "2024-05-01T13:00:00.000000+00:00"
    return json.dumps(body, separators=(",", ":")).encode()


def dict_path(data: bytes) -> list[Any]:
    body = bodies.parse_json(data)
    assert isinstance(body, dict)
    messages, context, integrations = routes.batch_parts(body)
    arrival = Arrival("wk", NOW, "192.0.2.10", sent_at=body.get("sentAt"), context=context,
                      integrations=integrations)
    coroutine = admission.admit(messages, arrival, None, indexed=True)
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return list(stop.value.events)
    raise AssertionError("admission waited")


def dict_single(data: bytes) -> list[Any]:
    body = bodies.parse_json(data)
    assert isinstance(body, dict)
    arrival = Arrival("wk", NOW, "192.0.2.10")
    coroutine = admission.admit([body], arrival, None, type_hint="track", strict=True)
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return list(stop.value.events)
    raise AssertionError("admission waited")


def typed_single(data: bytes) -> list[Any]:
    message = typed.read_single(data)
    assert message is not None
    events = typed.admit_single(message, "track", Arrival("wk", NOW, "192.0.2.10"), data)
    assert events is not None
    return events


def typed_path(data: bytes) -> list[Any]:
    decoded = typed.read_batch(data, routes.MAX_BATCH_MESSAGES)
    assert decoded is not None
    arrival = Arrival("wk", NOW, "192.0.2.10", sent_at=decoded.sentAt)
    events = typed.admit_batch(decoded, arrival, data)
    assert events is not None
    return events


def per_event_us(run: Callable[[bytes], list[Any]], data: bytes, runs: int = 40, repeat: int = 5,
                 events: int = EVENTS) -> float:
    samples = []
    for _ in range(runs):
        start = time.thread_time_ns()
        for _ in range(repeat):
            run(data)
        samples.append((time.thread_time_ns() - start) / repeat / events / 1000)
    samples.sort()
    return samples[len(samples) // 10]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    try:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    except (AttributeError, OSError):
        pass
    bodies_ = {"bench": bench_body(), "server": varied_body("analytics-python", 1),
               "browser": varied_body("analytics.js", 2)}
    single = _event(0, with_type=False)
    single["messageId"] = str(uuid.uuid4())
    single_data = json.dumps(single, separators=(",", ":")).encode()
    results: dict[str, dict[str, list[float]]] = {name: {"dict": [], "typed": []}
                                                  for name in [*bodies_, "single"]}
    for _ in range(args.rounds):
        for name, data in bodies_.items():
            results[name]["dict"].append(per_event_us(dict_path, data))
            results[name]["typed"].append(per_event_us(typed_path, data))
        results["single"]["dict"].append(per_event_us(dict_single, single_data, repeat=50, events=1))
        results["single"]["typed"].append(per_event_us(typed_single, single_data, repeat=50, events=1))
    print(f"µs of CPU per event, 100-event batches (single: a /v1/track body), median of {args.rounds}")
    print(f"{'body':8} {'bytes/event':>11} {'dict path':>10} {'typed path':>11} {'ratio':>6}")
    sizes = {**{name: len(data) // EVENTS for name, data in bodies_.items()}, "single": len(single_data)}
    for name, size in sizes.items():
        old, new = statistics.median(results[name]["dict"]), statistics.median(results[name]["typed"])
        print(f"{name:8} {size:>11} {old:>10.2f} {new:>11.2f} {old / new:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
