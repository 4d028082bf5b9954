"""One load: mapped events grouped into tables, the DDL they need, their values fitted (pure).

``plan`` takes the events of a load and what the destination already holds (a ``Catalog``)
and returns a ``Plan``: per table, whether to create it, the columns to add (a new column's
type comes from its most recent value in the load), and the values column by column, fitted
to each column's type; a value that does not fit becomes NULL and a row of ``discards``. The
backends run the plan in one transaction and ``apply`` it to their catalog once committed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from operator import is_not
from typing import Any

from relay.sinks.warehouse import schema
from relay.sinks.warehouse.columns import Columns
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
    data: list[Sequence[Any]]  # one sequence per column, one value per row
    latest: bool  # upsert (users, accounts) rather than insert-if-new
    # users and accounts merged per id: by column, the received_at of the row each value came
    # from (a gap filled by an older row is older than the row's received_at)
    since: dict[str, Sequence[Any]] = field(default_factory=dict)

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
    """The load of mapped events (rows), as the spec's worked example states it row by row;
    ``plan_columns`` makes the same plan from the same events built column by column."""
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
        loads.append(_rows_load(schema_name, table, rows, catalog.tables.get((schema_name, table)),
                                discards.setdefault(schema_name, []), loaded_at, times))
    return Plan(new_schemas, loads + _discard_loads(discards, catalog, loaded_at, times))


def plan_columns(tables: Iterable[Columns], catalog: Catalog, loaded_at: datetime) -> Plan:
    """The plan ``plan`` makes, from the tables of a ``columns.Builder``: a table whose rows
    all have distinct ids (the common case) is fitted column by column without a dict per
    row; ``users``, ``accounts`` and a table with an event twice go row by row, as in ``plan``."""
    tables = list(tables)
    times: dict[str, datetime | None] = {}
    new_schemas = sorted({t.schema for t in tables} - catalog.schemas)
    loads: list[TableLoad] = []
    discards: dict[str, list[Row]] = {}
    for t in tables:
        known = catalog.tables.get((t.schema, t.table))
        out = discards.setdefault(t.schema, [])
        whole = known is None or known.keys() >= schema.standard_columns(t.table).keys()
        if t.by_row or not whole or len(set(t.ids())) != t.count:
            loads.append(_rows_load(t.schema, t.table, t.rows(), known, out, loaded_at, times))
        else:
            loads.append(_columns_load(t, known, out, loaded_at, times))
    return Plan(new_schemas, loads + _discard_loads(discards, catalog, loaded_at, times))


def _rows_load(schema_name: str, table: str, rows: list[Row], known: dict[str, Kind] | None,
               discards: list[Row], loaded_at: datetime, times: dict[str, datetime | None]) -> TableLoad:
    if table not in schema.LATEST_TABLES:
        return _table_load(schema_name, table, _first_of_each(rows), known, False, discards, loaded_at, times)
    # fitted first, then merged per id: a newer value that does not fit leaves the older one
    load = _table_load(schema_name, table, rows, known, True, discards, loaded_at, times)
    return combined([load], {**(known or {}), **load.add})


def _discard_loads(discards: dict[str, list[Row]], catalog: Catalog, loaded_at: datetime,
                   times: dict[str, datetime | None]) -> list[TableLoad]:
    loads = []
    for schema_name, rows in discards.items():
        if rows:
            known = catalog.tables.get((schema_name, DISCARDS))
            loads.append(_table_load(schema_name, DISCARDS, _first_of_each(rows, schema.DISCARD_KEY),
                                     known, False, [], loaded_at, times))
    return loads


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


def _new_columns(columns: dict[str, Kind], seen: dict[str, Kind], create: bool
                 ) -> tuple[dict[str, Kind], set[str]]:
    """What the load adds (all columns for a new table) and the new ones past MAX_COLUMNS."""
    room = schema.MAX_COLUMNS - len(columns)
    overflow = set(list(seen)[room:]) if len(seen) > room else set()
    add = {**columns, **seen} if create else dict(seen)
    for name in overflow:
        del add[name]
    return add, overflow


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
    add, overflow = _new_columns(columns, seen, create)
    columns.update(add)
    written = [c for c in columns if c in present]
    kinds = [columns[c] for c in written]
    data: list[Sequence[Any]] = []
    for name, kind in zip(written, kinds, strict=True):
        if name in schema.LOAD_COLUMNS:
            data.append([loaded_at] * len(rows))
            continue
        fitted, misfits = _fit(kind, [row.get(name) for row in rows], times)
        for i, why in misfits:
            row = rows[i]
            discards.append(_discard(table, name, row[name], row.get("id"), row.get("received_at"), why))
        data.append(fitted)
    for name in overflow:
        reason = f"table {table} has {schema.MAX_COLUMNS} columns; no more are added"
        for row in rows:
            if name in row:
                discards.append(_discard(table, name, row[name], row.get("id"), row.get("received_at"),
                                         reason))
    return TableLoad(schema_name, table, create, add, written, kinds, data, latest)


def _columns_load(t: Columns, known: dict[str, Kind] | None, discards: list[Row], loaded_at: datetime,
                  times: dict[str, datetime | None]) -> TableLoad:
    """``_table_load`` for a table of distinct ids whose catalog has its standard columns."""
    create = known is None
    standard = schema.standard_columns(t.table)
    columns: dict[str, Kind] = dict(standard) if known is None else dict(known)
    data = t.data
    seen: dict[str, Kind] = {}
    for name, values in data.items():
        if name not in columns:  # new: the type of its most recent value
            seen[name] = schema.infer(next(v for v in reversed(values) if v is not None))
    add, overflow = _new_columns(columns, seen, create)
    columns.update(add)
    written = [c for c in columns if c in data or c in standard]
    kinds = [columns[c] for c in written]
    n = t.count
    ids, received = data["id"], data.get("received_at") or [None] * n
    fitted_columns: list[Sequence[Any]] = []
    for name, kind in zip(written, kinds, strict=True):
        if name in schema.LOAD_COLUMNS:
            fitted_columns.append([loaded_at] * n)
            continue
        values = data.get(name) or [None] * n
        fitted, misfits = _fit(kind, values, times)
        for i, why in misfits:
            discards.append(_discard(t.table, name, values[i], ids[i], received[i], why))
        fitted_columns.append(fitted)
    for name in overflow:
        reason = f"table {t.table} has {schema.MAX_COLUMNS} columns; no more are added"
        values = data[name]
        for i, value in enumerate(values):
            if value is not None:
                discards.append(_discard(t.table, name, value, ids[i], received[i], reason))
    return TableLoad(t.schema, t.table, create, add, written, kinds, fitted_columns, False)


def combined(loads: Sequence[TableLoad], columns: dict[str, Kind]) -> TableLoad:
    """The loads of one table of ``users``, ``accounts`` or ``discards`` from several batches
    (in queue order) as one, for one merge of the table instead of one a batch (DuckDB reads
    the whole table to merge into it), or one batch's rows of ``users`` or ``accounts``
    merged. ``columns``: the table's columns as the last batch leaves them. Per key, one row:
    in ``users`` and ``accounts`` each column's newest value by ``received_at`` that fitted
    the column (a later row winning a tie, an older value filling a gap), with the
    ``received_at`` of the row it came from in ``since`` (the merge into the table compares
    that, not the row's, with what the table holds); in ``discards`` the first."""
    if loads[0].latest:
        ids = [i for load in loads for i in load.data[load.columns.index("id")]]
        if len(set(ids)) == len(ids):
            return _each_once(loads, columns)
    return _merged(loads, columns)


def _merged(loads: Sequence[TableLoad], columns: dict[str, Kind]) -> TableLoad:
    """``combined``, row by row."""
    first = loads[0]
    rows: list[Row] = []
    times: list[dict[str, Any]] = []
    for load in loads:
        names = load.columns
        for values in zip(*load.data, strict=True):
            rows.append({n: v for n, v in zip(names, values, strict=True) if v is not None})
        if first.latest:  # when each value of a row came: by since (rows merged before), else the row's
            merged = [load.since.get(n) for n in names]
            for i, row in enumerate(rows[len(rows) - load.rows:]):
                moment = schema.moment_of(row.get("received_at"))
                times.append({n: moment if m is None else m[i] for n, m in zip(names, merged, strict=True)
                              if n in row})
    if first.latest:
        rows, times = _latest_since(rows, times)
    else:
        rows = _first_of_each(rows, first.key)
    written = _written(loads, columns)
    since: dict[str, Sequence[Any]] = {}
    if first.latest:
        since = {c: [t.get(c) for t in times] for c in written if c not in schema.MERGE_OWN}
    return _as_one(loads, columns, written, [[row.get(c) for row in rows] for c in written], since)


def _each_once(loads: Sequence[TableLoad], columns: dict[str, Kind]) -> TableLoad:
    """``combined`` for loads of ``users`` or ``accounts`` that hold each id once: their rows
    as they are, each value's time its ``since`` or its row's ``received_at``."""
    written = _written(loads, columns)
    moments = [list(map(schema.moment_of, load.data[load.columns.index("received_at")]))
               if "received_at" in load.columns else [schema.moment_of(None)] * load.rows for load in loads]
    data: list[Sequence[Any]] = []
    since: dict[str, Sequence[Any]] = {}
    for name in written:
        values: list[Any] = []
        times: list[Any] = []
        for load, moment in zip(loads, moments, strict=True):
            if name not in load.columns:
                values.extend([None] * load.rows)
                times.extend([None] * load.rows)
                continue
            column = load.data[load.columns.index(name)]
            values.extend(column)
            held = load.since.get(name)
            times.extend(held if held is not None else
                         [None if v is None else m for v, m in zip(column, moment, strict=True)])
        data.append(values)
        if name not in schema.MERGE_OWN:
            since[name] = times
    return _as_one(loads, columns, written, data, since)


def _written(loads: Sequence[TableLoad], columns: dict[str, Kind]) -> list[str]:
    """The columns some of the loads write, in the table's order."""
    present = {name for load in loads for name in load.columns}
    return [c for c in columns if c in present]


def _as_one(loads: Sequence[TableLoad], columns: dict[str, Kind], written: list[str],
            data: list[Sequence[Any]], since: dict[str, Sequence[Any]]) -> TableLoad:
    """The loads' table as one load of ``data`` (one sequence per column of ``written``)."""
    first = loads[0]
    add: dict[str, Kind] = {}
    for load in loads:
        add.update(load.add)
    return TableLoad(first.schema, first.table, any(load.create for load in loads), add, written,
                     [columns[c] for c in written], data, first.latest, since)


def _latest_since(rows: list[Row], times: list[dict[str, Any]]) -> tuple[list[Row], list[dict[str, Any]]]:
    """Rows of ``users`` or ``accounts`` merged per id, by column the value that came last (by
    ``times``, a later row winning a tie), and when each came."""
    merged: dict[Any, Row] = {}
    came: dict[Any, dict[str, Any]] = {}
    for row, moments in zip(rows, times, strict=True):
        values = merged.setdefault(row["id"], {})
        when = came.setdefault(row["id"], {})
        for name, value in row.items():
            moment = moments[name]
            if name not in when or moment >= when[name]:
                values[name] = value
                when[name] = moment
    return list(merged.values()), list(came.values())


_PLAIN: dict[str, type] = {"varchar": str, "boolean": bool, "float": float, "integer": int}
_NONE = type(None)
_MISFIT = object()
_not_none = partial(is_not, None)


def _fit(kind: Kind, values: Sequence[Any], times: dict[str, datetime | None]
         ) -> tuple[Sequence[Any], list[tuple[int, str]]]:
    """One column's values fitted to ``kind``, and the rows whose value does not fit (with why:
    their value is NULL). The common case, every value of the column's own type, is checked
    in one pass over the types."""
    types = set(map(type, values))
    types.discard(_NONE)
    if kind == "timestamp":
        if types <= {str}:  # ISO text: each distinct text parsed once (rows share most)
            texts = set(values)
            texts.discard(None)
            fits = True
            for text in texts:
                moment = times.get(text, _MISFIT)
                if moment is _MISFIT:
                    moment = times[text] = schema.time_of(text)
                fits = fits and moment is not None
            out: list[Any] = list(map(times.get, values))  # None stays None
            if fits:
                return out, []
            out = [_MISFIT if v is not None and o is None else o for v, o in zip(values, out, strict=True)]
        else:
            out = [v if v is None else _MISFIT for v in values]
    else:
        plain = _PLAIN[kind]
        if types <= {plain}:
            if kind != "integer" or not types:
                return values, []
            present = list(filter(_not_none, values))
            if schema.INT_MIN <= min(present) and max(present) <= schema.INT_MAX:
                return values, []
        out = [v if v is None or type(v) is plain else _MISFIT for v in values]
        if kind == "integer":
            low, high = schema.INT_MIN, schema.INT_MAX
            out = [_MISFIT if type(v) is int and not low <= v <= high else v for v in out]
    misfits: list[tuple[int, str]] = []
    for i, fitted in enumerate(out):
        if fitted is _MISFIT:
            fitted, why = schema.coerce(kind, values[i])
            if why is not None:
                misfits.append((i, why))
            out[i] = fitted
    return out, misfits


def _discard(table: str, name: str, value: Any, row_id: Any, received_at: Any, reason: str) -> Row:
    return {"table_name": table, "column_name": name, "column_value": schema.text_of(value),
            "row_id": row_id, "reason": reason, "received_at": received_at}
