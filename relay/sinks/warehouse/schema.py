"""Segment's warehouse schema: a message as table rows, names, and the five column types (pure).

A message becomes rows of plain values (``map_message``): ``tracks`` and the event's own table
for a track, ``identifies`` (and ``users`` when there is a userId) for an identify, and so on;
objects are flattened with ``_``, arrays kept as their JSON text, nulls left out, names run
through go-snakecase (``snakecase``) and made safe as SQL identifiers (``identifier``).
``infer`` gives a value's column type and ``coerce`` fits a value to a column's type, or says
why it cannot (the value then goes to ``discards``). docs/warehouses.md states every rule.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, Literal

import msgspec

Kind = Literal["timestamp", "integer", "float", "boolean", "varchar"]
Row = dict[str, Any]
TableRow = tuple[str, Row]

MAX_NAME: Final = 63  # PostgreSQL's limit, used on every destination so queries move unchanged
MAX_COLUMNS: Final = 1000  # per table; a new column past this goes to discards
INT_MIN, INT_MAX = -(2**63), 2**63 - 1

TRACKS, IDENTIFIES, USERS, PAGES, SCREENS = "tracks", "identifies", "users", "pages", "screens"
GROUPS, ACCOUNTS, ALIASES, DISCARDS = "groups", "accounts", "aliases", "discards"
STANDARD_TABLES: Final = frozenset({TRACKS, IDENTIFIES, USERS, PAGES, SCREENS, GROUPS, ACCOUNTS,
                                    ALIASES, DISCARDS})
LATEST_TABLES: Final = frozenset({USERS, ACCOUNTS})  # one row per id, upserted: the latest state

# Reserved words of PostgreSQL (reserved, and reserved but allowed as function or type names)
# and of DuckDB: a table or column of that name gets a leading underscore.
SQL_RESERVED: Final = frozenset("""
all analyse analyze and any array as asc asymmetric authorization binary both case cast check
collate collation column concurrently constraint create cross current_catalog current_date
current_role current_schema current_time current_timestamp current_user default deferrable desc
describe distinct do else end except false fetch for foreign freeze from full grant group having
ilike in initially inner intersect into is isnull join lambda lateral leading left like limit
localtime localtimestamp natural not notnull null offset on only or order outer overlaps pivot
pivot_longer pivot_wider placing primary qualify references returning right select session_user
show similar some summarize symmetric system_user table tablesample then to trailing true union
unique unpivot user using variadic verbose when where window with
""".split())

EVENT_COLUMNS: Final[dict[str, Kind]] = {
    "id": "varchar", "anonymous_id": "varchar", "user_id": "varchar", "received_at": "timestamp",
    "sent_at": "timestamp", "timestamp": "timestamp", "original_timestamp": "timestamp",
}
LOAD_COLUMNS: Final[dict[str, Kind]] = {"uuid_ts": "timestamp", "loaded_at": "timestamp"}
LATEST_COLUMNS: Final[dict[str, Kind]] = {"id": "varchar", "received_at": "timestamp"}
TRACK_COLUMNS: Final[dict[str, Kind]] = {**EVENT_COLUMNS, "event": "varchar", "event_text": "varchar"}
DISCARD_COLUMNS: Final[dict[str, Kind]] = {
    "table_name": "varchar", "column_name": "varchar", "column_value": "varchar", "row_id": "varchar",
    "reason": "varchar", "received_at": "timestamp",
}
DISCARD_KEY: Final = ("table_name", "column_name", "row_id")
_TABLE_COLUMNS: Final[dict[str, dict[str, Kind]]] = {
    TRACKS: TRACK_COLUMNS,
    IDENTIFIES: EVENT_COLUMNS,
    USERS: LATEST_COLUMNS,
    ACCOUNTS: LATEST_COLUMNS,
    PAGES: {**EVENT_COLUMNS, "name": "varchar", "category": "varchar"},
    SCREENS: {**EVENT_COLUMNS, "name": "varchar"},
    GROUPS: {**EVENT_COLUMNS, "group_id": "varchar"},
    ALIASES: {**EVENT_COLUMNS, "previous_id": "varchar"},
    DISCARDS: DISCARD_COLUMNS,
}
# A property or trait whose column is one of these is dropped (it would overwrite the call's own).
RESERVED_COLUMNS: Final = frozenset({
    *TRACK_COLUMNS, *LOAD_COLUMNS, "uuid", "channel", "group_id", "previous_id",
})
_TIMESTAMP_TEXT = re.compile(
    r"\A\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:?\d{2})?)?\Z")
_encode = msgspec.json.Encoder().encode


def standard_columns(table: str) -> dict[str, Kind]:
    """The columns a table always has, in order (an event table: those of ``tracks``)."""
    return {**_TABLE_COLUMNS.get(table, TRACK_COLUMNS), **LOAD_COLUMNS}


def key_columns(table: str) -> tuple[str, ...]:
    return DISCARD_KEY if table == DISCARDS else ("id",)


# --- names ---------------------------------------------------------------------------------------


def _lower(c: str) -> bool:
    return "a" <= c <= "z"


def _upper(c: str) -> bool:
    return "A" <= c <= "Z"


def _digit(c: str) -> bool:
    return "0" <= c <= "9"


def snakecase(s: str) -> str:
    """segmentio/go-snakecase: ASCII letters and digits form words joined by ``_``, lowercased;
    every other character separates; ``aB`` starts a word at ``B``; a run of capitals stays one
    word until a lowercase run (``CStringRef`` -> ``cstring_ref``); digits stick to their word."""
    n, i = len(s), 0
    has_lower = has_underscore = lower_since_underscore = False
    while i < n:  # a prefix that is already snake case is kept as it is
        c = s[i]
        if _lower(c):
            has_lower = True
            if has_underscore:
                lower_since_underscore = True
        elif _digit(c):
            pass
        elif c == "_" and 0 < i < n - 1 and (_lower(s[i + 1]) or _digit(s[i + 1])):
            has_underscore, lower_since_underscore = True, False
        else:
            break
        i += 1
    if i == n:
        return s
    out = list(s[:i])
    if _upper(s[i]) and (not has_lower or (has_underscore and not lower_since_underscore)):
        i = _word(s, i, out)
    while i < n:
        if not (_lower(s[i]) or _upper(s[i]) or _digit(s[i])):
            i += 1
            continue
        if out:
            out.append("_")
        i = _word(s, i, out)
    return "".join(out)


def _word(s: str, i: int, out: list[str]) -> int:
    """One word from ``s[i]``: its capitals (and digits) lowered, then its small letters (and
    digits) as they are; returns where it ends."""
    n = len(s)
    while i < n and (_upper(s[i]) or _digit(s[i])):
        out.append(s[i].lower())
        i += 1
    while i < n and (_lower(s[i]) or _digit(s[i])):
        out.append(s[i])
        i += 1
    return i


def identifier(name: str) -> str:
    """A snake-cased name made safe to write unquoted: a leading digit or a reserved word gets a
    leading ``_``; cut to ``MAX_NAME`` characters. Empty stays empty (no table, no column)."""
    if not name:
        return ""
    if _digit(name[0]) or name in SQL_RESERVED:
        name = "_" + name
    return name[:MAX_NAME]


_names: dict[str, str] = {}
NAMES_KEPT: Final = 65536  # names are memoized; a flood of distinct keys only empties the memo


def column_name(path: str) -> str:
    """The column for a flattened key path (keys joined with ``_``): snake-cased, made safe."""
    found = _names.get(path)
    if found is None:
        if len(_names) >= NAMES_KEPT:
            _names.clear()
        found = _names[path] = identifier(snakecase(path))
    return found


def table_name(event: str) -> str:
    """The table of a track event: its slug; one that names a standard table gets a leading
    ``_`` (``Tracks`` -> ``_tracks``); empty when the name has no letter or digit."""
    name = column_name(event)
    return "_" + name if name in STANDARD_TABLES else name


def schema_name(name: str) -> str | None:
    """``name`` when it is usable as a schema (lowercase snake case, not a reserved word, not
    starting with a digit, at most ``MAX_NAME`` characters); None if not."""
    if name and snakecase(name) == name and identifier(name) == name:
        return name
    return None


# --- values --------------------------------------------------------------------------------------


def infer(value: Any) -> Kind:
    """The type a column takes from its first value."""
    if value is True or value is False:
        return "boolean"
    if isinstance(value, int):
        return "integer" if INT_MIN <= value <= INT_MAX else "varchar"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str) and time_of(value) is not None:
        return "timestamp"
    return "varchar"


def time_of(value: str) -> datetime | None:
    """``value`` as a time when it is one of the ISO-8601 forms that count as a timestamp."""
    return parse_time(value) if _TIMESTAMP_TEXT.match(value) else None


def parse_time(value: str) -> datetime | None:
    """An ISO-8601 text as an aware UTC datetime (no zone: UTC); None if it is not one."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def json_text(value: Any) -> str:
    """An array (or any JSON value) as its JSON text, as a varchar column holds it."""
    return _encode(value).decode()


