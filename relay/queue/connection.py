"""One SQLite connection owned by one thread, and where sqlite3's errors become the relay's.

Calls are marshalled to the connection's own thread through a queue and answered on the
event loop, as aiosqlite does; a call after ``close`` is refused with QueueClosed.
``staged`` is the one exception, for the queue's writer: its first part runs on the calling
thread while the connection is idle, and its second on the connection's thread before any
other call (the thread holds ``_lock`` while it runs anything, so the two never overlap). Every
``sqlite3.Error`` raised by a call is mapped here, once: a full disk or the queue's page cap
to QueueFull, a closed connection to QueueClosed, anything else to QueueError (the original
error is kept as ``__cause__``). Nothing outside ``relay.queue`` sees a sqlite3 exception.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from relay.errors import QueueClosed, QueueError, QueueFull

T = TypeVar("T")
FULL_RETRY_AFTER = 5  # seconds a client is told to wait when the queue is full
BUSY_TIMEOUT_MS = 5000  # how long a statement waits for another process's lock
_WAKE: tuple[()] = ()  # queued to make the thread run what ``staged`` left for it

_Call = tuple[Callable[..., Any], tuple[Any, ...], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]
S = TypeVar("S")


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
        self._calls: queue.SimpleQueue[_Call | tuple[()] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = True
        self._lock = threading.Lock()
        self._next: collections.deque[_Call] = collections.deque()
        self._conn: sqlite3.Connection | None = None

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

    async def staged(self, here: Callable[..., S | None], there: Callable[[sqlite3.Connection, S], T],
                     *args: Any) -> T | None:
        """``here(connection, *args)`` on the calling thread, at once, if the connection is
        idle; then ``there(connection, its result)`` on the connection's thread before any
        other call. None, with nothing run, when the connection is busy; None too when
        ``here`` returns None (it declined, leaving nothing open)."""
        if self._closed:
            raise QueueClosed("the queue is closed")
        conn = self._conn
        if conn is None or not self._lock.acquire(blocking=False):
            return None
        try:
            try:
                state = here(conn, *args)
            except sqlite3.Error as exc:
                error = mapped(exc)
                raise error from exc
            if state is None:
                return None
            loop = asyncio.get_running_loop()
            future: asyncio.Future[T] = loop.create_future()
            self._next.append((there, (state,), loop, future))
            self._calls.put(_WAKE)
        finally:
            self._lock.release()
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
        self._conn = conn
        loop.call_soon_threadsafe(_resolve, opened, None, None)
        try:
            while (item := self._calls.get()) is not None:
                with self._lock:
                    while self._next:
                        _run(conn, self._next.popleft())
                    if item:
                        _run(conn, item)
        finally:
            with self._lock:
                self._conn = None
                conn.close()
                left = list(self._next)
                self._next.clear()
            while True:  # calls queued behind the close: refused
                try:
                    item = self._calls.get_nowait()
                except queue.Empty:
                    break
                if item:
                    left.append(item)
            for _fn, _args, call_loop, future in left:
                try:
                    call_loop.call_soon_threadsafe(_resolve, future, None, QueueClosed("the queue is closed"))
                except RuntimeError:
                    pass


def _run(conn: sqlite3.Connection, item: _Call) -> None:
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
