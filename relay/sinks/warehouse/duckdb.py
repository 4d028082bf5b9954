"""The ``duckdb`` type: Segment's warehouse schema in a DuckDB file, loaded in bulk.

The file is open only while a load runs (in a thread, so the event loop goes on): between
loads any tool can open it, and ``relay sql`` queries it. A reader holding the file makes
the next load wait: it is retried with backoff, and resumes about a second after the reader
lets go (``probe``); it never fails. A load is one transaction: new schemas and tables, new
columns, ``users`` and ``accounts`` upserted and ``discards`` merged batch by batch, then the
rows of each event table, from all the load's batches at once.

Rows reach DuckDB as newline-delimited JSON arrays in a temporary file (``stage``), which
DuckDB reads and casts to the columns' types itself (``read_json``): msgspec writes them much
faster than Python values become Arrow arrays, and pyarrow (some 45 MB) is not loaded. An
event table's rows are inserted with a plain ``INSERT``; ``id`` is its primary key, so an
event the table already holds (a batch sent again after a crash) fails the insert, and the
load is then run again merging by key (``ON CONFLICT DO NOTHING``, each batch on its own, as
an event sent twice in one load keeps its first row); loads go on that way until one meets
no event already there.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import msgspec

from relay.config import DestinationConfig
from relay.forward.retry import Answer
from relay.sinks import options as opts
from relay.sinks.warehouse import base, sql
from relay.sinks.warehouse.load import Catalog, TableLoad
from relay.sinks.warehouse.schema import DISCARDS, Kind
from relay.types import Stored

TYPES: dict[Kind, str] = {"varchar": "VARCHAR", "integer": "BIGINT", "float": "DOUBLE", "boolean": "BOOLEAN",
                          "timestamp": "TIMESTAMPTZ"}
STAGE = "relay_stage"
_encode = msgspec.json.Encoder().encode


class DuckDBOptions(base.WarehouseOptions, frozen=True, forbid_unknown_fields=True, kw_only=True):
    path: str  # the database file
    memory_limit: str = "128MB"  # DuckDB's own memory while loading
    threads: int = msgspec.field(default=2)


class DuckDBSink(base.WarehouseSink):
    type_name = "duckdb"

    def __init__(self, config: DestinationConfig) -> None:
        options = opts.parse(config.options, DuckDBOptions)
        base.require("duckdb", type_name=self.type_name)
        if not options.path.strip():
            raise ValueError("`options.path`: expected the database file's path")
        if options.threads < 1:
            raise ValueError("`options.threads`: expected at least 1")
        super().__init__(config, options)
        self.path = Path(options.path)
        self.options = options
        self._catalog: Catalog | None = None
        self._careful = False  # merge event tables by key (a recent load met events already there)

    async def start(self) -> None:
        await asyncio.to_thread(self._prepare)

    def _prepare(self) -> None:
        """The folder made, and duckdb imported now rather than by the first load (it takes a
        few hundred milliseconds, which a backlog waiting at start would wait for)."""
        import duckdb  # noqa: F401

        self.path.parent.mkdir(parents=True, exist_ok=True)

    async def probe(self) -> bool:
        """True once the file can be opened for writing (no reader holds it)."""
        return await asyncio.to_thread(self._can_open)

    def _can_open(self) -> bool:
        import duckdb

        try:
            duckdb.connect(str(self.path), config=self._config()).close()
        except duckdb.Error:
            return False
        return True

    def _config(self) -> dict[str, Any]:
        return {"memory_limit": self.options.memory_limit, "threads": self.options.threads}

    async def _load(self, batches: list[list[Stored]]) -> Answer:
        return await asyncio.to_thread(self._load_now, batches)

    def _load_now(self, batches: list[list[Stored]]) -> Answer:
        import duckdb

        try:
            con = duckdb.connect(str(self.path), config=self._config())
        except duckdb.IOException as exc:
            return Answer(None, error=f"{self.path} is held by another process; the load waits: {exc}")
        except duckdb.Error as exc:
            return Answer(None, error=f"cannot open {self.path}: {exc}")
        try:
            with tempfile.TemporaryDirectory(prefix="relay-duckdb-") as folder:
                try:
                    return self._load_in(con, batches, Path(folder), self._careful)
                except duckdb.ConstraintException:
                    if self._careful:
                        raise
                con.execute("ROLLBACK")  # an event already there: again, merging by key
                return self._load_in(con, batches, Path(folder), True)
        except base.Unmappable as exc:
            return Answer(400, body=str(exc))
        except (duckdb.ConversionException, duckdb.ConstraintException, duckdb.InvalidInputException,
                duckdb.OutOfRangeException) as exc:
            self._catalog = None
            return Answer(400, body=f"DuckDB refused the data: {exc}")
        except duckdb.Error as exc:
            self._catalog = None  # read again: the file may have changed under the relay
            return Answer(None, error=f"DuckDB load failed: {exc}")
        finally:
            con.close()

    def _load_in(self, con: Any, batches: list[list[Stored]], folder: Path, careful: bool) -> Answer:
        """The load in one transaction; ``careful``: event tables merged by key, batch by batch."""
        catalog = (self._catalog or read_catalog(con)).copy()
        loaded_at = base.now()
        stages = Stages(folder)
        try:
            con.execute("BEGIN TRANSACTION")
            for n, batch in enumerate(batches):
                load = self.plan(batch, catalog, loaded_at)
                for name in load.new_schemas:
                    con.execute(f"CREATE SCHEMA IF NOT EXISTS {sql.quote(name)}")
                for table in load.tables:
                    if table.create:
                        con.execute(sql.create_table(table, TYPES))
                    else:
                        for statement in sql.add_columns(table, TYPES):
                            con.execute(statement)
                    if table.latest or table.table == DISCARDS:  # merged in queue order, batch by batch
                        con.execute(sql.merge(table, stages.one(table).source()))
                    else:  # inserted once every batch's tables and columns are there
                        stages.add(table, n if careful else 0)
                load.apply(catalog)
            met = False  # an event a table already held
            for stage in stages.events.values():
                statement = sql.merge(stage.load, stage.source()) if careful else stage.insert()
                inserted = con.execute(statement).fetchone()
                met = met or (inserted is not None and inserted[0] < stage.rows)
            con.execute("COMMIT")
        finally:
            stages.close()
        self._catalog = catalog
        self._careful = careful and met
        return Answer(200)


class Stages:
    """The staged rows of one load, in a temporary folder: event tables' rows by table and
    columns (and batch, when merging by key), so that a load inserts each table once."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.events: dict[tuple[Any, ...], Stage] = {}
        self._all: list[Stage] = []

    def _new(self, load: TableLoad) -> Stage:
        stage = Stage(self.folder / f"{len(self._all)}.ndjson", load)
        self._all.append(stage)
        return stage

    def one(self, load: TableLoad) -> Stage:
        stage = self._new(load)
        stage.write(load)
        return stage

    def add(self, load: TableLoad, batch: int) -> None:
        key = (load.schema, load.table, batch, *load.columns)
        stage = self.events.get(key)
        if stage is None:
            stage = self.events[key] = self._new(load)
        stage.write(load)

    def close(self) -> None:
        for stage in self._all:
            stage.close()