def text_of(value: Any) -> str:
    """A value as a varchar column holds it (booleans as ``true``/``false``, like JSON)."""
    if isinstance(value, str):
        return value
    if value is True or value is False:
        return "true" if value else "false"
    return _encode(value).decode()


def coerce(kind: Kind, value: Any) -> tuple[Any, str | None]:
    """``value`` fitted to a column of ``kind``: (the value, None), or (None, why it cannot be).
    Anything fits varchar; integers and floats convert into each other (a float is truncated);
    a timestamp column takes ISO-8601 text only, a boolean column booleans only."""
    if kind == "varchar":
        return text_of(value), None
    if isinstance(value, datetime):
        if kind == "timestamp":
            return value, None
        return None, f"incompatible schema conversion from timestamp to {kind}"
    got = infer(value)
    if got == kind:
        return (time_of(value) if kind == "timestamp" else value), None
    if kind == "float" and got == "integer":
        return float(value), None
    if kind == "integer" and got == "float" and INT_MIN <= value <= INT_MAX:
        return int(value), None
    return None, f"incompatible schema conversion from {got} to {kind}"


# --- messages ------------------------------------------------------------------------------------


_custom_names: dict[str, str] = {}


def custom_name(path: str) -> str:
    """The column of a property or trait path; empty when it would take a reserved column."""
    name = column_name(path)
    if name in RESERVED_COLUMNS or name.startswith("context_"):
        name = ""
    if len(_custom_names) >= NAMES_KEPT:
        _custom_names.clear()
    _custom_names[path] = name
    return name


