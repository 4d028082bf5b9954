"""Messages as table columns (pure): the rows of ``schema.map_message``, built column by column.

A load's events become, per table, one list per column (``Columns.data``) with no dict per
row: a row is a tuple of values under a tuple of column names, its *shape*, and the rows of
one shape (most of a table's rows share one) are turned into columns at once by ``zip``. A
track call, the common case, is mapped here directly: its context and properties are each
flattened once, and its row in the event's own table reuses the values of its ``tracks`` row.
Other calls are mapped by ``map_message`` and added as its rows. Either way the result is the
rows ``map_message`` gives, with the same errors (tests/sinks/test_warehouse_columns.py holds
the two to each other).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import Any, Final, cast

import msgspec

from relay import timestamps
from relay.sinks.warehouse import schema
from relay.sinks.warehouse.schema import LATEST_TABLES, TRACKS, Row

Shape = tuple[str, ...]
Values = tuple[Any, ...]

_STD: Final[Shape] = tuple(schema.EVENT_COLUMNS)  # id, anonymous_id, user_id, received_at, ...
_STD_SET: Final = frozenset(_STD)
_TRACK_TAIL: Final[Shape] = ("event", "event_text")
_KEPT: Final = 4096  # shapes (and plans) remembered; a flood of them only empties the memo
_NONE: Final = type(None)


class Columns:
    """One table's rows in a load, in arrival order.

    ``data``: one list per column, None where a row has no value, in the order the row-wise
    mapping first meets the names (so new columns are added in the same order); the standard
    columns of an event table are always there. ``users`` and ``accounts`` are kept as rows
    instead (``by_row``): they are merged per id, row by row."""

    __slots__ = ("_data", "_groups", "_rows", "count", "schema", "table")

    def __init__(self, schema_name: str, table: str) -> None:
        self.schema = schema_name
        self.table = table
        self.count = 0
        # rows by shape: id(shape) -> (shape, row numbers, values); a shape is one object per
        # distinct tuple of names (``_canonical``), held here so that its id stays its own
        self._groups: dict[int, tuple[Shape, list[int], list[Values]]] = {}
        self._rows: list[Row] | None = [] if table in LATEST_TABLES else None
        self._data: dict[str, Sequence[Any]] | None = None

    def add(self, shape: Shape, values: Values) -> None:
        """One row: ``values`` under the names of ``shape``, a shape from ``_canonical``."""
        group = self._groups.get(id(shape))
        if group is None:
            group = self._groups[id(shape)] = (shape, [], [])
        group[1].append(self.count)
        group[2].append(values)
        self.count += 1
        self._data = None

    def add_row(self, row: Row) -> None:
        if self._rows is not None:
            self._rows.append(row)
            self.count += 1
            self._data = None
        else:
            self.add(_canonical(tuple(row)), tuple(row.values()))

    @property
    def by_row(self) -> bool:
        return self._rows is not None

    @property
    def data(self) -> dict[str, Sequence[Any]]:
        if self._data is None:
            self._data = self._columns()
        return self._data

    def _columns(self) -> dict[str, Sequence[Any]]:
        if len(self._groups) == 1:  # one shape: the columns are the rows transposed
            ((shape, _, values),) = self._groups.values()
            return dict(zip(shape, zip(*values, strict=True), strict=True))
        n = self.count
        out: dict[str, list[Any]] = {}
        if self._rows is not None:
            for i, row in enumerate(self._rows):
                for name, value in row.items():
                    slot = out.get(name)
                    if slot is None:
                        slot = out[name] = [None] * n
                    slot[i] = value
            return dict(out)
        for shape, rows, values in self._groups.values():  # in the order of their first rows
            for name, column in zip(shape, zip(*values, strict=True), strict=True):
                target = out.get(name)
                if target is None:
                    target = out[name] = [None] * n
                for i, value in zip(rows, column, strict=True):
                    target[i] = value
        return dict(out)

    def rows(self) -> list[Row]:
        """The rows as ``map_message`` gives them: a standard column with no value is absent."""
        if self._rows is not None:
            return self._rows
        out: list[Row] = [{}] * self.count
        for shape, rows, values in self._groups.values():
            for i, row_values in zip(rows, values, strict=True):
                out[i] = {name: value for name, value in zip(shape, row_values, strict=True)
                          if value is not None or name not in _STD_SET}
        return out

    def ids(self) -> Sequence[Any]:
        if self._rows is not None:
            return [row["id"] for row in self._rows]
        return self.data["id"]


class Message(msgspec.Struct, gc=False):
    """The fields of a stored message that the schema reads, decoded without a dict for the
    message; ``context`` is kept as its JSON text (a client sends the same context again and
    again: it is flattened once per distinct text)."""

    type: Any = None
    messageId: Any = None
    anonymousId: Any = None
    userId: Any = None
    receivedAt: Any = msgspec.UNSET
    sentAt: Any = None
    timestamp: Any = None
    originalTimestamp: Any = None
    context: msgspec.Raw = msgspec.Raw(b"null")
    event: Any = None
    properties: Any = None
    traits: Any = None
    name: Any = None
    category: Any = None
    groupId: Any = None
    previousId: Any = None


_decode_message = msgspec.json.Decoder(Message).decode
_decode = msgspec.json.Decoder().decode
_FIELDS: Final = tuple(f for f in Message.__struct_fields__ if f not in ("receivedAt", "context"))


class Builder:
    """The tables of one load's events, per (schema, table) in the order they first appear."""

    def __init__(self) -> None:
        self.tables: dict[tuple[str, str], Columns] = {}

    def _table(self, schema_name: str, table: str) -> Columns:
        found = self.tables.get((schema_name, table))
        if found is None:
            found = self.tables[(schema_name, table)] = Columns(schema_name, table)
        return found

    def add(self, schema_name: str, message: Mapping[str, Any], received_at: str | None = None) -> None:
        """One message's rows (``received_at`` when it has no ``receivedAt``); the ValueError
        of ``map_message`` for one that has none."""
        if message.get("type") != "track":
            self._rows(schema_name, message, received_at)
            return
        get = message.get
        self._track(schema_name, get("messageId"), get("anonymousId"), get("userId"),
                    get("receivedAt") or received_at, get("sentAt"), get("timestamp"),
                    get("originalTimestamp"), get("context"), False, get("event"), get("properties"))

    def add_json(self, schema_name: str, body: bytes, received_at: float) -> None:
        """``add`` for a stored message's JSON text, received by the queue at ``received_at``
        (epoch seconds: the time of a message with no ``receivedAt`` of its own); a ValueError
        (a msgspec.DecodeError for bad JSON) for one that has no rows."""
        m = _decode_message(body)
        received = m.receivedAt
        if received is msgspec.UNSET:
            received = timestamps.iso(timestamps.from_epoch(received_at))
            given = False
        else:
            given = True
        if m.type != "track":
            message = {f: getattr(m, f) for f in _FIELDS}
            message["context"] = _decode(m.context)
            if given:
                message["receivedAt"] = received
            self._rows(schema_name, message, None if given else received)
            return
        self._track(schema_name, m.messageId, m.anonymousId, m.userId, received or None, m.sentAt,
                    m.timestamp, m.originalTimestamp, m.context, True, m.event, m.properties)

    def _rows(self, schema_name: str, message: Mapping[str, Any], received_at: Any) -> None:
        for table, row in schema.map_message(message, received_at):
            self._table(schema_name, table).add_row(row)

    def _track(self, schema_name: str, message_id: Any, anonymous_id: Any, user_id: Any, received_at: Any,
               sent_at: Any, timestamp: Any, original_timestamp: Any, context: Any, raw: bool, event: Any,
               properties: Any) -> None:
        """A track call's rows: ``tracks`` and the event's own table. ``context``: the object, or
        its JSON text (``raw``), read only after the messageId so that the errors come in
        ``map_message``'s order."""
        if type(message_id) is not str or not message_id:
            message_id = schema.ident(message_id)
            if message_id is None:
                raise ValueError("the message has no messageId")
        leaves = _context_text(context) if raw else _context_of(context)
        if type(event) is not str and not isinstance(event, str):
            raise ValueError("a track needs an `event` name")
        table = _tables.get(event) or _table_name(event)
        if not table:
            properties = None  # no table: its properties are not looked at
        elif properties is not None and not isinstance(properties, dict):
            raise ValueError("`properties` is not a JSON object")
        if type(anonymous_id) is not str or not anonymous_id:
            anonymous_id = schema.ident(anonymous_id)
        if type(user_id) is not str or not user_id:
            user_id = schema.ident(user_id)
        base: Values = (message_id, anonymous_id, user_id, received_at, sent_at, timestamp,
                        original_timestamp)
        if leaves is not None:
            base_shape = _track_shapes.get(leaves[0]) or _track_shape(leaves[0])
            base += leaves[1]
        else:
            base_shape = _TRACK_SHAPE
        base += (table, event)
        tables = self.tables
        tracks = tables.get((schema_name, TRACKS)) or self._table(schema_name, TRACKS)
        tracks.add(base_shape, base)
        if not table:
            return
        own = tables.get((schema_name, table)) or self._table(schema_name, table)
        if properties:
            names, values = _flat(properties, "", True)
            if names:
                shape, pick = _joins.get((names, base_shape)) or _joined(names, base_shape)
                joined = values + base
                if pick is not None:
                    joined = tuple(joined[i] for i in pick)
                own.add(shape, joined)
                return
        own.add(base_shape, base)


