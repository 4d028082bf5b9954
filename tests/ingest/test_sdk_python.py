"""A real client: segment-analytics-python pointed at the relay delivers every event, all queued."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from segment.analytics import Client

N_EVENTS = 300
FLUSH_TIMEOUT = 30.0


def _send_with_sdk(url: str, write_key: str, n: int, *, gzip: bool) -> tuple[list[str], list[Any]]:
    """Send ``n`` track/identify messages through a real SDK client; return (messageIds, errors).

    Runs in a worker thread: the SDK is synchronous. Its own ``flush()`` waits without a
    bound, so the flush runs in a daemon thread joined with a timeout.
    """
    errors: list[Any] = []
    client = Client(
        write_key,
        host=url,
        sync_mode=False,
        gzip=gzip,
        max_retries=2,
        timeout=10,
        upload_size=100,
        upload_interval=0.05,
        max_queue_size=10 * n,
        on_error=lambda exc, batch: errors.append((repr(exc), len(batch))),
    )
    sent: list[str] = []
    for i in range(n):
        if i % 3 == 0:
            ok, msg = client.identify(f"user-{i}", {"plan": "pro", "i": i})
        elif i % 3 == 1:
            ok, msg = client.track(f"user-{i}", "Order Completed", {"revenue": i, "note": "x" * (i % 50)})
        else:
            # An explicit messageId, as an app that deduplicates its own retries would set.
            ok, msg = client.track(anonymous_id=f"anon-{i}", event="Viewed", message_id=str(uuid.uuid4()))
        assert ok, "the SDK refused to enqueue a message"
        sent.append(msg["messageId"])

    done = threading.Event()

    def finish() -> None:
        client.shutdown()  # flush() then join() the consumer thread
        done.set()

    threading.Thread(target=finish, daemon=True, name="sdk-shutdown").start()
    if not done.wait(FLUSH_TIMEOUT):
        for consumer in client.consumers or []:
            consumer.pause()
        raise AssertionError(f"the SDK did not drain its queue in {FLUSH_TIMEOUT}s; errors: {errors[:5]}")
    return sent, errors


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
async def test_segment_python_sdk_delivers_every_event(start_relay: Callable[..., Any], gzip: bool) -> None:
    write_key = "sdk-python-key"
    relay = await start_relay(server={"write_keys": [write_key]})

    sent, errors = await asyncio.wait_for(
        asyncio.to_thread(_send_with_sdk, relay.url, write_key, N_EVENTS, gzip=gzip), FLUSH_TIMEOUT + 10
    )

    assert errors == []
    assert len(set(sent)) == N_EVENTS
    rows = relay.rows("SELECT message_id, write_key, type FROM events")
    stored = {mid for mid, _, _ in rows}
    missing = set(sent) - stored
    assert not missing, f"{len(missing)} of {N_EVENTS} events the SDK sent are not in the queue"
    assert len(rows) == N_EVENTS  # stored once each
    assert {key for _, key, _ in rows} == {write_key}
    assert {t for _, _, t in rows} == {"identify", "track"}
    assert relay.dead_letters() == []
    # The SDK's library marker survived normalisation.
    libraries = {e["context"]["library"]["name"] for e in relay.events()}
    assert libraries == {"analytics-python"}


async def test_segment_python_sdk_with_a_wrong_key_gets_401_and_nothing_is_stored(
    start_relay: Callable[..., Any],
) -> None:
    relay = await start_relay(server={"write_keys": ["the-right-key"]})

    sent, errors = await asyncio.wait_for(
        asyncio.to_thread(_send_with_sdk, relay.url, "a-wrong-key", 5, gzip=False), FLUSH_TIMEOUT + 10
    )

    assert len(sent) == 5
    # The SDK gives up on a 4xx at once, reporting the batch through on_error.
    assert errors and all("401" in err for err, _ in errors)
    assert sum(size for _, size in errors) == 5
    assert relay.rows("SELECT count(*) FROM events") == [(0,)]