def _walk(obj: Mapping[str, Any], prefix: str, out: Row, names: dict[str, str], resolve: Any) -> None:
    for key, value in obj.items():
        if value is None:
            continue
        if isinstance(value, dict):
            _walk(value, f"{prefix}{key}_", out, names, resolve)
            continue
        path = prefix + key
        name = names.get(path)
        if name is None:
            name = resolve(path)
        if name:
            out[name] = json_text(value) if isinstance(value, list) else value


def flattened(obj: object, prefix: str = "", out: Row | None = None) -> Row:
    """A JSON object's leaves as {column: value} (into ``out`` when given); nested objects
    joined with ``_``, arrays as their JSON text, nulls left out; a later key that names the
    same column wins."""
    out = {} if out is None else out
    if isinstance(obj, dict):
        _walk(obj, prefix, out, _names, column_name)
    return out


def custom(obj: object, what: str) -> Row:
    """Properties or traits as columns, without those that would take a reserved column."""
    out: Row = {}
    if isinstance(obj, dict):
        _walk(obj, "", out, _custom_names, custom_name)
    elif obj is not None:
        raise ValueError(f"`{what}` is not a JSON object")
    return out


def ident(value: object) -> str | None:
    """An identifier as text (Segment libraries accept numeric ids)."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return text_of(value)
    return None


def map_message(message: Mapping[str, Any], received_at: str | None = None) -> list[TableRow]:
    """One stored Segment message as [(table, row)], in the order the spec lists them. Times
    stay ISO-8601 text (``coerce`` parses them); ``received_at`` is used when the message has
    no ``receivedAt``."""
    kind = message.get("type")
    common: Row = {"id": ident(message.get("messageId")), "anonymous_id": ident(message.get("anonymousId")),
                   "user_id": ident(message.get("userId")),
                   "received_at": message.get("receivedAt") or received_at,
                   "sent_at": message.get("sentAt"), "timestamp": message.get("timestamp"),
                   "original_timestamp": message.get("originalTimestamp")}
    if common["id"] is None:
        raise ValueError("the message has no messageId")
    context = message.get("context")
    if context is not None and not isinstance(context, dict):
        raise ValueError("`context` is not a JSON object")
    common = {k: v for k, v in common.items() if v is not None}
    flattened(context, "context_", common)
    if kind == "track":
        event = message.get("event")
        if not isinstance(event, str):
            raise ValueError("a track needs an `event` name")
        table = table_name(event)
        base = {**common, "event": table, "event_text": event}
        rows: list[TableRow] = [(TRACKS, base)]
        if table:
            rows.append((table, {**custom(message.get("properties"), "properties"), **base}))
        return rows
    if kind == "identify":
        traits = custom(message.get("traits"), "traits")
        rows = [(IDENTIFIES, {**traits, **common})]
        user_id = common.get("user_id")
        if user_id is not None:
            rows.append((USERS, {**traits, "id": user_id, "received_at": common.get("received_at")}))
        return rows
    if kind in ("page", "screen"):
        properties = message.get("properties")
        row = {**custom(properties, "properties"), **common}
        props = properties if isinstance(properties, dict) else {}
        for field in ("name", "category") if kind == "page" else ("name",):
            value = message.get(field)
            value = value if value is not None else props.get(field)
            if value is not None and not isinstance(value, dict | list):
                row[field] = value
        return [(PAGES if kind == "page" else SCREENS, row)]
    if kind == "group":
        group_id = ident(message.get("groupId"))
        traits = custom(message.get("traits"), "traits")
        rows = [(GROUPS, {**traits, **common, **({"group_id": group_id} if group_id else {})})]
        if group_id is not None:
            rows.append((ACCOUNTS, {**traits, "id": group_id, "received_at": common.get("received_at")}))
        return rows
    if kind == "alias":
        previous = ident(message.get("previousId"))
        return [(ALIASES, {**common, **({"previous_id": previous} if previous else {})})]
    raise ValueError(f"type {kind!r} has no warehouse table")


# the columns of a users or accounts row that a merge sets itself rather than by the rule
MERGE_OWN = frozenset({"id", "received_at", "uuid_ts", "loaded_at"})


def moment_of(moment: Any) -> datetime:
    """A ``received_at`` value as a time to order rows by (the earliest when there is none)."""
    if isinstance(moment, datetime):
        return moment
    parsed = parse_time(moment) if isinstance(moment, str) else None
    return parsed or datetime.min.replace(tzinfo=UTC)
