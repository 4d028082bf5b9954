"""The column-wise mapping (``columns.Builder`` and ``load.plan_columns``, what the destinations
run) against the row-wise one (``schema.map_message`` and ``load.plan``, the spec's rules row by
row): the same tables, columns, types, values and discards, on the worked example, on odd
cases, and on random messages."""

from __future__ import annotations

import string
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay import timestamps
from relay.sinks.warehouse import load
from relay.sinks.warehouse.columns import Builder
from relay.sinks.warehouse.load import Catalog, Mapped, Plan, plan, plan_columns
from relay.sinks.warehouse.schema import coerce, map_message
from tests.sinks.test_warehouse_schema import CONTEXT, LOADED, TIMES, worked_example


def typed(value: Any) -> Any:
    """A value with its type, so that 1, 1.0 and True differ."""
    return (type(value).__name__, value)


def described(result: Plan) -> Any:
    return (result.new_schemas, [
        (t.schema, t.table, t.create, list(t.add.items()), t.columns, t.kinds,
         [[typed(v) for v in column] for column in t.data], t.latest, t.rows) for t in result.tables])


def both(messages: list[dict[str, Any]], catalog: Catalog | None = None, received: str | None = None
         ) -> tuple[Any, Any]:
    """(row-wise, column-wise) plans of the messages that map; the same error for those that do not."""
    catalog = catalog or Catalog()
    builder = Builder()
    events = []
    for m in messages:
        try:
            rows = map_message(m, received)
        except ValueError as exc:
            with pytest.raises(ValueError) as raised:
                builder.add("web_prod", m, received)
            assert str(raised.value) == str(exc)
            continue
        events.append(Mapped("web_prod", str(rows[0][1]["id"]), rows))
        builder.add("web_prod", m, received)
    rows_plan = plan(events, catalog.copy(), LOADED)
    columns_plan = plan_columns(builder.tables.values(), catalog.copy(), LOADED)
    return described(rows_plan), described(columns_plan)


QUEUED = 1_764_583_200.25  # the queue's receive time of a stored event, epoch seconds


def both_from_json(messages: list[dict[str, Any]], catalog: Catalog | None = None) -> tuple[Any, Any]:
    """The same for stored events: each decoded and mapped row by row (as the destinations did
    before), against ``Builder.add_json`` on its JSON text."""
    catalog = catalog or Catalog()
    builder = Builder()
    events = []
    for m in messages:
        body = msgspec.json.encode(m)
        decoded = msgspec.json.decode(body)
        fallback = None if "receivedAt" in decoded else timestamps.iso(timestamps.from_epoch(QUEUED))
        try:
            rows = map_message(decoded, fallback)
        except ValueError as exc:
            with pytest.raises(ValueError) as raised:
                builder.add_json("web_prod", body, QUEUED)
            assert str(raised.value) == str(exc)
            continue
        events.append(Mapped("web_prod", str(rows[0][1]["id"]), rows))
        builder.add_json("web_prod", body, QUEUED)
    return (described(plan(events, catalog.copy(), LOADED)),
            described(plan_columns(builder.tables.values(), catalog.copy(), LOADED)))


def test_the_worked_example_is_the_same_plan_column_by_column():
    by_rows, by_columns = both(worked_example())
    assert by_columns == by_rows
    assert [t[1] for t in by_columns[1]] == ["tracks", "order_completed", "signed_up", "identifies", "users"]


def test_a_later_load_with_new_columns_and_misfits_is_the_same_plan():
    catalog = Catalog()
    plan_columns_first = Builder()
    for m in worked_example():
        plan_columns_first.add("web_prod", m)
    plan_columns(plan_columns_first.tables.values(), catalog, LOADED).apply(catalog)
    later = [{**worked_example()[0], "messageId": f"m-{i}",
              "properties": {"orderId": i, "revenue": "lots" if i % 2 else i, "coupon": "BF25",
                             "shipping": {"cost": 2.5}, "when": "2026-01-05T10:00:00Z" if i % 3 else "soon"}}
             for i in range(10, 16)]
    by_rows, by_columns = both(later, catalog)
    assert by_columns == by_rows
    assert any(t[1] == "discards" for t in by_columns[1])


