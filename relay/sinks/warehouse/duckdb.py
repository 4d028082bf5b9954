"""The ``duckdb`` type: Segment's warehouse schema in a DuckDB file, loaded in bulk.

The file is open only while a load runs (in a thread, so the event loop goes on): between
loads any tool can open it, and ``relay sql`` queries it. A reader holding the file makes
the next load wait: it is retried with backoff, and resumes about a second after the reader
lets go (``probe``); it never fails. A load is one transaction: new schemas and tables, new
columns, then each table's rows inserted from an Arrow table with ``ON CONFLICT DO NOTHING``
on ``id`` (``users`` and ``accounts`` upserted), and ``discards``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec

from relay.config import DestinationConfig
from relay.forward.retry import Answer
from relay.sinks import options as opts
from relay.sinks.warehouse import arrow, base, sql
from relay.sinks.warehouse.load import Catalog
from relay.sinks.warehouse.schema import Kind
from relay.types import Stored

TYPES: dict[Kind, str] = {"varchar": "VARCHAR", "integer": "BIGINT", "float": "DOUBLE", "boolean": "BOOLEAN",
                          "timestamp": "TIMESTAMPTZ"}
STAGE = "relay_stage"


class DuckDBOptions(base.WarehouseOptions, frozen=True, forbid_unknown_fields=True, kw_only=True):
    path: str  # the database file
    memory_limit: str = "128MB"  # DuckDB's own memory while loading
    threads: int = msgspec.field(default=2)


class DuckDBSink(base.WarehouseSink):
    type_name = "duckdb"

    def __init__(self, config: DestinationConfig) -> None:
        options = opts.parse(config.options, DuckDBOptions)
        base.require("duckdb", "pyarrow", type_name=self.type_name)
        if not options.path.strip():
            raise ValueError("`options.path`: expected the database file's path")
        if options.threads < 1:
            raise ValueError("`options.threads`: expected at least 1")
        super().__init__(config, options)
        self.path = Path(options.path)
        self.options = options
        self._catalog: Catalog | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self.path.parent.mkdir, parents=True, exist_ok=True)

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
            catalog = (self._catalog or read_catalog(con)).copy()
            loaded_at = base.now()
            con.execute("BEGIN TRANSACTION")
            for batch in batches:
                load = self.plan(batch, catalog, loaded_at)
                for name in load.new_schemas:
                    con.execute(f"CREATE SCHEMA IF NOT EXISTS {sql.quote(name)}")
                for table in load.tables:
                    if table.create:
                        con.execute(sql.create_table(table, TYPES))
                    else:
                        for statement in sql.add_columns(table, TYPES):
                            con.execute(statement)
                    con.register(STAGE, arrow.table(table))
                    try:
                        con.execute(sql.merge(table, STAGE))
                    finally:
                        con.unregister(STAGE)
                load.apply(catalog)
            con.execute("COMMIT")
            self._catalog = catalog
            return Answer(200)
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
