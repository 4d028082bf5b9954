"""systemd's notification protocol (``sd_notify``), spoken directly over ``$NOTIFY_SOCKET``.

Under ``Type=notify`` the relay says ``READY=1`` once the queue is open and the listeners are
bound, ``WATCHDOG=1`` from the event loop every half ``WatchdogSec`` (a loop that stops
turning stops the pings, and systemd restarts the process), ``STATUS=`` with the queue's
depth now and then, ``RELOADING=1`` ... ``READY=1`` around a reload and ``STOPPING=1`` at
shutdown. Outside systemd (no ``$NOTIFY_SOCKET``) every call does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping

from relay.types import StatusReport

log = logging.getLogger(__name__)

STATUS_INTERVAL = 30.0  # seconds between STATUS= updates
Address = str | bytes


def socket_address(value: str) -> Address | None:
    """``$NOTIFY_SOCKET`` as an address for ``sendto``: a path, or an abstract socket
    (``@name``); None when unset or of a kind this module does not speak (``vsock:``)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``), or None when the
    watchdog is off or meant for another process (``$WATCHDOG_PID``), as sd_watchdog_enabled."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    watchdog_pid = environ.get("WATCHDOG_PID", "")
    try:
        if watchdog_pid and int(watchdog_pid) != pid:
            return None
        value = int(usec)
    except ValueError:
        log.warning("ignoring a malformed watchdog setting",
                    extra={"WATCHDOG_USEC": usec, "WATCHDOG_PID": watchdog_pid})
        return None
    return value / 2_000_000 if value > 0 else None


def describe(report: StatusReport) -> str:
    """The one-line ``STATUS=`` text for a ``Relay.status()`` report."""
    queue = report.queue
    parts = [f"queue {queue.events} events, {_size(queue.bytes)}, oldest {queue.oldest_age_s:g} s"]
    for dest in report.destinations:
        parts.append(f"{dest.name} {dest.state} ({dest.pending} pending)")
    return "; ".join(parts)


def _size(n: int) -> str:
    value, unit = float(n), "B"
    for bigger in ("KiB", "MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Start (the watchdog and status tasks) and stop may each be called more than once."""

    def __init__(self, address: Address | None, watchdog: float | None = None,
                 status_interval: float = STATUS_INTERVAL) -> None:
        self.address = address
        self.watchdog = watchdog if address is not None else None
        self.status_interval = status_interval
        self._socket: socket.socket | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._warned = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        address = socket_address(env.get("NOTIFY_SOCKET", ""))
        if env.get("NOTIFY_SOCKET") and address is None:
            log.warning("NOTIFY_SOCKET is of an unsupported kind; not notifying systemd",
                        extra={"NOTIFY_SOCKET": env["NOTIFY_SOCKET"]})
        return cls(address, watchdog_interval(env, os.getpid()))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send one datagram of ``KEY=value`` lines; False when it could not be sent."""
        if self.address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            self._socket.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:  # systemd gone or busy: the relay carries on regardless
            if not self._warned:
                self._warned = True
                log.warning("cannot notify systemd: %s", exc)
            return False
        return True

    def ready(self, status: str | None = None) -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    @contextlib.contextmanager
    def reloading(self) -> Iterator[None]:
        """``with notifier.reloading(): ...`` brackets a reload; the relay is ready again
        afterwards whether the new config was taken or refused (the old one stays)."""
        self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", "STATUS=reloading")
        try:
            yield
        finally:
            self.send("READY=1")

    async def start(self, status: Callable[[], Awaitable[str]] | None = None) -> None:
        if self._tasks or self.address is None:
            return
        if self.watchdog is not None:
            self._tasks.append(asyncio.create_task(self._watchdog_loop(self.watchdog), name="watchdog"))
        if status is not None:
            self._tasks.append(asyncio.create_task(self._status_loop(status), name="notify-status"))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._socket is not None:
            sock, self._socket = self._socket, None
            sock.close()

    async def _watchdog_loop(self, interval: float) -> None:
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def _status_loop(self, status: Callable[[], Awaitable[str]]) -> None:
        while True:
            await asyncio.sleep(self.status_interval)
            try:
                self.status(await status())
            except Exception as exc:  # a status line is not worth stopping for
                log.debug("no status for systemd: %s", exc)
