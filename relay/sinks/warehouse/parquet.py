"""The ``parquet`` type: Segment Data Lakes' layout, written with pyarrow.

Files: ``<path>/<source>/<table>/day=YYYY-MM-DD/hr=HH/part-<load>-<n>.parquet``, partitioned
by each row's ``received_at`` (UTC); every file of a table carries the table's whole schema
so far, and a new column appears in the files written from then on. DuckDB and pandas read a
table's folder as one dataset (``read_parquet('.../order_completed/**/*.parquet',
union_by_name = true)``).

A load writes one file per table and partition, holding the rows of all its batches (so a
file is as large as a load allows: 10,000 events of ``max_events`` 2,500 and ``concurrency``
4), each under a hidden temporary name, and fsyncs them; then it commits by
writing the load journal (``<path>/.relay/<destination>.json``: the files and the events of
the latest loads) in the same way; then renames the files into place and fsyncs their
folders. Only then does ``send`` answer, and the forwarder record progress. After a crash, the
start rolls a committed load forward (renames what is left) and deletes the temporary files
of one that did not commit; events the forwarder sends again that the journal holds are not
written twice. Readers never see a partial file.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import msgspec

from relay.config import DestinationConfig
from relay.forward.retry import Answer
from relay.sinks import options as opts
from relay.sinks.file import fsync_folder
from relay.sinks.warehouse import arrow, base
from relay.sinks.warehouse.load import Catalog, TableLoad
from relay.sinks.warehouse.schema import Kind
from relay.types import Stored

JOURNAL_DIR = ".relay"
ARROW_POOL = "ARROW_DEFAULT_MEMORY_POOL"
TEMP_PREFIX = ".part-"
TEMP_SUFFIX = ".parquet.tmp"


class ParquetOptions(base.WarehouseOptions, frozen=True, forbid_unknown_fields=True, kw_only=True):
    path: str  # the lake's root folder
    compression: Literal["snappy", "zstd", "gzip", "none"] = "snappy"


class ParquetSink(base.WarehouseSink):
    type_name = "parquet"

    def __init__(self, config: DestinationConfig) -> None:
        options = opts.parse(config.options, ParquetOptions)
        base.require("pyarrow", type_name=self.type_name)
        # Arrow's buffers from the C library's allocator, unless the environment says otherwise:
        # Arrow's default, mimalloc, keeps the pages a load freed in a heap per thread, and loads
        # run on the executor's threads (the benchmark's peak RSS: 175 MB, against 155 MB). Arrow
        # reads the variable once, when pyarrow first allocates: a type created after pyarrow
        # allocated in this process leaves its allocator as it is.
        os.environ.setdefault(ARROW_POOL, "system")
        if not options.path.strip():
            raise ValueError("`options.path`: expected the lake's root folder")
        super().__init__(config, options)
        self.root = Path(options.path)
        self.options = options
        self.journal_path = self.root / JOURNAL_DIR / f"{config.name}.json"
        # events a restart may send again: those of the batches in flight at most
        self.keep_events = config.concurrency * config.max_events
        self._loads: list[dict[str, Any]] = []
        self._written_ids: set[str] = set()  # the message ids of the journal's loads
        self._catalog: Catalog | None = None
        self._last_load = 0

    async def start(self) -> None:
        await asyncio.to_thread(self._recover)
        # pyarrow imported now rather than by the first load (some 300 ms, which a backlog
        # waiting at start would wait for)
        await asyncio.to_thread(importlib.import_module, "pyarrow.parquet")

    async def probe(self) -> bool:
        return True

    async def _load(self, batches: list[list[Stored]]) -> Answer:
        try:
            return await asyncio.to_thread(self._load_now, batches)
        except OSError as exc:
            self._catalog = None
            return Answer(None, error=f"cannot write under {self.root}: {exc}")

    # --- a load ----------------------------------------------------------------------------------

    def _load_now(self, batches: list[list[Stored]]) -> Answer:
        key = self.schema_for
        # events already written before a crash (the journal says so): most loads have none
        if not self._written_ids.isdisjoint([e.message_id for batch in batches for e in batch]):
            written = {(s, m) for old in self._loads for s, m in old["events"]}
            batches = [kept for batch in batches
                       if (kept := [e for e in batch if (key(e.write_key), e.message_id) not in written])]
        if not batches:
            return Answer(200)
        catalog = (self._catalog or read_catalog(self.root)).copy()
        loaded_at = base.now()
        load_id = self._last_load = max(time.time_ns(), self._last_load + 1)
        files = _LoadFiles(self.root, load_id, self.options.compression)
        try:
            for batch in batches:
                try:
                    load = self.plan(batch, catalog, loaded_at)
                except base.Unmappable as exc:
                    files.discard()
                    return Answer(400, body=str(exc))
                for table in load.tables:
                    columns = {**catalog.tables.get((table.schema, table.table), {}), **table.add}
                    for partition, rows in _partitions(table).items():
                        files.write(table.schema, table.table, partition, arrow.table(table, columns, rows))
                load.apply(catalog)
            files.close()
            ids = [[self.schema_for(e.write_key), e.message_id] for batch in batches for e in batch]
            self._commit({"load": load_id, "events": ids,
                          "files": [[str(t.relative_to(self.root)), str(f.relative_to(self.root))]
                                    for t, f in files.done]})
        except BaseException:
            files.discard()
            raise
        folders = set()
        for temp, final in files.done:
            os.replace(temp, final)
            folders.add(final.parent)
        for folder in folders:
            fsync_folder(folder)
        self._catalog = catalog
        return Answer(200)

    def _commit(self, entry: dict[str, Any]) -> None:
        """Write the journal with this load in it: the load's commit point."""
        loads = [*self._loads, entry]
        kept, count = [], 0
        for old in reversed(loads):
            kept.append(old)
            count += len(old["events"])
            if count >= self.keep_events:
                break
        kept.reverse()
        self.journal_path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.journal_path.with_suffix(".tmp")
        with temp.open("wb") as file:
            file.write(msgspec.json.encode({"loads": kept}))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, self.journal_path)
        fsync_folder(self.journal_path.parent)
        self._loads = kept
        self._remember()

    def _remember(self) -> None:
        self._written_ids = {event[1] for old in self._loads for event in old["events"]}

    # --- after a crash ---------------------------------------------------------------------------

    def _recover(self) -> None:
        """Roll the journal's loads forward; delete temporary files no committed load names."""
        if self.journal_path.exists():
            self._loads = json.loads(self.journal_path.read_text(encoding="utf-8"))["loads"]
        self._remember()
        self._last_load = max((old["load"] for old in self._loads), default=0)
        committed = {}
        for old in self._loads:
            for temp, final in old["files"]:
                committed[self.root / temp] = self.root / final
        for temp, final in committed.items():
            if temp.exists():
                os.replace(temp, final)
                fsync_folder(final.parent)
        if self.root.is_dir():
            for folder, _, names in os.walk(self.root):
                for name in names:
                    if name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX):
                        (Path(folder) / name).unlink()


