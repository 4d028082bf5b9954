"""The ``file`` type: delivered events appended as NDJSON, one line an event.

Files are named ``events-<UTC hour>-<n>.ndjson`` (``.ndjson.gz`` with gzip, each batch a
gzip member, which gzip readers concatenate) in the folder ``path``; a new file starts
when the current one reaches ``rotate_bytes`` or, with ``rotate_hourly``, the hour
changes. Every batch is fsynced before ``send`` returns, so progress is recorded only
for events that are on disk. A crash can leave a torn last line (or, gzipped, a torn last
member); the next start trims it.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import re
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from relay.config import DestinationConfig
from relay.forward.retry import Answer
from relay.sinks import Outgoing
from relay.types import Stored

GZIP_LEVEL = 6
_NAME = re.compile(r"^events-(\d{8}T\d{2})-(\d+)\.ndjson(\.gz)?$")


class FileSink:
    def __init__(self, config: DestinationConfig) -> None:
        self.config = config
        self.folder = Path(config.path)
        self.suffix = ".ndjson.gz" if config.gzip else ".ndjson"
        self._file: BinaryIO | None = None
        self._hour = ""
        self._written = 0
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        await asyncio.to_thread(self._trim_torn_tail)

    async def stop(self) -> None:
        async with self._lock:
            if self._file is not None:
                file, self._file = self._file, None
                await asyncio.to_thread(file.close)

    def prepare(self, event: Stored) -> Outgoing:
        return Outgoing(event, event.body, "")

    async def send(self, batch: Sequence[Outgoing]) -> Answer:
        data = b"".join(o.data + b"\n" for o in batch)
        async with self._lock:
            try:
                await asyncio.to_thread(self._append, data)
            except OSError as exc:
                if self._file is not None:
                    self._file.close()
                    self._file = None
                return Answer(None, error=f"cannot write {self.folder}: {exc}")
        return Answer(200)

    async def probe(self) -> bool:
        return True

    def _append(self, data: bytes) -> None:
        if self.config.gzip:
            data = gzip.compress(data, compresslevel=GZIP_LEVEL)
        hour = time.strftime("%Y%m%dT%H", time.gmtime())
        file = self._file
        if (
            file is None
            or self._written >= self.config.rotate_bytes
            or (self.config.rotate_hourly and hour != self._hour)
        ):
            if file is not None:
                file.close()
            file = self._file = self._open_next(hour)
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
        self._written += len(data)

    def _open_next(self, hour: str) -> BinaryIO:
        self.folder.mkdir(parents=True, exist_ok=True)
        numbers = [int(m.group(2)) for p in self.folder.iterdir()
                   if (m := _NAME.match(p.name)) and m.group(1) == hour]
        path = self.folder / f"events-{hour}-{max(numbers, default=0) + 1:04d}{self.suffix}"
        self._hour, self._written = hour, 0
        file = path.open("ab")
        fsync_folder(self.folder)
        return file

    def _trim_torn_tail(self) -> None:
        """A plain file whose last line has no newline was cut by a crash: drop that line
        (its events were not recorded as delivered and will be written again)."""
        if not self.folder.is_dir():
            return
        for path in self.folder.glob("events-*.ndjson"):
            with path.open("rb+") as file:
                size = file.seek(0, os.SEEK_END)
                if size == 0:
                    continue
                file.seek(size - 1)
                if file.read(1) == b"\n":
                    continue
                keep = _last_newline_end(file, size)
                file.truncate(keep)
                os.fsync(file.fileno())
        for path in self.folder.glob("events-*.ndjson.gz"):
            with path.open("rb+") as file:
                size = file.seek(0, os.SEEK_END)
                keep = _complete_members_end(file)
                if keep < size:
                    file.truncate(keep)
                    os.fsync(file.fileno())


def _last_newline_end(file: BinaryIO, size: int) -> int:
    block = 65536
    end = size
    while end > 0:
        start = max(0, end - block)
        file.seek(start)
        chunk = file.read(end - start)
        at = chunk.rfind(b"\n")
        if at >= 0:
            return start + at + 1
        end = start
    return 0


def _complete_members_end(file: BinaryIO) -> int:
    """The offset just past the last complete gzip member (each batch is one member)."""
    file.seek(0)
    good = start = 0  # end of the last complete member; file offset of ``data``
    member = zlib.decompressobj(wbits=31)
    while chunk := file.read(65536):
        data = chunk
        while data:
            try:
                member.decompress(data)
            except zlib.error:
                return good
            if not member.eof:
                start += len(data)
                break
            good = start = start + len(data) - len(member.unused_data)
            data = member.unused_data
            member = zlib.decompressobj(wbits=31)
    return good


def fsync_folder(folder: Path) -> None:
    """Make a folder's entries (a new or renamed file) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
