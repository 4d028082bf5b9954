"""Sources: where the relay takes events from besides its HTTP listener (a stream's consumer).

A source is started after the queue and the ingest plugins and stopped before them; each
message it takes goes through ``relay.ingest.admission`` like an HTTP request's, and is
acknowledged to its origin only after the queue's transaction committed.
"""

from __future__ import annotations

from typing import Protocol


class Source(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...