def _context_of(context: Any) -> tuple[Shape, Values] | None:
    if context is None:
        return None
    if not isinstance(context, dict):
        raise ValueError("`context` is not a JSON object")
    return _flat(context, "context_", False) if context else None


_contexts: dict[bytes, tuple[Shape, Values] | None] = {}
_CONTEXTS_KEPT: Final = 1024


def _context_text(raw: msgspec.Raw) -> tuple[Shape, Values] | None:
    """A context's leaves from its JSON text, flattened once per distinct text."""
    text = bytes(raw)
    if text in _contexts:
        return _contexts[text]
    found = _context_of(_decode(text))
    if len(_contexts) >= _CONTEXTS_KEPT:
        _contexts.clear()
    _contexts[text] = found
    return found


_tables: dict[str, str] = {}


def _table_name(event: str) -> str:
    found = _tables.get(event)
    if found is None:
        if len(_tables) >= _KEPT:
            _tables.clear()
        found = _tables[event] = schema.table_name(event)
    return found


# --- flattening ----------------------------------------------------------------------------------
#
# A flat object (no nested object) flattens like every other flat object with the same keys and
# the same types of values under the same prefix: its plan is made once (which values to keep,
# in what order, which to write as JSON text) and applied with tuple operations. An object with
# nested ones is walked leaf by leaf, which costs less than planning each level.

