"""The schema-mapping core against every row of the spec's worked example, every naming case,
and the type and evolution rules (docs/warehouses.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from relay.sinks.warehouse import schema
from relay.sinks.warehouse.load import Catalog, Mapped, combined, plan
from relay.sinks.warehouse.schema import coerce, infer, map_message, snakecase

RECEIVED = "2026-12-01T10:06:00.300Z"
TIMES = {"receivedAt": RECEIVED, "sentAt": "2026-12-01T10:05:59.000Z",
         "originalTimestamp": "2026-12-01T10:05:58.000Z", "timestamp": "2026-12-01T10:05:59.300Z"}
CONTEXT = {"ip": "203.0.113.9", "library": {"name": "analytics.js", "version": "5.2.1"},
           "page": {"path": "/checkout"}}
LOADED = datetime(2026, 12, 1, 10, 7, tzinfo=UTC)


def worked_example() -> list[dict[str, Any]]:
    return [
        {"type": "track", "event": "Order Completed", "messageId": "m-1", "userId": "u-1",
         "anonymousId": "a-1", "context": CONTEXT, "properties": {
             "orderId": "o-1", "revenue": 42.5, "currency": "USD",
             "products": [{"sku": "sku-1", "quantity": 2}],
             "shipping": {"method": "ground", "cost": 5}, "coupon": None, "user_id": "spoof"}, **TIMES},
        {"type": "track", "event": "Signed Up", "messageId": "m-2", "userId": "u-2", "anonymousId": "a-2",
         "context": CONTEXT, "properties": {"plan": "Pro Annual", "accountType": "Facebook", "trial": True},
         **TIMES},
        {"type": "identify", "messageId": "m-3", "userId": "u-1", "anonymousId": "a-1",
         "context": {"ip": "203.0.113.9"}, "traits": {
             "email": "ada@example.com", "firstName": "Ada", "logins": 3, "address": {"city": "Berlin"},
             "createdAt": "2026-01-05T10:00:00Z"}, **TIMES},
    ]


STD = {"id": "varchar", "anonymous_id": "varchar", "user_id": "varchar", "received_at": "timestamp",
       "sent_at": "timestamp", "timestamp": "timestamp", "original_timestamp": "timestamp"}
CTX = {"context_ip": "varchar", "context_library_name": "varchar", "context_library_version": "varchar",
       "context_page_path": "varchar"}
LOAD = {"uuid_ts": "timestamp", "loaded_at": "timestamp"}
EVENT = {"event": "varchar", "event_text": "varchar"}


def loaded(messages: list[dict[str, Any]], catalog: Catalog | None = None) -> tuple[Catalog, dict[str, Any]]:
    catalog = catalog or Catalog()
    events = [Mapped("web_prod", m["messageId"], map_message(m)) for m in messages]
    result = plan(events, catalog, LOADED)
    result.apply(catalog)
    return catalog, {t.table: t for t in result.tables}


def values(load: Any) -> list[dict[str, Any]]:
    return [dict(zip(load.columns, row, strict=True)) for row in zip(*load.data, strict=True)]


# (table, id, {column: type} of the table after the load, some values of that row)
WORKED_ROWS = [
    ("tracks", "m-1", {**STD, **CTX, **EVENT, **LOAD},
     {"event": "order_completed", "event_text": "Order Completed", "user_id": "u-1",
      "context_ip": "203.0.113.9"}),
    ("tracks", "m-2", {**STD, **CTX, **EVENT, **LOAD}, {"event": "signed_up", "event_text": "Signed Up"}),
    ("order_completed", "m-1", {**STD, **CTX, **EVENT, **LOAD, "order_id": "varchar", "revenue": "float",
                                "currency": "varchar", "products": "varchar", "shipping_method": "varchar",
                                "shipping_cost": "integer"},
     {"products": '[{"sku":"sku-1","quantity":2}]', "user_id": "u-1", "revenue": 42.5, "shipping_cost": 5,
      "shipping_method": "ground", "order_id": "o-1", "currency": "USD", "event": "order_completed"}),
    ("signed_up", "m-2", {**STD, **CTX, **EVENT, **LOAD, "plan": "varchar", "account_type": "varchar",
                          "trial": "boolean"},
     {"plan": "Pro Annual", "account_type": "Facebook", "trial": True, "anonymous_id": "a-2"}),
    ("identifies", "m-3", {**STD, "context_ip": "varchar", "email": "varchar", "first_name": "varchar",
                           "logins": "integer", "address_city": "varchar", "created_at": "timestamp", **LOAD},
     {"email": "ada@example.com", "first_name": "Ada", "logins": 3, "address_city": "Berlin",
      "created_at": datetime(2026, 1, 5, 10, 0, tzinfo=UTC), "anonymous_id": "a-1"}),
    ("users", "u-1", {"id": "varchar", "received_at": "timestamp", "email": "varchar",
                      "first_name": "varchar", "logins": "integer", "address_city": "varchar",
                      "created_at": "timestamp", **LOAD},
     {"email": "ada@example.com", "received_at": datetime(2026, 12, 1, 10, 6, 0, 300000, tzinfo=UTC)}),
]


@pytest.mark.parametrize(("table", "row_id", "columns", "some"), WORKED_ROWS,
                         ids=[f"{t}-{i}" for t, i, _, _ in WORKED_ROWS])
def test_the_worked_example_gives_each_row_its_columns_and_types(table, row_id, columns, some):
    catalog, loads = loaded(worked_example())
    assert catalog.tables[("web_prod", table)] == columns  # names and types, exactly
    row = next(r for r in values(loads[table]) if r["id"] == row_id)
    for name, value in some.items():
        assert row[name] == value, name
    assert row["uuid_ts"] == LOADED
    assert "coupon" not in row and "anonymous_id" not in catalog.tables[("web_prod", "users")]


def test_the_worked_example_is_six_rows_in_five_tables():
    _, loads = loaded(worked_example())
    assert {t: loads[t].rows for t in loads} == {"tracks": 2, "order_completed": 1, "signed_up": 1,
                                                 "identifies": 1, "users": 1}
    assert "discards" not in loads  # a spoofed user_id is dropped, not a discard


def test_a_later_coupon_adds_a_column_to_the_event_table_and_not_to_tracks():
    catalog, _ = loaded(worked_example())
    later = {**worked_example()[0], "messageId": "m-4", "properties": {"orderId": "o-2", "coupon": "BF25"}}
    catalog, loads = loaded([later], catalog)
    assert loads["order_completed"].add == {"coupon": "varchar"} and not loads["order_completed"].create
    assert loads["tracks"].add == {}
    assert list(catalog.tables[("web_prod", "order_completed")])[-1] == "coupon"


NAMES = [  # go-snakecase, from the spec and its source's tests
    ("accountType", "account_type"), ("CStringRef", "cstring_ref"), ("SAMPLE 2 TEXT", "sample_2_text"),
    ("test5", "test5"), ("2FA Enabled", "2fa_enabled"), ("5TEst", "5test"), ("sample-text", "sample_text"),
    ("sample___text", "sample_text"), ("___$$Base64Encode", "base64_encode"),
    ("something.com", "something_com"), ("$revenue (USD)", "revenue_usd"),
    ("Order Completed", "order_completed"), ("Signed Up", "signed_up"),
    ("context_userAgent", "context_user_agent"), ("sampleText", "sample_text"),
    ("already_snake_1", "already_snake_1"),
    ("sample text", "sample_text"), ("  padded  ", "padded"), ("Käufe", "k_ufe"), ("", ""), ("$$$", ""),
]


@pytest.mark.parametrize(("given", "expected"), NAMES)
def test_snakecase_follows_go_snakecase(given, expected):
    assert snakecase(given) == expected


TABLES = [  # event name -> table: collisions, digits, reserved words, length
    ("Order Completed", "order_completed"), ("Tracks", "_tracks"), ("pages", "_pages"), ("Users", "_users"),
    ("identifies", "_identifies"), ("accounts", "_accounts"), ("25dollarpurchase", "_25dollarpurchase"),
    ("Order", "_order"), ("select", "_select"), ("$$$", ""), ("x" * 80, "x" * 63),
]


@pytest.mark.parametrize(("event", "table"), TABLES)
def test_event_names_become_safe_table_names(event, table):
    assert schema.table_name(event) == table


def test_an_event_whose_name_has_no_letters_has_a_tracks_row_and_no_table():
    rows = map_message({"type": "track", "event": "$$$", "messageId": "m", "userId": "u", **TIMES})
    assert [t for t, _ in rows] == ["tracks"]
    assert rows[0][1]["event"] == "" and rows[0][1]["event_text"] == "$$$"


COLUMNS = [  # nested keys are joined with "_" and snake-cased; unsafe names get "_"
    ({"shipping": {"cost": 5}}, "shipping_cost"), ({"product_id": {"sku": "a"}}, "product_id_sku"),
    ({"address": {"street": "Main"}}, "address_street"), ({"nestedA": {"nestedB": 1}}, "nested_a_nested_b"),
    ({"2FA Enabled": True}, "_2fa_enabled"), ({"order": 1}, "_order"), ({"From": "x"}, "_from"),
    ({"$revenue (USD)": 1.5}, "revenue_usd"), ({"a" * 70: 1}, "a" * 63),
]


@pytest.mark.parametrize(("properties", "column"), COLUMNS)
def test_property_paths_become_safe_column_names(properties, column):
    assert list(schema.custom(properties, "properties")) == [column]


def test_context_is_flattened_with_its_prefix():
    context = {"userAgent": "UA", "app": {"version": "1.2"}, "field": {"nestedA": {"nestedB": 1}}}
    flat = schema.flattened(context, "context_")
    assert flat == {"context_user_agent": "UA", "context_app_version": "1.2",
                    "context_field_nested_a_nested_b": 1}


@pytest.mark.parametrize("name", sorted(schema.RESERVED_COLUMNS | {"context_ip", "userId", "receivedAt"}))
def test_a_property_that_takes_a_reserved_column_is_dropped(name):
    assert schema.custom({name: "spoof", "kept": 1}, "properties") == {"kept": 1}


def test_nulls_and_empty_objects_make_no_column_and_arrays_are_json_text():
    assert schema.custom({"a": None, "b": {}, "c": [1, None, {"d": "e"}], "f": {"g": None}}, "p") == {
        "c": '[1,null,{"d":"e"}]'}


INFER = [
    (True, "boolean"), (3, "integer"), (-(2**63), "integer"), (2**63, "varchar"), (3.0, "float"),
    (0.5, "float"), ("2019-09-26", "timestamp"), ("2009-05-19 14:39:22", "timestamp"),
    ("2026-01-05T06:30:12.984Z", "timestamp"),
    ("2026-01-05 04:56:55.175116", "timestamp"), ("2026-01-05T10:00:00+0530", "timestamp"),
    ("2026-01-05T10:00:00+05:30", "timestamp"), ("2026-13-45", "varchar"), ("20260105", "varchar"),
    ("yesterday", "varchar"), ("", "varchar"), ('[1,2]', "varchar"),
]


@pytest.mark.parametrize(("value", "kind"), INFER)
def test_a_value_gives_its_column_type(value, kind):
    assert infer(value) == kind


COERCE = [  # (column type, value, stored value, discarded?)
    ("varchar", 42, "42", False), ("varchar", True, "true", False), ("varchar", 1.5, "1.5", False),
    ("float", 42, 42.0, False), ("integer", 42.9, 42, False), ("integer", "42", None, True),
    ("integer", True, None, True), ("boolean", "yes", None, True), ("boolean", 1, None, True),
    ("timestamp", "soon", None, True), ("timestamp", 1700000000, None, True),
    ("timestamp", "2026-01-05T10:00:00Z", datetime(2026, 1, 5, 10, tzinfo=UTC), False),
    ("timestamp", "2026-01-05", datetime(2026, 1, 5, tzinfo=UTC), False),
    ("integer", 2**64, None, True), ("float", "1.5", None, True),
]


@pytest.mark.parametrize(("kind", "value", "stored", "discarded"), COERCE)
def test_a_value_is_fitted_to_its_column_or_discarded(kind, value, stored, discarded):
    fitted, why = coerce(kind, value)
    assert fitted == stored and (why is not None) == discarded
    if discarded:
        assert why.startswith("incompatible schema conversion from ")


def test_a_value_that_does_not_fit_is_null_and_a_discard_row():
    catalog, _ = loaded(worked_example())
    bad = {**worked_example()[0], "messageId": "m-9",
           "properties": {"revenue": "lots", "shipping": {"cost": 2.5}}}
    _, loads = loaded([bad], catalog)
    row = values(loads["order_completed"])[0]
    assert row["revenue"] is None and row["shipping_cost"] == 2  # float into integer: truncated
    assert [(d["table_name"], d["column_name"], d["column_value"], d["row_id"], d["reason"])
            for d in values(loads["discards"])] == [
        ("order_completed", "revenue", "lots", "m-9", "incompatible schema conversion from varchar to float")]


def test_a_new_column_takes_the_type_of_its_most_recent_value_in_the_load():
    first = {**worked_example()[1], "messageId": "x-1", "properties": {"seats": "many"}}
    second = {**worked_example()[1], "messageId": "x-2", "properties": {"seats": 4}}
    catalog, loads = loaded([first, second])
    assert catalog.tables[("web_prod", "signed_up")]["seats"] == "integer"
    assert [r["seats"] for r in values(loads["signed_up"])] == [None, 4]
    assert values(loads["discards"])[0]["column_value"] == "many"


def test_users_hold_the_newest_traits_and_older_ones_only_fill_gaps():
    def identify(mid: str, received: str, traits: dict[str, Any]) -> dict[str, Any]:
        return {"type": "identify", "messageId": mid, "userId": "u-1", "traits": traits,
                **{**TIMES, "receivedAt": received}}

    newer = identify("i-2", "2026-12-01T11:00:00.000Z", {"plan": "pro"})
    older = identify("i-1", "2026-12-01T10:00:00.000Z", {"plan": "free", "email": "a@example.com"})
    _, loads = loaded([newer, older])  # the newer arrives first in the queue
    users = [(r["id"], r["plan"], r["email"]) for r in values(loads["users"])]
    assert users == [("u-1", "pro", "a@example.com")]
    assert loads["identifies"].rows == 2


def test_an_identify_without_user_id_makes_no_users_row_and_other_calls_their_tables():
    anonymous = {"type": "identify", "messageId": "i", "anonymousId": "a", "traits": {"x": 1}, **TIMES}
    assert [t for t, _ in map_message(anonymous)] == ["identifies"]
    page = {"type": "page", "messageId": "p", "userId": "u", "name": "Home", "category": "Docs",
            "properties": {"path": "/", "name": "ignored"}, **TIMES}
    assert map_message(page) == [("pages", {**_std("p"), "path": "/", "name": "Home", "category": "Docs"})]
    screen = {"type": "screen", "messageId": "s", "userId": "u", "properties": {"name": "Feed"}, **TIMES}
    assert map_message(screen) == [("screens", {**_std("s"), "name": "Feed"})]
    group = {"type": "group", "messageId": "g", "userId": "u", "groupId": 7, "traits": {"name": "Acme"},
             **TIMES}
    assert map_message(group) == [("groups", {**_std("g"), "group_id": "7", "name": "Acme"}),
                                  ("accounts", {"id": "7", "name": "Acme", "received_at": RECEIVED})]
    alias = {"type": "alias", "messageId": "al", "userId": "u", "previousId": "a-1", **TIMES}
    assert map_message(alias) == [("aliases", {**_std("al"), "previous_id": "a-1"})]


def _std(mid: str) -> dict[str, Any]:
    return {"id": mid, "user_id": "u", "received_at": RECEIVED, "sent_at": TIMES["sentAt"],
            "timestamp": TIMES["timestamp"], "original_timestamp": TIMES["originalTimestamp"]}


@pytest.mark.parametrize(("message", "error"), [
    ({"type": "track", "messageId": "m", "userId": "u", "event": "E", "properties": [1]}, "`properties`"),
    ({"type": "identify", "messageId": "m", "userId": "u", "traits": "x"}, "`traits`"),
    ({"type": "track", "messageId": "m", "userId": "u", "event": "E", "context": 3}, "`context`"),
])
def test_a_message_that_cannot_be_mapped_says_why(message, error):
    with pytest.raises(ValueError, match=error):
        map_message(message)


def test_one_event_sent_twice_in_a_load_is_one_row():
    _, loads = loaded(worked_example() + worked_example())
    assert loads["tracks"].rows == 2 and loads["users"].rows == 1


def _identify(mid: str, user: str, received: str, **traits: Any) -> dict[str, Any]:
    return {"type": "identify", "messageId": mid, "userId": user, "traits": traits,
            **{**TIMES, "receivedAt": received}}


def _group(mid: str, group: str, received: str, **traits: Any) -> dict[str, Any]:
    return {"type": "group", "messageId": mid, "userId": "u-1", "groupId": group, "traits": traits,
            **{**TIMES, "receivedAt": received}}


H10, H11, H12 = "2026-12-01T10:00:00.000Z", "2026-12-01T11:00:00.000Z", "2026-12-01T12:00:00.000Z"
TYPED = [_identify("i-0", "u-0", H10, plan="x", email="x", seats=1, age=1, a=1, b="x", c=False),
         _group("g-0", "g-0", H10, size=1)]  # loaded first: the columns' types
# (messages in queue order, the batches they are split into): the batches' loads of users,
# accounts and discards combined are the load of the messages as one batch
COMBINED = [
    ([_identify("i-1", "u-1", H10, plan="free", email="a@example.com"),
      _identify("i-2", "u-1", H11, plan="pro")], [1, 1]),
    # the newer arrives first: the older batch only fills a gap
    ([_identify("i-1", "u-1", H12, plan="pro"),
      _identify("i-2", "u-1", H10, plan="free", email="b@example.com")], [1, 1]),
    # a tie: the later batch wins; a column new in the last batch
    ([_identify("i-1", "u-1", H10, plan="free"), _identify("i-2", "u-2", H10, plan="pro"),
      _identify("i-3", "u-1", H10, plan="team", seats=3, tier="gold")], [2, 1]),
    # three batches, users out of order
    ([_identify("i-1", "u-1", H11, a=1), _identify("i-2", "u-2", H10, b="x"),
      _identify("i-3", "u-1", H10, a=2, b="y"), _identify("i-4", "u-2", H12, a=5),
      _identify("i-5", "u-1", H12, c=True)], [1, 2, 2]),
    # two rows of one user merged in their batch: each value keeps when it came (plan, older
    # than the next batch's, gives way to it)
    ([_identify("i-1", "u-1", H10, plan="free", email="old"), _identify("i-2", "u-1", H12, seats=2),
      _identify("i-3", "u-1", H11, plan="pro")], [2, 1]),
    # accounts
    ([_group("g-1", "acme", H10, size=10), _group("g-2", "acme", H12, size=12),
      _group("g-3", "acme", H11, size=11, region="eu")], [1, 1, 1]),
]
MERGED = ("users", "accounts", "discards")


def _kinds(load: Any) -> dict[str, str]:
    return dict(zip(load.columns, load.kinds, strict=True))


def _by_key(load: Any) -> dict[Any, dict[str, Any]]:
    return {tuple(row[c] for c in load.key): row for row in values(load)}


def _since_by_key(load: Any) -> dict[Any, dict[str, Any]]:
    keys = [tuple(row[c] for c in load.key) for row in values(load)]
    return {k: {c: moments[i] for c, moments in load.since.items() if moments[i] is not None}
            for i, k in enumerate(keys)}


@pytest.mark.parametrize(("messages", "sizes"), COMBINED)
def test_merged_tables_of_several_batches_combine_as_one_batch_would_load_them(messages, sizes):
    catalog, _ = loaded(TYPED)
    alone = catalog.copy()
    _, whole = loaded(messages, catalog.copy())
    per_table: dict[str, list[Any]] = {}
    at = 0
    for size in sizes:
        _, loads = loaded(messages[at:at + size], alone)
        at += size
        for name, load in loads.items():
            if name in MERGED:
                per_table.setdefault(name, []).append(load)
    assert set(per_table) == {t for t in whole if t in MERGED}
    for name, loads in per_table.items():
        one = combined(loads, alone.tables[("web_prod", name)])
        assert one.rows == len(_by_key(one)) and one.add == whole[name].add, name
        # a batch adds its new columns as it goes: the same columns, the same types
        assert _kinds(one) == _kinds(whole[name]), name
        assert _by_key(one) == _by_key(whole[name]), name
        # and when each value came (the merge compares that with the row the table holds)
        assert _since_by_key(one) == _since_by_key(whole[name]), name


def test_a_merged_users_row_keeps_when_each_value_came():
    catalog, _ = loaded(TYPED)
    loads = []
    first = [_identify("i-1", "u-1", H10, plan="free", email="old"), _identify("i-2", "u-1", H12, seats=2)]
    for batch in (first, [_identify("i-3", "u-1", H11, plan="pro")]):
        _, tables = loaded(batch, catalog)
        loads.append(tables["users"])
    one = combined(loads, catalog.tables[("web_prod", "users")])
    assert _by_key(one)[("u-1",)] | {"uuid_ts": None, "loaded_at": None} == {
        "id": "u-1", "received_at": datetime.fromisoformat(H12), "uuid_ts": None, "loaded_at": None,
        "plan": "pro", "email": "old", "seats": 2}
    h10, h11, h12 = (datetime.fromisoformat(h) for h in (H10, H11, H12))
    assert _since_by_key(one) == {("u-1",): {"plan": h11, "email": h10, "seats": h12}}


@pytest.mark.parametrize("sizes", [[1], [2, 1], [1, 1, 1]])
def test_users_of_one_row_each_combine_as_row_by_row_merging_combines_them(sizes):
    from relay.sinks.warehouse.load import _each_once, _merged

    messages = [_identify("i-1", "u-1", H11, plan="pro", seats=2), _identify("i-2", "u-2", H10, email="e"),
                _identify("i-3", "u-3", H12, plan="team", tier="gold")]
    catalog, _ = loaded(TYPED)
    loads, at = [], 0
    for size in sizes:
        _, tables = loaded(messages[at:at + size], catalog)
        at += size
        loads.append(tables["users"])
    columns = catalog.tables[("web_prod", "users")]
    fast, slow = _each_once(loads, columns), _merged(loads, columns)
    assert (fast.columns, fast.kinds, fast.add) == (slow.columns, slow.kinds, slow.add)
    assert _by_key(fast) == _by_key(slow) and _since_by_key(fast) == _since_by_key(slow)
    assert _since_by_key(fast)[("u-1",)] == {"plan": datetime.fromisoformat(H11),
                                             "seats": datetime.fromisoformat(H11)}


def test_values_that_do_not_fit_in_several_batches_combine_as_batch_after_batch_merges_them():
    """A value that does not fit is NULL in its batch's row: an older value that fits stays
    (as merging the batches one after another leaves it), and ``discards`` keeps the first
    row of a (table, column, row) key, as its merge keeps the row the table holds."""
    catalog, _ = loaded(TYPED)
    batches = [[_group("g-1", "acme", H10, size=10)], [_group("g-2", "acme", H11, size="big")],
               [_identify("i-1", "u-1", H10, age=30), _identify("i-2", "u-1", H11, age="old")],
               [_identify("i-3", "u-1", H12, age="older"), _group("g-3", "acme", H12, size="huge")]]
    per_table: dict[str, list[Any]] = {}
    for batch in batches:
        _, loads = loaded(batch, catalog)
        for name in MERGED:
            if name in loads:
                per_table.setdefault(name, []).append(loads[name])
    tables = {name: combined(loads, catalog.tables[("web_prod", name)]) for name, loads in per_table.items()}
    accounts, users = values(tables["accounts"]), values(tables["users"])
    assert [(r["id"], r["size"], r["received_at"].hour) for r in accounts] == [("acme", 10, 12)]
    assert [(r["id"], r["age"], r["received_at"].hour) for r in users] == [("u-1", 30, 12)]
    assert sorted((r["table_name"], r["column_name"], r["row_id"], r["column_value"])
                  for r in values(tables["discards"])) == [
        ("accounts", "size", "acme", "big"), ("groups", "size", "g-2", "big"),
        ("groups", "size", "g-3", "huge"), ("identifies", "age", "i-2", "old"),
        ("identifies", "age", "i-3", "older"), ("users", "age", "u-1", "old")]
