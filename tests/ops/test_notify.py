"""systemd notifications, received on a real datagram socket standing in for systemd's."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from relay.ops.notify import Notifier, describe, socket_address, watchdog_interval
from relay.types import StatusReport

WAIT = 20.0  # seconds any wait for a datagram may take


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound where systemd's would be, and the $NOTIFY_SOCKET naming it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        path = tmp_path / "notify.sock"
        assert len(str(path)) < 100, "unix socket paths are limited to 107 bytes"
        sock.bind(str(path))
        name = str(path)
    else:
        name = f"@relay-test-{uuid.uuid4().hex}"
        sock.bind(b"\0" + name[1:].encode())
    try:
        yield sock, name
    finally:
        sock.close()


def receive_until(sock: socket.socket, wanted: str, got: list[list[str]], after: int = -1,
                  timeout: float = WAIT) -> None:
    """Append each datagram (as its lines) to ``got`` until one past index ``after`` has
    the line ``wanted``."""
    deadline = time.monotonic() + timeout
    while not any(wanted in message for message in got[after + 1:]):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {wanted} within {timeout} s; got {got}")
        sock.settimeout(left)
        try:
            got.append(sock.recv(4096).decode().split("\n"))
        except TimeoutError:
            continue


def first(got: list[list[str]], line: str, after: int = -1) -> int:
    return next(i for i, message in enumerate(got) if i > after and line in message)


# --- the relay as systemd runs it ---------------------------------------------------------------


def test_the_relay_says_ready_then_pings_the_watchdog_then_says_stopping(
    notify_socket: tuple[socket.socket, str], relay_process, tmp_path: Path
) -> None:
    sock, name = notify_socket
    proc = relay_process(
        f'[server]\nhost = "127.0.0.1"\nport = 0\n[queue]\npath = "{tmp_path / "q.db"}"\n',
        env={"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "200000"},
    )
    proc.start()
    got: list[list[str]] = []
    receive_until(sock, "READY=1", got)
    ready = first(got, "READY=1")
    # READY=1 comes once the listeners are bound: the admin listener answers ready right away
    with urllib.request.urlopen(f"http://127.0.0.1:{proc.admin_port}/ready", timeout=10) as resp:
        assert json.load(resp) == {"status": "ready"}
    assert any(line.startswith("STATUS=queue 0 events") for line in got[ready])
    receive_until(sock, "WATCHDOG=1", got, after=ready)
    proc.terminate()
    receive_until(sock, "STOPPING=1", got)
    watchdog = first(got, "WATCHDOG=1", after=ready)
    stopping = first(got, "STOPPING=1")
    assert ready < watchdog < stopping
    assert proc.proc is not None and proc.proc.returncode == 0


def test_without_notify_socket_the_relay_runs_and_stops_as_before(relay_process, tmp_path: Path) -> None:
    proc = relay_process(f'[queue]\npath = "{tmp_path / "q.db"}"\n[server]\nport = 0\n',
                         env={"NOTIFY_SOCKET": "", "WATCHDOG_USEC": ""})
    proc.start()
    assert proc.terminate() == 0


# --- the notifier in-process --------------------------------------------------------------------


async def test_a_reload_is_bracketed_by_reloading_and_ready(notify_socket: tuple[socket.socket, str]) -> None:
    sock, name = notify_socket
    notifier = Notifier(socket_address(name))
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    with notifier.reloading():
        pass
    got: list[list[str]] = []
    receive_until(sock, "READY=1", got)
    assert "RELOADING=1" in got[0]
    [stamp] = [line for line in got[0] if line.startswith("MONOTONIC_USEC=")]
    assert int(stamp.partition("=")[2]) >= before
    assert got[1][0] == "READY=1"
    await notifier.stop()


async def test_a_failed_reload_still_ends_with_ready(notify_socket: tuple[socket.socket, str]) -> None:
    sock, name = notify_socket
    notifier = Notifier(socket_address(name))
    with pytest.raises(ValueError), notifier.reloading():
        raise ValueError("bad config")
    got: list[list[str]] = []
    receive_until(sock, "READY=1", got)
    assert "RELOADING=1" in got[0]
    await notifier.stop()


async def test_status_is_sent_periodically_from_the_provider(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, name = notify_socket
    calls = 0

    async def status() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("the queue is busy")  # skipped, not fatal
        return f"queue {calls} events"

    notifier = Notifier(socket_address(name), watchdog=None, status_interval=0.01)
    await notifier.start(status)
    await notifier.start(status)  # a second start changes nothing
    try:
        got: list[list[str]] = []
        await asyncio.to_thread(receive_until, sock, "STATUS=queue 2 events", got)
        assert got[0] == ["STATUS=queue 2 events"]
    finally:
        await notifier.stop()
        await notifier.stop()


def test_without_a_socket_nothing_is_sent() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert notifier.send("READY=1") is False
    assert notifier.watchdog is None


def test_a_vanished_socket_does_not_stop_the_relay(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "gone.sock"))
    assert notifier.send("READY=1") is False
    notifier.stopping()  # still no exception


@pytest.mark.parametrize(("value", "expected"), [
    ("/run/systemd/notify", "/run/systemd/notify"),
    ("@sd-notify", b"\0sd-notify"),
    ("vsock:2:1234", None),
    ("", None),
])
def test_notify_socket_addresses(value: str, expected: str | bytes | None) -> None:
    assert socket_address(value) == expected


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, None),
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}, 0.1),
    ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
])
def test_watchdog_interval_is_half_the_timeout_for_this_process(environ: dict[str, str],
                                                                expected: float | None) -> None:
    assert watchdog_interval(environ, os.getpid()) == expected


def test_the_status_line_names_the_queue_depth_and_each_destination() -> None:
    report = msgspec.convert({
        "queue": {"events": 1234, "bytes": 5 * 1024 * 1024, "oldest_age_s": 12.5, "evicted_events": 0,
                  "corrupt_files": 0, "last_corrupt_file": None},
        "dead_letter": {"events": 0},
        "destinations": [
            {"name": "seg", "type": "segment", "state": "retrying", "pending": 1234, "delivered": 0,
             "dead_lettered": 0, "last_error": None, "oldest_pending_age_s": 0.0},
            {"name": "files", "type": "file", "state": "ok", "pending": 0, "delivered": 0,
             "dead_lettered": 0, "last_error": None, "oldest_pending_age_s": 0.0},
        ],
    }, StatusReport)
    assert describe(report) == "queue 1234 events, 5.0 MiB, oldest 12.5 s; seg retrying (1234 pending); " \
                               "files ok (0 pending)"
    empty = msgspec.structs.replace(report, queue=msgspec.structs.replace(
        report.queue, events=0, bytes=0, oldest_age_s=0.0), destinations=[])
    assert describe(empty) == \
        "queue 0 events, 0 B, oldest 0 s"
