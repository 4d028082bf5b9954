"""The SQL the DuckDB and PostgreSQL types share: names quoted, DDL, the insert and the upsert."""

from __future__ import annotations

from relay.sinks.warehouse.load import TableLoad
from relay.sinks.warehouse.schema import MERGE_OWN, Kind


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


TARGET, STAGED = "relay_target", "relay_staged"  # the aliases of a merge's table and of its staged rows


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
    # users, accounts (one staged row an id, ``source`` a table): the new ids inserted, then the
    # rows held updated from the staged ones (by their times, which ON CONFLICT's `excluded`
    # would not have; a row just inserted is updated with itself: no change)
    on = " AND ".join(f"{TARGET}.{quote(c)} = {STAGED}.{quote(c)}" for c in load.key)
    return (f"{head} ON CONFLICT ({key}) DO NOTHING; UPDATE {target} AS {TARGET}"
            f" SET {latest_sets(load, STAGED, TARGET)} FROM {source} AS {STAGED} WHERE {on}")


def latest_sets(load: TableLoad, new: str, old: str) -> str:
    """The columns of a ``users`` or ``accounts`` row that ``new`` (a source of rows) updates in
    ``old`` (the table's row): each the newer value by ``received_at``, an older row filling
    only what the newer one left empty."""
    sets = [f"{quote(c)} = CASE WHEN {newer(load, c, new, old)} THEN "
            f"coalesce({new}.{quote(c)}, {old}.{quote(c)}) "
            f"ELSE coalesce({old}.{quote(c)}, {new}.{quote(c)}) END"
            for c in load.columns if c not in MERGE_OWN]
    sets += [f"received_at = greatest({new}.received_at, {old}.received_at)",
             f"uuid_ts = {new}.uuid_ts", f"loaded_at = {new}.loaded_at"]
    return ", ".join(sets)


def newer(load: TableLoad, column: str, new: str, old: str) -> str:
    """Whether ``new``'s value of ``column`` is at least as new as ``old``'s row: by the
    ``received_at`` of the row the value came from (``since``, when rows were merged), else by
    the row's."""
    if column in load.since:
        moment = f"{new}.{quote(SINCE)}[{list(load.since).index(column) + 1}]"
    else:
        moment = f"{new}.received_at"
    return f"{moment} >= {old}.received_at"


# the staged rows' column of their values' times, a list in the order of ``since`` (a name no
# mapped column has: those have no spaces)
SINCE = "relay since"
