"""One load: mapped events grouped into tables, the DDL they need, their values fitted (pure).

``plan`` takes the events of a load and what the destination already holds (a ``Catalog``)
and returns a ``Plan``: per table, whether to create it, the columns to add (a new column's
type comes from its most recent value in the load), and the values column by column, fitted
to each column's type; a value that does not fit becomes NULL and a row of ``discards``. The
backends run the plan in one transaction and ``apply`` it to their catalog once committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from relay.sinks.warehouse import schema
from relay.sinks.warehouse.schema import DISCARDS, Kind, Row, TableRow

TableKey = tuple[str, str]  # (schema, table)


@dataclass(slots=True)
class Mapped:
    """One event as rows of its schema."""

    schema: str
    message_id: str
    rows: list[TableRow]


@dataclass(slots=True)
class Catalog:
    """The tables a destination holds: (schema, table) -> {column: type}, in column order."""

    tables: dict[TableKey, dict[str, Kind]] = field(default_factory=dict)
    schemas: set[str] = field(default_factory=set)

    def copy(self) -> Catalog:
        """A copy to plan the chunks of a load with, kept only once the load commits."""
        return Catalog({k: dict(v) for k, v in self.tables.items()}, set(self.schemas))


@dataclass(slots=True)
class TableLoad:
    schema: str
    table: str
    create: bool  # the table is new: ``add`` lists all of its columns
    add: dict[str, Kind]
    columns: list[str]  # the columns this load writes, in the table's order
    kinds: list[Kind]
    data: list[list[Any]]  # one list per column, one value per row
    latest: bool  # upsert (users, accounts) rather than insert-if-new

    @property
    def key(self) -> tuple[str, ...]:
        return schema.key_columns(self.table)

    @property
    def rows(self) -> int:
        return len(self.data[0]) if self.data else 0


@dataclass(slots=True)
class Plan:
    new_schemas: list[str]
    tables: list[TableLoad]

    def apply(self, catalog: Catalog) -> None:
        catalog.schemas.update(self.new_schemas)
        for load in self.tables:
            catalog.tables.setdefault((load.schema, load.table), {}).update(load.add)

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables)


def plan(events: Sequence[Mapped], catalog: Catalog, loaded_at: datetime) -> Plan:
    grouped: dict[TableKey, list[Row]] = {}
    for event in events:
        for table, row in event.rows:
            key = (event.schema, table)
            rows = grouped.get(key)
            if rows is None:
                rows = grouped[key] = []
            rows.append(row)
    times: dict[str, datetime | None] = {}  # ISO text -> time: rows of a load share many
    new_schemas = sorted({s for s, _ in grouped} - catalog.schemas)
    loads: list[TableLoad] = []
    discards: dict[str, list[Row]] = {}
    for (schema_name, table), rows in grouped.items():
        latest = table in schema.LATEST_TABLES
        rows = schema.latest(rows) if latest else _first_of_each(rows)
        load = _table_load(schema_name, table, rows, catalog.tables.get((schema_name, table)), latest,
                           discards.setdefault(schema_name, []), loaded_at, times)
        loads.append(load)
    for schema_name, rows in discards.items():
        if rows:
            known = catalog.tables.get((schema_name, DISCARDS))
            loads.append(_table_load(schema_name, DISCARDS, _first_of_each(rows, schema.DISCARD_KEY),
                                     known, False, [], loaded_at, times))
    return Plan(new_schemas, loads)


def _first_of_each(rows: list[Row], key: tuple[str, ...] = ("id",)) -> list[Row]:
    """One row per key, the first (an event sent twice in one load is written once)."""
    seen: set[Any] = set()
    kept = []
    for row in rows:
        k = row["id"] if key == ("id",) else tuple(row.get(c) for c in key)
        if k not in seen:
            seen.add(k)
            kept.append(row)
    return kept


def _table_load(schema_name: str, table: str, rows: list[Row], known: dict[str, Kind] | None, latest: bool,
                discards: list[Row], loaded_at: datetime, times: dict[str, datetime | None]) -> TableLoad:
    create = known is None
    columns: dict[str, Kind] = dict(schema.standard_columns(table)) if known is None else dict(known)
    order: dict[str, None] = {}  # new columns, in the order they first appear
    present: set[str] = set(schema.standard_columns(table))
    for row in rows:
        if row.keys() - present:
            for name in row:
                if name not in columns:
                    order[name] = None
            present.update(row)
    seen: dict[str, Kind] = {}
    if order:
        for row in reversed(rows):  # a new column takes the type of its most recent value
            for name, value in row.items():
                if name in order and name not in seen:
                    seen[name] = schema.infer(value)
            if len(seen) == len(order):
                break
        seen = {name: seen[name] for name in order}
    room = schema.MAX_COLUMNS - len(columns)
    overflow = set(list(seen)[room:]) if len(seen) > room else set()
    add = {**columns, **seen} if create else dict(seen)
    for name in overflow:
        del add[name]
    columns.update(add)
    written = [c for c in columns if c in present]
    kinds = [columns[c] for c in written]
    data = [[loaded_at] * len(rows) if name in schema.LOAD_COLUMNS
            else _fit(table, name, kind, rows, discards, loaded_at, times)
            for name, kind in zip(written, kinds, strict=True)]
    for name in overflow:
        reason = f"table {table} has {schema.MAX_COLUMNS} columns; no more are added"
        for row in rows:
            if name in row:
                discards.append(_discard(table, name, row, reason, loaded_at))
    return TableLoad(schema_name, table, create, add, written, kinds, data, latest)


_PLAIN: dict[str, type] = {"varchar": str, "boolean": bool, "float": float, "integer": int}
_MISFIT = object()


def _fit(table: str, name: str, kind: Kind, rows: list[Row], discards: list[Row], loaded_at: datetime,
         times: dict[str, datetime | None]) -> list[Any]:
    """One column's values fitted to ``kind``: the common case (a value of the column's own
    type) in one pass, then the rest one by one."""
    values = [row.get(name) for row in rows]
    if kind == "timestamp":
        out = []
        for value in values:
            if type(value) is str:
                moment = times.get(value, _MISFIT)
                if moment is _MISFIT:
                    moment = times[value] = schema.time_of(value)
                out.append(moment if moment is not None else _MISFIT)
            else:
                out.append(value if value is None else _MISFIT)
    else:
        plain = _PLAIN[kind]
        out = [v if v is None or type(v) is plain else _MISFIT for v in values]
        if kind == "integer":
            low, high = schema.INT_MIN, schema.INT_MAX
            out = [_MISFIT if type(v) is int and not low <= v <= high else v for v in out]
    if _MISFIT in out:
        for i, fitted in enumerate(out):
            if fitted is _MISFIT:
                fitted, why = schema.coerce(kind, values[i])
                if why is not None:
                    discards.append(_discard(table, name, rows[i], why, loaded_at))
                out[i] = fitted
    return out


def _discard(table: str, name: str, row: Row, reason: str, loaded_at: datetime) -> Row:
    return {"table_name": table, "column_name": name, "column_value": schema.text_of(row[name]),
            "row_id": row.get("id"), "reason": reason, "received_at": row.get("received_at")}
