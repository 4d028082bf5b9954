"""One SQLite connection owned by one thread, and where sqlite3's errors become the relay's.

Calls are marshalled to the connection's own thread through a queue and answered on the
event loop, as aiosqlite does; a call after ``close`` is refused with QueueClosed. Every
``sqlite3.Error`` raised by a call is mapped here, once: a full disk or the queue's page cap
to QueueFull, a closed connection to QueueClosed, anything else to QueueError (the original
error is kept as ``__cause__``). Nothing outside ``relay.queue`` sees a sqlite3 exception.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from relay.errors import QueueClosed, QueueError, QueueFull

T = TypeVar("T")
FULL_RETRY_AFTER = 5  # seconds a client is told to wait when the queue is full

_Call = tuple[Callable[..., Any], tuple[Any, ...], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


def mapped(exc: sqlite3.Error) -> QueueError:
    """The relay's error for a sqlite3 one."""
    text = str(exc)
    if getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL" or "full" in text:
        return QueueFull(f"the queue's disk is full: {text}", FULL_RETRY_AFTER)
    if isinstance(exc, sqlite3.ProgrammingError) and "closed" in text:
        return QueueClosed("the queue is closed")
    return QueueError(f"the queue could not be used: {text}")


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled; the call itself ran to its end
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Connection:
    """``open`` and ``close`` may each be called more than once."""

    def __init__(self, path: str, name: str = "relay-queue") -> None:
        self.path = path
        self.name = name
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = True

    @property
    def is_open(self) -> bool:
        return not self._closed

    async def open(self) -> None:
        if self._thread is not None:
            return
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[None] = loop.create_future()
        self._calls = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, args=(loop, opened), name=self.name, daemon=True)
        self._closed = False
        self._thread.start()
        try:
            await opened
        except BaseException:
            self._closed = True
            self._thread.join()
            self._thread = None
            raise

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` on the connection's thread."""
        if self._closed:
            raise QueueClosed("the queue is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((fn, args, loop, future))
        return await future

    async def close(self) -> None:
        """Let the calls already queued finish, then close the connection and its thread."""
        if self._thread is None:
            return
        thread, self._thread = self._thread, None
        self._closed = True
        self._calls.put(None)
        await asyncio.to_thread(thread.join)

    def _serve(self, loop: asyncio.AbstractEventLoop, opened: asyncio.Future[None]) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            loop.call_soon_threadsafe(_resolve, opened, None, mapped(exc))
            return
        loop.call_soon_threadsafe(_resolve, opened, None, None)
        try:
            while (item := self._calls.get()) is not None:
                fn, args, call_loop, future = item
                error: BaseException | None
                try:
                    result, error = fn(conn, *args), None
                except sqlite3.Error as exc:
                    result, error = None, mapped(exc)
                    error.__cause__ = exc
                except BaseException as exc:  # handed to the caller as it is
                    result, error = None, exc
                try:
                    call_loop.call_soon_threadsafe(_resolve, future, result, error)
                except RuntimeError:  # the caller's loop is closed: nobody waits for this answer
                    pass
        finally:
            conn.close()
            while True:  # calls queued behind the close: refused
                try:
                    item = self._calls.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[2].call_soon_threadsafe(_resolve, item[3], None, QueueClosed("the queue is closed"))
