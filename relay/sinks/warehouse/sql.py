"""The SQL the DuckDB and PostgreSQL types share: names quoted, DDL, the insert and the upsert."""

from __future__ import annotations

from relay.sinks.warehouse.load import TableLoad
from relay.sinks.warehouse.schema import Kind


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def text(value: str) -> str:
    """A string literal (a file's path)."""
    return "'" + value.replace("'", "''") + "'"


def qualified(schema_name: str, table: str) -> str:
    return f"{quote(schema_name)}.{quote(table)}"


def kind_of(sql_type: str) -> Kind:
    """The column type a table's SQL type stands for (a column retyped by hand keeps working)."""
    t = sql_type.upper()
    if t.startswith(("VARCHAR", "TEXT", "CHAR")):
        return "varchar"
    if t.startswith("TIMESTAMP") or t == "DATE":
        return "timestamp"
    if t in ("BOOLEAN", "BOOL"):
        return "boolean"
    if t in ("BIGINT", "INTEGER", "SMALLINT", "TINYINT", "HUGEINT", "UBIGINT", "UINTEGER", "INT8", "INT4",
             "INT2"):
        return "integer"
    if t.startswith(("DOUBLE", "FLOAT", "REAL", "DECIMAL", "NUMERIC")):
        return "float"
    return "varchar"


def create_table(load: TableLoad, types: dict[Kind, str], keyed: bool = True) -> str:
    """The table with the load's columns; ``keyed``, with its key as the primary key."""
    columns = ", ".join(f"{quote(c)} {types[k]}" for c, k in load.add.items())
    if not keyed:
        return f"CREATE TABLE IF NOT EXISTS {qualified(load.schema, load.table)} ({columns})"
    key = ", ".join(quote(c) for c in load.key)
    return f"CREATE TABLE IF NOT EXISTS {qualified(load.schema, load.table)} ({columns}, PRIMARY KEY ({key}))"


def add_columns(load: TableLoad, types: dict[Kind, str]) -> list[str]:
    return [f"ALTER TABLE {qualified(load.schema, load.table)} ADD COLUMN {quote(c)} {types[k]}"
            for c, k in load.add.items()]


def merge(load: TableLoad, source: str) -> str:
    """Rows of ``source`` into the table: an event already there (same key) is left as it is;
    in ``users`` and ``accounts`` each column takes the newer value (by ``received_at``), and
    an older row only fills columns the newer one left empty."""
    target = qualified(load.schema, load.table)
    names = ", ".join(quote(c) for c in load.columns)
    head = f"INSERT INTO {target} ({names}) SELECT {names} FROM {source}"
    key = ", ".join(quote(c) for c in load.key)
    if not load.latest:
        return f"{head} ON CONFLICT ({key}) DO NOTHING"
    return f"{head} ON CONFLICT ({key}) DO UPDATE SET {latest_sets(load, 'excluded', quote(load.table))}"


def latest_sets(load: TableLoad, new: str, old: str) -> str:
    """The columns of a ``users`` or ``accounts`` row that ``new`` (a source of rows) updates in
    ``old`` (the table's row): each the newer value by ``received_at``, an older row filling
    only what the newer one left empty."""
    newer = f"{new}.received_at >= {old}.received_at"
    sets = [f"{quote(c)} = CASE WHEN {newer} THEN coalesce({new}.{quote(c)}, {old}.{quote(c)}) "
            f"ELSE coalesce({old}.{quote(c)}, {new}.{quote(c)}) END"
            for c in load.columns if c not in ("id", "received_at", "uuid_ts", "loaded_at")]
    sets += [f"received_at = greatest({new}.received_at, {old}.received_at)",
             f"uuid_ts = {new}.uuid_ts", f"loaded_at = {new}.loaded_at"]
    return ", ".join(sets)
