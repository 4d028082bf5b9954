"""The ``duckdb`` type: Segment's warehouse schema in a DuckDB file, loaded in bulk.

The file is open only while a load runs (in a thread, so the event loop goes on): between
loads any tool can open it, and ``relay sql`` queries it. A reader holding the file makes
the next load wait: it is retried with backoff, and resumes about a second after the reader
lets go (``probe``); it never fails. A load is one transaction: new schemas and tables, new
columns, ``users``, ``accounts`` and ``discards`` merged, then the rows of each event table:
each table from all the load's batches at once.

Rows reach DuckDB as newline-delimited JSON arrays in a temporary file (``stage``), which
DuckDB reads and casts to the columns' types itself (``read_json``): msgspec writes them much
faster than Python values become Arrow arrays, and pyarrow (some 45 MB) is not loaded.

Tables declare no primary key: DuckDB keeps a key's index (an ART) wholly in memory, pinned,
and reads all of it to insert into the table, so a table of a million UUID ids needed about
90 MB for it, growing with every load, and under the default ``memory_limit`` loads failed
once a table held about 1.2 million rows. Instead each insert into an event table leaves out
the rows the table already holds, matched by ``id`` and ``received_at`` (``insert``): an event
the relay sends again (a batch in flight at a crash, a dead letter replayed, a queue
recovered) carries the time the relay first received it, and DuckDB finds those rows through
the ``received_at`` ranges of the table's row groups, reading only those that can hold them,
with memory for the load's own rows only; rows all received after the newest the table
holds (the sink keeps that time per table) go in without looking. A message the relay
received twice (with ``dedup_window = 0``, or past the window) is two receptions and two
rows, as the queue and the other destinations get it twice (PostgreSQL's key keeps one).
``users``, ``accounts`` and ``discards`` are merged by their key with ``MERGE`` (``merge``),
which needs no index either.
A file written before this has tables with a primary key: they are loaded the same way, and
should DuckDB's key refuse a row of an event table (a message received twice), the load is
run again merging those tables by key (``ON CONFLICT DO NOTHING``, batch by batch, the first
row of an event kept) until a load meets no such row.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from relay.config import DestinationConfig
from relay.forward.retry import Answer
from relay.sinks import options as opts
from relay.sinks.warehouse import base, sql
from relay.sinks.warehouse.load import Catalog, TableLoad, combined
from relay.sinks.warehouse.schema import DISCARDS, LATEST_TABLES, Kind
from relay.timestamps import micros
from relay.types import Stored

TYPES: dict[Kind, str] = {"varchar": "VARCHAR", "integer": "BIGINT", "float": "DOUBLE", "boolean": "BOOLEAN",
                          "timestamp": "TIMESTAMPTZ"}
STAGE = "relay_stage"
NEW = "relay_new"  # an insert's rows (``insert``)
HELD = "relay_held"  # those of them the table holds already
TARGET = "relay_target"  # the table a ``merge`` merges into
ALIAS = "relay_warehouse"  # the file, attached to a load's in-memory connection
VECTOR_ROWS = 2048  # DuckDB's vector: a row group's size is a multiple of it
_encode = msgspec.json.Encoder().encode


class DuckDBOptions(base.WarehouseOptions, frozen=True, forbid_unknown_fields=True, kw_only=True):
    path: str  # the database file
    memory_limit: str = "128MB"  # DuckDB's own memory while loading
    threads: int = 1  # DuckDB's threads while loading (the relay runs on one core)
    # rows of a row group the relay writes (DuckDB's default is 122,880): a load's closing
    # checkpoint writes each table's last row group again, and holds it in memory to do so
    row_group_size: int = 8192


class DuckDBSink(base.WarehouseSink):
    type_name = "duckdb"

    def __init__(self, config: DestinationConfig) -> None:
        options = opts.parse(config.options, DuckDBOptions)
        base.require("duckdb", type_name=self.type_name)
        if not options.path.strip():
            raise ValueError("`options.path`: expected the database file's path")
        if options.threads < 1:
            raise ValueError("`options.threads`: expected at least 1")
        if options.row_group_size < VECTOR_ROWS or options.row_group_size % VECTOR_ROWS:
            raise ValueError(f"`options.row_group_size`: expected a multiple of {VECTOR_ROWS} "
                             f"(DuckDB's vector size), got {options.row_group_size}")
        super().__init__(config, options)
        self.path = Path(options.path)
        self.options = options
        self._catalog: Catalog | None = None
        self._keyed: set[tuple[str, str]] = set()  # event tables with a primary key (older files)
        self._careful = False  # merge keyed event tables by key (a recent load met a row there)
        # (schema, table) -> the newest received_at the event table holds, in microseconds since
        # the epoch (None: no row has one; inf: not known, nothing is fresh), read once and then
        # kept by the loads; forgotten with the catalog (see ``insert``)
        self._newest: dict[tuple[str, str], float | None] = {}

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
            self._connect().close()
        except duckdb.Error:
            return False
        return True

    def _config(self) -> dict[str, Any]:
        return {"memory_limit": self.options.memory_limit, "threads": self.options.threads}

    async def _load(self, batches: list[list[Stored]]) -> Answer:
        return await asyncio.to_thread(self._load_now, batches)

    def _connect(self) -> Any:
        import duckdb

        con = duckdb.connect(":memory:", config=self._config())
        try:  # the file attached, as only ATTACH takes a row group size
            con.execute(f"ATTACH {sql.text(str(self.path))} AS {ALIAS}"
                        f" (ROW_GROUP_SIZE {self.options.row_group_size})")
            con.execute(f"USE {ALIAS}")
        except BaseException:
            con.close()
            raise
        return con

    def _load_now(self, batches: list[list[Stored]]) -> Answer:
        """One load: its batches planned and their rows staged first, then the file opened for
        the transaction only, and closed (a checkpoint) before ``send`` answers, so that the
        file is free once the events are recorded as delivered."""
        import duckdb

        con = None
        try:
            with tempfile.TemporaryDirectory(prefix="relay-duckdb-") as folder:
                if self._catalog is None:
                    con = self._connect()
                    self._catalog, self._keyed = read_catalog(con), keyed_event_tables(con)
                    self._newest = {}
                work = self._stage(batches, self._catalog, Path(folder))
                if con is None:
                    con = self._connect()
                try:
                    self._run(con, work, self._careful)
                except duckdb.ConstraintException:
                    if self._careful:
                        raise
                    con.execute("ROLLBACK")  # an event already there: again, merging by key
                    self._keyed = keyed_event_tables(con)  # (a keyed table the relay did not know of)
                    self._run(con, work, True)
            self._catalog = work.catalog
            return Answer(200)
        except base.Unmappable as exc:
            return Answer(400, body=str(exc))
        except duckdb.IOException as exc:
            if con is None:
                return Answer(None, error=f"{self.path} is held by another process; the load waits: {exc}")
            self._catalog = None
            return Answer(None, error=f"DuckDB load failed: {exc}")
        except (duckdb.ConversionException, duckdb.ConstraintException, duckdb.InvalidInputException,
                duckdb.OutOfRangeException) as exc:
            self._catalog = None
            return Answer(400, body=f"DuckDB refused the data: {exc}")
        except duckdb.Error as exc:
            self._catalog = None  # read again: the file may have changed under the relay
            return Answer(None, error=f"DuckDB load failed: {exc}" if con is not None
                          else f"cannot open {self.path}: {exc}")
        finally:
            if con is not None:
                con.close()

    def _stage(self, batches: list[list[Stored]], catalog: Catalog, folder: Path) -> Work:
        """Each batch planned against the tables as the batches before it leave them, its DDL
        kept in order and its rows written for DuckDB to read (Unmappable for an event that
        cannot be mapped)."""
        work = Work(catalog.copy())
        loaded_at = base.now()
        merged: dict[tuple[str, str], list[TableLoad]] = {}  # users, accounts, discards: all batches'
        for n, batch in enumerate(batches):
            load = self.plan(batch, work.catalog, loaded_at)
            work.ddl.extend(f"CREATE SCHEMA IF NOT EXISTS {sql.quote(name)}" for name in load.new_schemas)
            for table in load.tables:
                work.ddl.extend([create_table(table)] if table.create else sql.add_columns(table, TYPES))
                if table.latest or table.table == DISCARDS:
                    merged.setdefault((table.schema, table.table), []).append(table)
                    continue
                work.staged += 1
                stage = Stage(folder / f"{work.staged}.ndjson", table, n)
                key = (table.schema, table.table, *table.columns)
                work.events.setdefault(key, []).append(stage)
                staged, ids = work.ids.setdefault(key, set()), table.data[table.columns.index("id")]
                if not staged.isdisjoint(ids):  # (a batch's rows of a table have distinct ids)
                    work.repeated.add(key)
                staged.update(ids)
                work.bound(key, table.data[table.columns.index("received_at")]
                           if "received_at" in table.columns else ())
            load.apply(work.catalog)
            del load
        for key, loads in merged.items():  # one merge a table: DuckDB reads all of it to merge
            work.staged += 1
            table = combined(loads, work.catalog.tables[key])
            work.merges.append(Stage(folder / f"{work.staged}.ndjson", table, 0))
        return work

    def _run(self, con: Any, work: Work, careful: bool) -> None:
        """The load's transaction: DDL, merges, then each event table's new rows in one insert
        (``insert``), or, ``careful``, a table with a primary key merged by key batch by batch
        (the first row of an event kept)."""
        con.execute("BEGIN TRANSACTION")
        for statement in work.ddl:
            con.execute(statement)
        for stage in work.merges:
            con.execute(merge(stage.load, [stage]))
        met = False  # a row a keyed table already held
        # the keyed tables' column sets (keys of work.events: schema, table, *columns)
        merged = {key for key in work.events if careful and key[:2] in self._keyed}
        # batch by batch across the column sets, so that an event's first row stays
        for stage in sorted((s for key in merged for s in work.events[key]), key=lambda s: s.batch):
            inserted = con.execute(sql.merge(stage.load, _source([stage]))).fetchone()
            met = met or (inserted is not None and inserted[0] < stage.rows)
        newest = dict(self._newest)  # as the transaction leaves each table
        for key, group in work.events.items():
            if key in merged:
                continue
            table = (key[0], key[1])
            if table not in newest:
                newest[table] = newest_received(con, *table, work.catalog.tables[table].get("received_at"))
            held, (low, high) = newest[table], work.bounds[key]
            # (a received_at that is not a time column holds inf: nothing is fresh there)
            fresh = low is not None and (held is None or low > held)
            con.execute(insert(group[0].load, group, distinct=key in work.repeated, fresh=fresh))
            if high is not None and (held is None or high > held):
                newest[table] = high
        con.execute("COMMIT")
        for key in merged:  # loaded by key: read again when next needed
            newest.pop((key[0], key[1]), None)
        self._newest = newest
        self._careful = careful and met


def create_table(load: TableLoad) -> str:
    """A new table, without a primary key (see the module's docstring)."""
    return sql.create_table(load, TYPES, keyed=False)


def insert(load: TableLoad, stages: list[Stage], *, distinct: bool, fresh: bool = False) -> str:
    """The stages' rows into their event table, each once, but for those it already holds (the
    same ``id`` and ``received_at``). The table is read through a semi join built on the
    stages' rows: DuckDB reads only the row groups whose ``received_at`` range can hold one of
    them, and holds only the load's rows in memory. ``distinct`` when an id is in two of the
    stages (a batch's rows of a table have distinct ids): their rows are made distinct by
    ``id`` and ``received_at`` first, a hash aggregate over all of their columns, which took
    about a sixth of the inserts' time when every load ran it. ``fresh``: every row was
    received after the newest row the table holds (``newest_received``), so it holds none of
    them and the rows go in without the joins (about a twentieth of a load's time here): the
    common case, a backlog loaded in the order it was received; a batch sent again after a
    crash, a dead letter replayed or a queue recovered holds rows received before."""
    target = sql.qualified(load.schema, load.table)
    names = ", ".join(sql.quote(c) for c in load.columns)
    once = "DISTINCT ON (id, received_at) " if distinct else ""
    if fresh:
        return f"INSERT INTO {target} ({names}) SELECT {once}* FROM {_source(stages)}"
    held = (f"SELECT t.id, t.received_at FROM {target} AS t SEMI JOIN {NEW} AS n"
            f" ON t.id = n.id AND t.received_at = n.received_at")
    return (f"INSERT INTO {target} ({names}) WITH {NEW} AS MATERIALIZED (SELECT * FROM {_source(stages)})"
            f" SELECT {once}* FROM {NEW} ANTI JOIN ({held}) AS {HELD}"
            f" ON {NEW}.id = {HELD}.id AND {NEW}.received_at = {HELD}.received_at")


def merge(load: TableLoad, stages: list[Stage]) -> str:
    """The stages' rows merged into ``users``, ``accounts`` or ``discards`` by the table's key
    (``MERGE``, which needs no primary key): a row the table does not hold is inserted; in
    ``users`` and ``accounts`` a row it holds takes the newer values (``sql.latest_sets``)."""
    target = sql.qualified(load.schema, load.table)
    on = " AND ".join(f"{TARGET}.{sql.quote(c)} = {NEW}.{sql.quote(c)}" for c in load.key)
    names = ", ".join(sql.quote(c) for c in load.columns)
    values = ", ".join(f"{NEW}.{sql.quote(c)}" for c in load.columns)
    update = f" WHEN MATCHED THEN UPDATE SET {sql.latest_sets(load, NEW, TARGET)}" if load.latest else ""
    return (f"MERGE INTO {target} AS {TARGET} USING (SELECT * FROM {_source(stages)}) AS {NEW} ON {on}"
            f"{update} WHEN NOT MATCHED THEN INSERT ({names}) VALUES ({values})")


@dataclass(slots=True)
class Work:
    """A load planned: the tables as it leaves them, its DDL, and its rows staged."""

    catalog: Catalog
    ddl: list[str] = field(default_factory=list)
    merges: list[Stage] = field(default_factory=list)  # users, accounts, discards: one a table
    events: dict[tuple[str, ...], list[Stage]] = field(default_factory=dict)  # by table and columns
    ids: dict[tuple[str, ...], set[Any]] = field(default_factory=dict)  # the ids staged, by the same key
    repeated: set[tuple[str, ...]] = field(default_factory=set)  # keys with an id in two stages
    # the earliest and the latest received_at staged, in microseconds since the epoch (None: no
    # time), by the same key; a column fitted as a time holds datetimes (or None) only
    bounds: dict[tuple[str, ...], tuple[int | None, int | None]] = field(default_factory=dict)
    staged: int = 0  # files written

    def bound(self, key: tuple[str, ...], received: Sequence[Any]) -> None:
        times = [t for t in received if isinstance(t, datetime)]
        low, high = self.bounds.get(key, (None, None))
        if times:
            first, last = micros(min(times)), micros(max(times))
            low = first if low is None else min(low, first)
            high = last if high is None else max(high, last)
        self.bounds[key] = (low, high)


class Stage:
    """One batch's rows of a table for DuckDB to read: one JSON array per row, one row per
    line, the values as text that DuckDB casts to the columns' types (exactly: msgspec writes
    floats that read back the same, and times in ISO-8601 with microseconds and a zone)."""

    def __init__(self, path: Path, load: TableLoad, batch: int) -> None:
        self.path = path
        self.batch = batch
        self.rows = load.rows
        # the columns, in the table's order; the values themselves are on disk now
        self.load = TableLoad(load.schema, load.table, load.create, load.add, load.columns, load.kinds, [],
                              load.latest, dict.fromkeys(load.since, ()))
        with path.open("wb") as file:
            file.write(b"\n".join(map(_encode, zip(*load.data, *load.since.values(), strict=True))))


def _source(stages: list[Stage]) -> str:
    """A subquery of the stages' rows under the names of their columns (which they share)."""
    load = stages[0].load
    named = enumerate(zip(load.columns, load.kinds, strict=True), 1)
    picks = ", ".join(f"r[{i}]{_CASTS[kind]} AS {sql.quote(name)}" for i, (name, kind) in named)
    if load.since:  # the values' times, after the columns
        times = range(len(load.columns) + 1, len(load.columns) + len(load.since) + 1)
        picks += f", list_value({', '.join(f'r[{i}]::TIMESTAMPTZ' for i in times)}) AS {sql.quote(sql.SINCE)}"
    paths = ", ".join(sql.text(str(stage.path)) for stage in stages)
    return (f"(SELECT {picks} FROM read_json([{paths}], format = 'newline_delimited', records = 'false',"
            f" columns = {{'r': 'VARCHAR[]'}})) AS {STAGE}")


_CASTS: dict[Kind, str] = {"varchar": "", "integer": "::BIGINT", "float": "::DOUBLE", "boolean": "::BOOLEAN",
                           "timestamp": "::TIMESTAMPTZ"}


def newest_received(con: Any, schema_name: str, table: str, kind: str | None) -> float | None:
    """The newest ``received_at`` an event table holds, in microseconds since the epoch, read
    as a number so that no time zone has to be known to Python: None when no row has one;
    inf (so that no row is taken as fresh) when the column is not a time (``kind``, as the
    catalog has it) or its newest value is not one DuckDB can count from the epoch
    ('infinity', a text that is not a time)."""
    if kind != "timestamp":
        return math.inf
    # the maximum of the times as the inserts' joins compare them: a TIMESTAMP column (retyped by
    # hand) is cast in the session's zone, which is not monotonic across a change to summer time
    row = con.execute(f"SELECT n, try(epoch_us(m)) FROM (SELECT count(received_at) AS n, max(received_at"
                      f"::TIMESTAMPTZ) AS m FROM {sql.qualified(schema_name, table)})").fetchone()
    if row is None or not row[0]:
        return None
    return math.inf if row[1] is None else int(row[1])


def keyed_event_tables(con: Any) -> set[tuple[str, str]]:
    """Event tables with a primary key: those a file written before held (see ``insert``)."""
    rows = con.execute(
        "SELECT schema_name, table_name FROM duckdb_constraints() WHERE database_name = current_database()"
        " AND constraint_type = 'PRIMARY KEY'").fetchall()
    return {(s, t) for s, t in rows if t not in LATEST_TABLES and t != DISCARDS}


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
