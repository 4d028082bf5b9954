"""``relay sql``: one read-only query against a warehouse destination.

DuckDB: the file opened ``read_only`` (while the relay loads, the open is retried for up to
``wait`` seconds). Parquet: an in-memory DuckDB with one view per folder, ``<source>.<table>``
over ``read_parquet(..., union_by_name)``. Both refuse any statement but a query. PostgreSQL:
the query in a ``READ ONLY`` transaction.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from relay.config import Config, DestinationConfig
from relay.errors import ConfigError, RelayError
from relay.sinks import options as opts

WAREHOUSE_TYPES = ("duckdb", "postgres", "parquet")
OPEN_RETRY = 0.1  # seconds between attempts to open a DuckDB file the relay is loading
QUERY_TYPES = ("SELECT", "EXPLAIN", "PRAGMA")


class QueryFailed(RelayError):
    """The query could not run (the engine's message says why)."""


Result = tuple[list[str], list[tuple[Any, ...]]]


def destination(config: Config, name: str | None) -> DestinationConfig:
    found = [d for d in config.destinations if d.type in WAREHOUSE_TYPES and (name is None or d.name == name)]
    if name is not None and not found:
        raise ConfigError(f"no warehouse destination named {name!r} (types: {', '.join(WAREHOUSE_TYPES)})")
    if not found:
        raise ConfigError(f"no warehouse destination in the config (types: {', '.join(WAREHOUSE_TYPES)})")
    if len(found) > 1:
        raise ConfigError(f"several warehouse destinations ({', '.join(d.name for d in found)}): "
                          "name one with --destination")
    return found[0]


def run(config: Config, name: str | None, statement: str, wait: float = 10.0) -> Result:
    dest = destination(config, name)
    if dest.type == "postgres":
        return asyncio.run(_postgres(dest, statement))
    import duckdb

    try:
        con = _duckdb_file(dest, wait) if dest.type == "duckdb" else _parquet_views(dest)
    except duckdb.Error as exc:
        raise QueryFailed(str(exc)) from exc
    try:
        for parsed in con.extract_statements(statement):
            kind = str(parsed.type).rsplit(".", 1)[-1]
            if kind not in QUERY_TYPES:
                raise QueryFailed(f"only queries run here (this is a {kind} statement)")
        cursor = con.execute(statement)
        columns = [d[0] for d in cursor.description or []]
        return columns, cursor.fetchall()
    except duckdb.Error as exc:
        raise QueryFailed(str(exc)) from exc
    finally:
        con.close()


def _duckdb_file(dest: DestinationConfig, wait: float) -> Any:
    import duckdb

    from relay.sinks.warehouse.duckdb import DuckDBOptions

    path = opts.parse(dest.options, DuckDBOptions).path
    if not Path(path).exists():
        raise QueryFailed(f"no DuckDB file at {path} yet (nothing has been loaded)")
    deadline = time.monotonic() + wait
    while True:
        try:
            return duckdb.connect(path, read_only=True)
        except duckdb.IOException:  # the relay is loading: it lets go when the load commits
            if time.monotonic() > deadline:
                raise
            time.sleep(OPEN_RETRY)


def _parquet_views(dest: DestinationConfig) -> Any:
    import duckdb

    from relay.sinks.warehouse.parquet import ParquetOptions
    from relay.sinks.warehouse.sql import quote, text

    root = Path(opts.parse(dest.options, ParquetOptions).path)
    con = duckdb.connect()
    found = root.iterdir() if root.is_dir() else iter(())
    sources = sorted(p for p in found if p.is_dir() and not p.name.startswith("."))
    for source in sources:
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(source.name)}")
        for table in sorted(p for p in source.iterdir() if p.is_dir()):
            files = text(str(table / "**" / "*.parquet"))
            con.execute(f"CREATE VIEW {quote(source.name)}.{quote(table.name)} AS SELECT * FROM "
                        f"read_parquet({files}, union_by_name = true, hive_partitioning = true)")
    return con


async def _postgres(dest: DestinationConfig, statement: str) -> Result:
    import asyncpg  # type: ignore[import-untyped]

    from relay.sinks.warehouse.postgres import PostgresOptions, connect, password

    options = opts.parse(dest.options, PostgresOptions)
    try:
        conn = await connect(options, dest.timeout, password(options))
    except (OSError, asyncpg.PostgresError) as exc:
        raise QueryFailed(f"cannot connect to PostgreSQL: {exc}") from exc
    try:
        async with conn.transaction(readonly=True):
            prepared = await conn.prepare(statement)
            records = await prepared.fetch()
            columns = [a.name for a in prepared.get_attributes()]
            return columns, [tuple(r.values()) for r in records]
    except asyncpg.PostgresError as exc:
        raise QueryFailed(str(exc)) from exc
    finally:
        await conn.close()


def as_records(result: Result) -> list[dict[str, Any]]:
    columns, rows = result
    return [dict(zip(columns, row, strict=True)) for row in rows]


def render(result: Result) -> str:
    """The rows as an aligned text table, with a count."""
    columns, rows = result
    cells = [["NULL" if v is None else str(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)),
             "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    lines.append(f"({len(rows)} row{'' if len(rows) == 1 else 's'})")
    return "\n".join(lines)