class Stage:
    """Rows of a table for DuckDB to read: one JSON array per row, one row per line, the
    values as text that DuckDB casts to the columns' types (exactly: msgspec writes floats
    that read back the same, and times in ISO-8601 with microseconds and a zone)."""

    def __init__(self, path: Path, load: TableLoad) -> None:
        self.path = path
        self.load = load  # its columns, in the table's order (every load written here has them)
        self.rows = 0
        self._file = path.open("wb")

    def write(self, load: TableLoad) -> None:
        if self.rows:
            self._file.write(b"\n")
        self._file.write(b"\n".join(map(_encode, zip(*load.data, strict=True))))
        self.rows += load.rows

    def source(self) -> str:
        """A subquery of the rows under the names of the columns, read once (the file is closed)."""
        self._file.close()
        named = enumerate(zip(self.load.columns, self.load.kinds, strict=True), 1)
        picks = ", ".join(f"r[{i}]{_CASTS[kind]} AS {sql.quote(name)}" for i, (name, kind) in named)
        path = str(self.path).replace("'", "''")
        return (f"(SELECT {picks} FROM read_json('{path}', format = 'newline_delimited', records = 'false',"
                f" columns = {{'r': 'VARCHAR[]'}})) AS {STAGE}")

    def insert(self) -> str:
        """A plain insert (it fails on an event the table already holds)."""
        names = ", ".join(sql.quote(c) for c in self.load.columns)
        target = sql.qualified(self.load.schema, self.load.table)
        return f"INSERT INTO {target} ({names}) SELECT * FROM {self.source()}"

    def close(self) -> None:
        self._file.close()


_CASTS: dict[Kind, str] = {"varchar": "", "integer": "::BIGINT", "float": "::DOUBLE", "boolean": "::BOOLEAN",
                           "timestamp": "::TIMESTAMPTZ"}


def read_catalog(con: Any) -> Catalog:
    catalog = Catalog()
    catalog.schemas.update(r[0] for r in con.execute(
        "SELECT schema_name FROM duckdb_schemas() WHERE database_name = current_database()").fetchall())
    columns = con.execute(
        "SELECT schema_name, table_name, column_name, data_type FROM duckdb_columns()"
        " WHERE database_name = current_database() ORDER BY schema_name, table_name, column_index").fetchall()
    for schema_name, table, column, data_type in columns:
        catalog.tables.setdefault((schema_name, table), {})[column] = sql.kind_of(data_type)
    return catalog
