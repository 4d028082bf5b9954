"""The ``postgres`` type: Segment's warehouse schema in a PostgreSQL database, with asyncpg.

A load is one transaction: new schemas, tables and columns, then for each table its rows
copied (``COPY``, binary) into a temporary staging table and merged from there: an event
already present (same ``id``) is left alone, ``users`` and ``accounts`` are upserted. The
password comes from an environment variable (``password_env``) or a file (``password_file``),
never from the config file itself.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, Literal

from relay.config import DestinationConfig
from relay.forward.retry import Answer
from relay.sinks import options as opts
from relay.sinks.warehouse import base, sql
from relay.sinks.warehouse.load import Catalog, Plan
from relay.sinks.warehouse.schema import Kind
from relay.types import Stored

TYPES: dict[Kind, str] = {"varchar": "text", "integer": "bigint", "float": "double precision",
                          "boolean": "boolean", "timestamp": "timestamptz"}
DEFAULT_PORT = 5432


class PostgresOptions(base.WarehouseOptions, frozen=True, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"  # or a folder holding the server's unix socket
    port: int = DEFAULT_PORT
    database: str = "postgres"
    user: str = "postgres"
    password_env: str = ""  # the name of an environment variable holding the password
    password_file: str = ""  # or a file holding it (one line)
    ssl: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = "prefer"


def password(options: PostgresOptions) -> str | None:
    """The password from ``password_env`` or ``password_file``; a ValueError naming the key."""
    return opts.secret("password", "", options.password_env, options.password_file) or None


async def connect(options: PostgresOptions, timeout: float, secret: str | None) -> Any:
    import asyncpg  # type: ignore[import-untyped]

    return await asyncpg.connect(host=options.host, port=options.port, user=options.user,
                                 database=options.database, password=secret, ssl=options.ssl,
                                 timeout=timeout, command_timeout=max(timeout, 60.0))


class PostgresSink(base.WarehouseSink):
    type_name = "postgres"

    def __init__(self, config: DestinationConfig) -> None:
        options = opts.parse(config.options, PostgresOptions)
        base.require("asyncpg", type_name=self.type_name)
        self._password = password(options)
        if not 0 < options.port < 65536:
            raise ValueError("`options.port`: expected a port number")
        super().__init__(config, options)
        self.options = options
        self._conn: Any = None
        self._catalog: Catalog | None = None

    def __repr__(self) -> str:
        where = f"{self.options.host}:{self.options.port}/{self.options.database}"
        return f"PostgresSink({self.config.name!r}, {where})"

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        await super().stop()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.terminate()

    async def probe(self) -> bool:
        """True once the server takes a connection again (one of the probe's own: a load may be
        using the sink's)."""
        try:
            conn = await connect(self.options, self.config.timeout, self._password)
        except Exception:
            return False
        await conn.close()
        return True

    async def _connection(self) -> Any:
        if self._conn is None or self._conn.is_closed():
            self._conn = await connect(self.options, self.config.timeout, self._password)
        return self._conn

    async def _drop_connection(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.terminate()

    async def _load(self, batches: list[list[Stored]]) -> Answer:
        import asyncpg

        where = f"{self.options.host}:{self.options.port}/{self.options.database}"
        try:
            conn = await self._connection()
            catalog = (self._catalog or await read_catalog(conn)).copy()
            loaded_at = base.now()
            stages = 0
            async with conn.transaction():
                for batch in batches:
                    load = await asyncio.to_thread(self._plan, batch, catalog, loaded_at)
                    for name in load.new_schemas:
                        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {sql.quote(name)}")
                    for table in load.tables:
                        new = [sql.create_table(table, TYPES)] if table.create else []
                        for statement in new or sql.add_columns(table, TYPES):
                            await conn.execute(statement)
                        stages += 1
                        stage = f"relay_stage_{stages}"
                        await conn.execute(f"CREATE TEMPORARY TABLE {stage} (LIKE "
                                           f"{sql.qualified(table.schema, table.table)}) ON COMMIT DROP")
                        records: Any = zip(*table.data, strict=True)
                        columns = table.columns
                        if table.since:  # users, accounts: the values' times, one array a row
                            await conn.execute(f"ALTER TABLE {stage} ADD COLUMN {sql.quote(sql.SINCE)}"
                                               " timestamptz[]")
                            times = map(list, zip(*table.since.values(), strict=True))
                            records = zip(*table.data, times, strict=True)
                            columns = [*columns, sql.SINCE]
                        await conn.copy_records_to_table(stage, records=records, columns=columns)
                        await conn.execute(sql.merge(table, stage))
                    load.apply(catalog)
            self._catalog = catalog
            return Answer(200)
        except base.Unmappable as exc:
            return Answer(400, body=str(exc))
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            self._catalog = None
            return Answer(400, body=f"PostgreSQL refused the data: {exc}")
        except asyncpg.PostgresError as exc:
            self._catalog = None
            return Answer(None, error=f"PostgreSQL load failed ({where}): {exc}")
        except (OSError, TimeoutError, asyncpg.InterfaceError) as exc:
            self._catalog = None
            await self._drop_connection()
            return Answer(None, error=f"cannot reach PostgreSQL at {where}: {exc}")


    def _plan(self, batch: list[Stored], catalog: Catalog, loaded_at: datetime) -> Plan:
        return self.plan(batch, catalog, loaded_at)


async def read_catalog(conn: Any) -> Catalog:
    catalog = Catalog()
    schemas = await conn.fetch("SELECT schema_name FROM information_schema.schemata")
    catalog.schemas.update(r[0] for r in schemas)
    for record in await conn.fetch(
            "SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
            " ORDER BY table_schema, table_name, ordinal_position"):
        schema_name, table, column, data_type = record
        catalog.tables.setdefault((schema_name, table), {})[column] = sql.kind_of(data_type)
    return catalog