class _LoadFiles:
    """The files of one load: one per table and partition, holding the rows of all the load's
    batches (a table's columns as of the load's end: a batch's rows read NULL in a column a
    later batch added), written and then fsynced together by ``close``."""

    def __init__(self, root: Path, load_id: int, compression: str) -> None:
        self.root = root
        self.load_id = load_id
        self.compression = None if compression == "none" else compression
        self.pending: dict[tuple[str, str, str], list[Any]] = {}  # Arrow tables, by file
        self.done: list[tuple[Path, Path]] = []  # (temporary, final) names, closed and fsynced

    def write(self, schema_name: str, table: str, partition: str, data: Any) -> None:
        self.pending.setdefault((schema_name, table, partition), []).append(data)

    def close(self) -> None:
        import pyarrow as pa  # type: ignore[import-untyped]
        import pyarrow.parquet as pq  # type: ignore[import-untyped]

        for (schema_name, table, partition), parts in self.pending.items():
            data = parts[0] if len(parts) == 1 else pa.concat_tables(parts, promote_options="default")
            parts.clear()  # the load's Arrow buffers go as each file is written
            folder = self.root / schema_name / table / partition
            final = folder / f"part-{self.load_id:020d}-{len(self.done):04d}.parquet"
            temp = folder / f"{TEMP_PREFIX}{final.name[len('part-'):]}{TEMP_SUFFIX}"
            new = [p for p in (folder, *folder.parents) if not p.exists()]
            folder.mkdir(parents=True, exist_ok=True)
            for made in reversed(new):  # a new folder's entry is made durable in its parent
                fsync_folder(made.parent)
            self.done.append((temp, final))
            with temp.open("wb") as file:
                pq.write_table(data, file, compression=self.compression)
            del data
        self.pending.clear()
        _fsync_all([temp for temp, _ in self.done])

    def discard(self) -> None:
        """A load that did not commit: its temporary files go."""
        self.pending.clear()
        for temp, _ in self.done:
            temp.unlink(missing_ok=True)


_SYNCS = 8  # files of a load fsynced at once


def _fsync_all(paths: list[Path]) -> None:
    """Each file made durable, all at once: fsyncs that overlap share the file system's journal
    commit (on ext4 one fsync took 3 ms here, 12 ms at p90, and a load has a file per table)."""
    if len(paths) == 1:
        _fsync(paths[0])
        return
    with ThreadPoolExecutor(min(_SYNCS, len(paths)), thread_name_prefix="parquet-fsync") as syncs:
        for _ in syncs.map(_fsync, paths):  # an error is raised here, failing the load
            pass


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _partitions(table: TableLoad) -> dict[str, list[int] | None]:
    """Row numbers by ``day=YYYY-MM-DD/hr=HH`` of their ``received_at`` (None: all the rows, the
    common case of a load within one hour)."""
    received = table.data[table.columns.index("received_at")]
    names = {moment: (f"day={moment.year:04d}-{moment.month:02d}-{moment.day:02d}/hr={moment.hour:02d}"
                      if moment is not None else "day=unknown/hr=unknown")
             for moment in set(received)}  # rows share their times
    if len(set(names.values())) == 1:
        return {next(iter(names.values())): None}
    parts: dict[str, list[int] | None] = {}
    for i, moment in enumerate(received):
        rows = parts.setdefault(names[moment], [])
        assert rows is not None
        rows.append(i)
    return parts


def read_catalog(root: Path) -> Catalog:
    """Each table's columns, from its newest file (each file has the table's whole schema)."""
    import pyarrow.parquet as pq

    catalog = Catalog()
    if not root.is_dir():
        return catalog
    for source in (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        catalog.schemas.add(source.name)
        for table in (p for p in source.iterdir() if p.is_dir()):
            files = sorted(table.glob("day=*/hr=*/part-*.parquet"), key=lambda p: p.name)
            if files:
                schema = pq.read_schema(files[-1])
                catalog.tables[(source.name, table.name)] = {f.name: _kind(f.type) for f in schema}
    return catalog


def _kind(arrow_type: Any) -> Kind:
    import pyarrow as pa

    if pa.types.is_timestamp(arrow_type) or pa.types.is_date(arrow_type):
        return "timestamp"
    if pa.types.is_boolean(arrow_type):
        return "boolean"
    if pa.types.is_integer(arrow_type):
        return "integer"
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return "float"
    return "varchar"