ODD = [
    # a context key that makes the column `context`, and a property of that name
    {"type": "track", "event": "E", "messageId": "c", "userId": "u", "context": {"": 1, "$": 2},
     "properties": {"context": "mine", "a": 1}},
    # two keys that make one column: the later value at the first place
    {"type": "track", "event": "E", "messageId": "d", "userId": "u",
     "properties": {"a_b": 1, "a": {"b": 2}, "fooBar": "x", "foo_bar": "y", "n": None}},
    # an event with no table, with properties that are not an object (not looked at)
    {"type": "track", "event": "$$$", "messageId": "e", "userId": "u", "properties": [1, 2]},
    # numeric ids, no context, no properties, a time that is not one
    {"type": "track", "event": "Tracks", "messageId": 7, "userId": 1.5, "anonymousId": "", "sentAt": 12},
    # the same event twice (one row), and the others of the load
    {"type": "track", "event": "E", "messageId": "c", "userId": "u", "properties": {"a": 2}},
    {"type": "page", "messageId": "p", "userId": "u", "name": "Home", "properties": {"name": "x", "n": 1}},
    {"type": "identify", "messageId": "i", "userId": "u", "traits": {"plan": "pro", "userId": "x"}},
    {"type": "group", "messageId": "g", "userId": "u", "groupId": 7, "traits": {"name": "Acme"}},
    {"type": "alias", "messageId": "al", "userId": "u", "previousId": "a-1"},
    {"type": "screen", "messageId": "s", "anonymousId": "a", "properties": {"name": "Feed"}},
    # ones that cannot be mapped: the same error either way
    {"type": "track", "messageId": "x", "userId": "u", "event": "E", "properties": "no"},
    {"type": "track", "messageId": "x", "userId": "u", "event": 3},
    {"type": "track", "userId": "u", "event": "E"},
    {"type": "track", "messageId": "x", "userId": "u", "event": "E", "context": []},
    {"type": "nope", "messageId": "x", "userId": "u"},
]


def test_odd_messages_are_the_same_plan():
    by_rows, by_columns = both([{**TIMES, **m} for m in ODD])
    assert by_columns == by_rows
    by_rows, by_columns = both(ODD, received="2026-12-01T10:00:00.000Z")  # no receivedAt of their own
    assert by_columns == by_rows


def test_odd_stored_messages_are_the_same_plan():
    empty = [{**m, "receivedAt": r} for m in ODD for r in ("", None)]
    for messages in ([{**TIMES, **m} for m in ODD], ODD, empty):
        by_rows, by_columns = both_from_json(messages)
        assert by_columns == by_rows
    _, (_, tables) = both_from_json([{"type": "track", "messageId": "m", "event": "E", "receivedAt": ""}])
    tracks = tables[0]
    assert tracks[4][3] == "received_at" and tracks[6][3] == [typed(None)]  # no time, and not the queue's


def test_a_table_without_its_standard_columns_is_the_same_plan():
    catalog = Catalog({("web_prod", "tracks"): {"id": "varchar", "event": "varchar", "sent_at": "integer"}},
                      {"web_prod"})
    by_rows, by_columns = both([{**TIMES, **m} for m in ODD], catalog)
    assert by_columns == by_rows


# --- random messages -----------------------------------------------------------------------------

KEYS = ["a", "b", "a_b", "fooBar", "foo_bar", "userId", "user_id", "id", "event", "context", "context_x",
        "2FA", "Order", "$revenue (USD)", "", "ünï", "x" * 70, "createdAt", "name", "category"]
