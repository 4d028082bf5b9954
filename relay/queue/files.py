"""A queue file opened from the command line, whether or not a relay has it open.

``QueueFile`` is what ``relay status``, ``dlq``, ``export`` and ``recover`` use: the same
statements as the running relay's, on a connection of the command's own (read-only unless
the command changes the file). sqlite3's errors leave it as QueueError, as they leave the
running queue.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from relay.errors import QueueError
from relay.queue import deadletters, salvage, store
from relay.queue.connection import mapped
from relay.types import Live, StatusReport, Stored

BUSY_TIMEOUT_MS = 10_000
EXPORT_CHUNK = 1000


class QueueFile:
    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    @contextmanager
    def open(cls, path: str, write: bool = False) -> Iterator[QueueFile]:
        """The file at ``path`` (a QueueError when there is none, or it cannot be opened)."""
        if not Path(path).exists():
            raise QueueError(f"no queue file at {path}")
        try:
            conn = sqlite3.connect(path, isolation_level=None) if write else store.open_read_only(path)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        except sqlite3.Error as exc:
            raise mapped(exc) from exc
        try:
            with _mapped():
                if store.needs_migration(conn):
                    raise QueueError(f"{path} was written by an older version of the relay (one row per"
                                     " event): the relay migrates it when it starts on it")
                yield cls(conn, path)
        finally:
            conn.close()

    @classmethod
    @contextmanager
    def create(cls, path: str, durability: str, max_bytes: int) -> Iterator[QueueFile]:
        """The live queue file at ``path``, created with the relay's schema when missing."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with _mapped():
            conn = sqlite3.connect(path, isolation_level=None)
            try:
                if store.needs_migration(conn):  # only the relay migrates, holding the file's lock
                    raise QueueError(f"{path} was written by an older version of the relay (one row"
                                     " per event): the relay migrates it when it starts on it")
                store.prepare(conn, durability, max_bytes)
                yield cls(conn, path)
            finally:
                conn.close()

    def status(self, destinations: Sequence[Live], max_bytes: int) -> StatusReport:
        return store.report(self._conn, destinations, self.path, max_bytes, time.time())

    # --- dead letters ------------------------------------------------------------------------

    def dead_letter_count(self, flt: deadletters.DeadLetterFilter) -> int:
        return deadletters.count(self._conn, flt)

    def dead_letters(self, flt: deadletters.DeadLetterFilter, limit: int,
                     with_body: bool = False) -> list[dict[str, Any]]:
        return deadletters.listing(self._conn, flt, limit, with_body)

    def each_dead_letter(self, flt: deadletters.DeadLetterFilter) -> Iterator[dict[str, Any]]:
        return deadletters.iterate(self._conn, flt)

    def replay(self, flt: deadletters.DeadLetterFilter, admit: deadletters.Admit,
               progress: Callable[[int], None] | None = None) -> deadletters.ReplayResult:
        return deadletters.replay(self._conn, flt, admit, progress)

    def purge(self, flt: deadletters.DeadLetterFilter) -> int:
        return deadletters.purge(self._conn, flt)

    # --- events ------------------------------------------------------------------------------

    def event_count(self) -> int:
        first, last = store.id_range(self._conn)
        return last - first + 1 if last else 0

    def events(self, destination: str | None = None) -> Iterator[Any]:
        """Queued events (decoded), oldest first; only those ``destination`` has still to
        finish when it is named (a QueueError when the file has no such destination)."""
        after = 0
        if destination:
            cursor = store.cursor_of(self._conn, destination)
            if cursor is None:
                raise QueueError(f"no destination {destination!r} in the queue file")
            after = cursor
        while True:
            batch: list[Stored] = (
                store.read_after(self._conn, destination, after, EXPORT_CHUNK) if destination
                else store.read_all_after(self._conn, after, EXPORT_CHUNK))
            if not batch:
                return
            for event in batch:
                yield json.loads(event.body)
            after = batch[-1].id

    def recover_from(self, source: str, destinations: Sequence[str],
                     progress: Callable[[int], None] | None = None) -> salvage.Recovery:
        """Salvage every readable event of the damaged file ``source`` that its destinations
        had not finished into this one, for the live ``destinations``."""
        return salvage.recover(source, self._conn, destinations, progress)


@contextmanager
def _mapped() -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise mapped(exc) from exc
