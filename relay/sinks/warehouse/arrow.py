"""A table's load as an Arrow table (for DuckDB and Parquet); pyarrow is imported on first use."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from relay.sinks.warehouse.load import TableLoad
from relay.sinks.warehouse.schema import LOAD_COLUMNS, Kind
from relay.timestamps import micros as to_micros


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
            continue
        if rows is not None:
            values = [values[i] for i in rows]
        if name in LOAD_COLUMNS and values:  # one time for the whole load
            arrays.append(pa.repeat(pa.scalar(values[0], arrow_type(kind)), count))
        elif kind == "timestamp":
            arrays.append(_times(values))
        else:
            arrays.append(pa.array(values, arrow_type(kind)))
    return pa.Table.from_arrays(arrays, names=names)


def _times(values: Sequence[Any]) -> Any:
    """Aware times as microseconds since the epoch, each distinct one computed once (rows of a
    load share most of them: one request's receivedAt and sentAt, an event's times in
    ``tracks`` and in its own table); pyarrow takes a datetime ten times slower than an int."""
    import pyarrow as pa

    micros: dict[Any, int | None] = {None: None}
    for moment in set(values):
        if moment is not None:
            micros[moment] = to_micros(moment)
    return pa.array(list(map(micros.__getitem__, values)), pa.int64()).view(arrow_type("timestamp"))