times = st.sampled_from(["2026-12-01T10:00:00.000Z", "2026-12-01", "2026-12-01 10:00:00", "soon", "",
                         "2026-12-01T10:00:00+05:30"])
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64), times,
                    st.floats(allow_nan=False, allow_infinity=False), st.text(string.printable, max_size=5))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)), max_leaves=8)
objects = st.dictionaries(st.sampled_from(KEYS), values, max_size=8)
ids = st.one_of(st.sampled_from(["m-1", "m-2", "m-3", "", "m-4"]), st.integers(0, 3), st.none(), st.just(2.5))


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["track"] * 6 + ["identify", "page", "screen", "group", "alias", "other"]))
    m: dict[str, Any] = {"type": kind, "messageId": draw(ids), "userId": draw(ids), "anonymousId": draw(ids)}
    for field in ("receivedAt", "sentAt", "timestamp", "originalTimestamp"):
        if draw(st.booleans()):
            m[field] = draw(st.one_of(times, st.none(), st.integers(0, 9)))
    m["context"] = draw(st.one_of(st.none(), st.just(CONTEXT), objects, st.just(3)))
    m["event"] = draw(st.one_of(st.sampled_from(["Order Completed", "Signed Up", "$$$", "Tracks", "select",
                                                 "E", "e"]), st.none()))
    for field in ("properties", "traits"):
        m[field] = draw(st.one_of(st.none(), objects, st.just([1])))
    for field in ("name", "category", "groupId", "previousId"):
        if draw(st.booleans()):
            m[field] = draw(values)
    return m


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages(), max_size=12), st.booleans())
def test_random_messages_are_the_same_plan(batch, with_catalog):
    catalog = Catalog()
    if with_catalog:  # a load before: known tables, so later values fit or are discarded
        first = Builder()
        for m in [{**TIMES, **m} for m in worked_example()]:
            first.add("web_prod", m)
        plan_columns(first.tables.values(), catalog, LOADED).apply(catalog)
    by_rows, by_columns = both(batch, catalog, received="2026-12-01T10:00:00.000Z")
    assert by_columns == by_rows
    by_rows, by_columns = both_from_json(batch, catalog)
    assert by_columns == by_rows


def test_fit_checks_each_value_of_a_mixed_column():
    fitted, misfits = load._fit("integer", [1, None, 2**70, True, 2.5], {})
    assert [typed(v) for v in fitted] == [typed(1), typed(None), typed(None), typed(None), typed(2)]
    assert [i for i, _ in misfits] == [2, 3]
    fitted, misfits = load._fit("timestamp", ["2026-01-05", None, "soon", "2026-01-05"], {})
    assert fitted == [datetime(2026, 1, 5, tzinfo=UTC), None, None, datetime(2026, 1, 5, tzinfo=UTC)]
    assert misfits == [(2, "incompatible schema conversion from varchar to timestamp")]


kinds = st.sampled_from(["varchar", "integer", "float", "boolean", "timestamp"])
column_values = st.one_of(  # mostly of one type, as a column's values are, sometimes mixed
    st.lists(st.one_of(st.none(), st.integers(-(2**64), 2**64),
                       st.sampled_from([2**63, 2**63 - 1, -(2**63), -(2**63) - 1])), max_size=6),
    st.lists(st.one_of(st.none(), times), max_size=6),
    st.lists(st.one_of(st.none(), st.booleans()), max_size=6),
    st.lists(st.one_of(st.none(), st.floats(allow_nan=False)), max_size=6),
    st.lists(scalars, max_size=6))


@settings(max_examples=500, deadline=None)
@given(kinds, column_values)
def test_fit_is_coerce_value_by_value(kind, column):
    fitted, misfits = load._fit(kind, column, {})
    expected = [(None, None) if v is None else coerce(kind, v) for v in column]
    assert [typed(v) for v in fitted] == [typed(v) for v, _ in expected]
    assert misfits == [(i, why) for i, (_, why) in enumerate(expected) if why is not None]