_Plan = tuple[Shape, Callable[[Values], Values] | None, tuple[int, ...]]  # names, pick, JSON positions
_plans: dict[tuple[str, bool, Shape, tuple[type, ...]], _Plan] = {}
_SCALARS: Final = frozenset({str, int, float, bool})


def _flat(obj: Mapping[str, Any], prefix: str, custom: bool) -> tuple[Shape, Values]:
    """An object's leaves as (names, values), as ``schema.flattened`` (context) and
    ``schema.custom`` (properties, traits) make them: nested objects joined with ``_``, arrays
    as their JSON text, nulls left out, a name made twice holding the later value at the first
    place; for properties and traits, none that would take a reserved column."""
    values = tuple(obj.values())
    types = tuple(map(type, values))
    plan = None
    if dict not in types:
        key = (prefix, custom, tuple(obj), types)
        plan = _plans.get(key)
        if plan is None:
            if len(_plans) >= _KEPT:
                _plans.clear()
            plan = _plans[key] = _plan(*key)
    if plan is not None and plan is not _WALK:
        names, pick, arrays = plan
        if pick is not None:
            values = pick(values)
        if arrays:
            written = list(values)
            for j in arrays:
                written[j] = schema.json_text(written[j])
            values = tuple(written)
        return names, values
    leaf_names: list[str] = []
    leaf_values: list[Any] = []
    _leaves(obj, prefix, custom, leaf_names, leaf_values)
    shape = tuple(leaf_names)
    if len(set(shape)) != len(shape):
        last = {name: i for i, name in enumerate(shape)}
        shape = tuple(dict.fromkeys(shape))
        return shape, tuple(leaf_values[last[name]] for name in shape)
    return shape, tuple(leaf_values)


_WALK: Final[_Plan] = ((), None, ())  # the plan of an object with a nested one (of a dict's subclass)


