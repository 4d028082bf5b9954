"""A table's load as an Arrow table (for DuckDB and Parquet); pyarrow is imported on first use."""

from __future__ import annotations

from typing import Any

from relay.sinks.warehouse.load import TableLoad
from relay.sinks.warehouse.schema import Kind


def arrow_type(kind: Kind) -> Any:
    import pyarrow as pa  # type: ignore[import-untyped]

    return {"varchar": pa.string(), "integer": pa.int64(), "float": pa.float64(), "boolean": pa.bool_(),
            "timestamp": pa.timestamp("us", tz="UTC")}[kind]


def table(load: TableLoad, columns: dict[str, Kind] | None = None, rows: list[int] | None = None) -> Any:
    """The load's values; with ``columns``, every one of them in that order (NULL where the load
    has none: one schema for every file of a table); with ``rows``, only those rows."""
    import pyarrow as pa

    have = dict(zip(load.columns, load.data, strict=True))
    names = list(columns) if columns is not None else load.columns
    kinds = [columns[c] for c in names] if columns is not None else load.kinds
    count = load.rows if rows is None else len(rows)
    arrays = []
    for name, kind in zip(names, kinds, strict=True):
        values = have.get(name)
        if values is None:
            arrays.append(pa.nulls(count, arrow_type(kind)))
        else:
            arrays.append(pa.array(values if rows is None else [values[i] for i in rows], arrow_type(kind)))
    return pa.Table.from_arrays(arrays, names=names)