def _plan(prefix: str, custom: bool, keys: Shape, types: tuple[type, ...]) -> _Plan:
    if any(issubclass(kind, dict) for kind in types):
        return _WALK
    entries = [("" if kind is _NONE else _column(prefix, key, custom), issubclass(kind, list))
               for key, kind in zip(keys, types, strict=True)]
    last = {name: i for i, (name, _) in enumerate(entries) if name}
    order = tuple(dict.fromkeys(name for name, _ in entries if name))
    pick = tuple(last[name] for name in order)
    arrays = tuple(j for j, i in enumerate(pick) if entries[i][1])
    if pick == tuple(range(len(entries))):
        return order, None, arrays
    if len(pick) == 1:
        only = pick[0]
        return order, lambda values: (values[only],), arrays
    if not pick:
        return order, lambda values: (), arrays
    return order, cast(Callable[[Values], Values], itemgetter(*pick)), arrays


def _column(prefix: str, key: str, custom: bool) -> str:
    path = prefix + key
    return schema.custom_name(path) if custom else schema.column_name(path)


# The column of each key under a prefix: {(prefix, custom): {key: column}} ("" for a key that
# makes no column); the number of keys held in all of them is bounded by schema.NAMES_KEPT.
_under: dict[tuple[str, bool], dict[str, str]] = {}
_held = [0]


def _names_under(prefix: str, custom: bool) -> dict[str, str]:
    found = _under.get((prefix, custom))
    if found is None:
        if len(_under) >= _KEPT:
            _under.clear()
            _held[0] = 0
        found = _under[(prefix, custom)] = {}
    return found


def _leaves(obj: Mapping[str, Any], prefix: str, custom: bool, names: list[str], values: list[Any]) -> None:
    known = _names_under(prefix, custom)
    for key, value in obj.items():
        kind = type(value)
        if kind not in _SCALARS:
            if value is None:
                continue
            if isinstance(value, dict):
                _leaves(value, f"{prefix}{key}_", custom, names, values)
                continue
            if isinstance(value, list):
                value = schema.json_text(value)
        name = known.get(key)
        if name is None:
            name = _column(prefix, key, custom)
            if _held[0] >= schema.NAMES_KEPT:
                _under.clear()
                _held[0] = 0
                known = _names_under(prefix, custom)
            known[key] = name
            _held[0] += 1
        if name:
            names.append(name)
            values.append(value)


# --- shapes --------------------------------------------------------------------------------------

_shapes: dict[Shape, Shape] = {}
_track_shapes: dict[Shape, Shape] = {}
_joins: dict[tuple[Shape, Shape], tuple[Shape, tuple[int, ...] | None]] = {}


def _canonical(names: Shape) -> Shape:
    """The one tuple object of these names (``Columns`` groups rows by its id)."""
    found = _shapes.get(names)
    if found is None:
        if len(_shapes) >= _KEPT:
            _forget()
        found = _shapes[names] = names
    return found


_TRACK_SHAPE: Final = _canonical(_STD + _TRACK_TAIL)


def _track_shape(context: Shape) -> Shape:
    """A ``tracks`` row's names: the standard ones, the context's, event and event_text (the
    context's names all start with ``context``: none is another's)."""
    found = _track_shapes.get(context)
    if found is None:
        if len(_track_shapes) >= _KEPT:
            _forget()
        found = _track_shapes[context] = _canonical(_STD + context + _TRACK_TAIL)
    return found


def _joined(first: Shape, then: Shape) -> tuple[Shape, tuple[int, ...] | None]:
    """The names of a row made of two parts, the later part's value winning a name both have
    (at the first part's place), and which of the parts' values to keep (None: all)."""
    key = (first, then)
    found = _joins.get(key)
    if found is None:
        if len(_joins) >= _KEPT:
            _forget()
        names = first + then
        if len(set(names)) == len(names):
            found = (_canonical(names), None)
        else:
            last = {name: i for i, name in enumerate(names)}
            shape = tuple(dict.fromkeys(names))
            found = (_canonical(shape), tuple(last[name] for name in shape))
        _joins[key] = found
    return found


def _forget() -> None:
    _shapes.clear()
    _track_shapes.clear()
    _joins.clear()
    _shapes[_TRACK_SHAPE] = _TRACK_SHAPE
