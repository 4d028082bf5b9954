"""Cutting the queue into upstream requests (pure)."""

from dataclasses import dataclass

import pytest

from relay.forward.batching import ENVELOPE_BYTES, by_key, halves, take


@dataclass(frozen=True)
class Item:
    n: int
    size: int = 10
    key: str = "k"


def items(*sizes: int, key: str = "k") -> list[Item]:
    return [Item(i, s, key) for i, s in enumerate(sizes)]


def cost(batch: list[Item]) -> int:
    return ENVELOPE_BYTES + len(batch[0].key) + sum(i.size + 1 for i in batch)


E = ENVELOPE_BYTES + 1  # the envelope of a batch whose key is "k"


@pytest.mark.parametrize(
    ("sizes", "max_events", "max_bytes", "taken"),
    [
        ([], 10, 10_000, 0),
        ([10] * 5, 10, 10_000, 5),  # everything fits
        ([10] * 25, 10, 10_000, 10),  # max_events
        ([10] * 25, 1, 10_000, 1),
        # max_bytes: envelope with the key + (size + 1 separator) per event
        ([100] * 10, 100, E + 3 * 101, 3),
        ([100] * 10, 100, E + 3 * 101 - 1, 2),
        ([100] * 10, 100, E + 3 * 101 + 1, 3),
        # an event too large for any batch still goes alone (the upstream decides: 413)
        ([5000, 10, 10], 100, 1000, 1),
        ([10, 5000, 10], 100, 1000, 1),
    ],
)
def test_take_returns_the_longest_prefix_that_fits(sizes, max_events, max_bytes, taken):
    queue = items(*sizes)
    batch = take(queue, max_events, max_bytes)
    assert batch == queue[:taken]
    if taken > 1:
        assert len(batch) <= max_events
        assert cost(batch) <= max_bytes


@pytest.mark.parametrize("key", ["", "k", "x" * 300, "clé-ü"])
def test_the_key_counts_toward_max_bytes(key):
    queue = items(*([100] * 10), key=key)
    budget = ENVELOPE_BYTES + len(key.encode()) + 4 * 101
    assert len(take(queue, 100, budget)) == 4
    assert len(take(queue, 100, budget - 1)) == 3


def test_a_batch_never_mixes_write_keys_and_keeps_order():
    queue = [Item(0, key="a"), Item(1, key="a"), Item(2, key="b"), Item(3, key="a")]
    batches = []
    rest = list(queue)
    while rest:
        batch = take(rest, 10, 10_000)
        assert len({i.key for i in batch}) == 1
        batches.append(batch)
        rest = rest[len(batch):]
    assert [[i.n for i in b] for b in batches] == [[0, 1], [2], [3]]


def test_take_consumes_a_generator_only_one_item_past_the_batch():
    seen = []

    def gen():
        for i in range(100):
            seen.append(i)
            yield Item(i)

    assert len(take(gen(), 3, 10_000)) == 3
    assert len(seen) == 4


@pytest.mark.parametrize("n", [2, 3, 4, 7, 500])
def test_halves_cover_the_batch_in_order_and_both_shrink(n):
    batch = items(*([10] * n))
    left, right = halves(batch)
    assert left + right == batch
    assert 0 < len(left) < n and 0 < len(right) < n
    assert abs(len(left) - len(right)) <= 1


@pytest.mark.parametrize(("keys", "max_events", "max_bytes", "groups", "taken"), [
    ("aaaa", 10, 10_000, ["aaaa"], 4),
    ("abab", 10, 10_000, ["aa", "bb"], 4),
    ("abcabc", 2, 10_000, ["aa", "bb", "cc"], 6),
    ("aabab", 2, 10_000, ["aa", "b"], 3),  # a's group is full: the window ends before the third a
    ("abab", 10, ENVELOPE_BYTES + 1 + 11, ["a", "b"], 2),  # bytes: one event of 10 bytes a request
    ("a", 1, 1, ["a"], 1),  # at least one item, whatever its size
])
def test_by_key_groups_a_window_by_key_keeping_order_within_each(keys, max_events, max_bytes, groups, taken):
    items = [Item(i, 10, k) for i, k in enumerate(keys)]
    got, count = by_key(items, max_events, max_bytes)
    assert ["".join(i.key for i in g) for g in got] == groups and count == taken
    for group in got:
        assert [i.n for i in group] == sorted(i.n for i in group)
    assert sorted(i.n for g in got for i in g) == list(range(taken))  # exactly the prefix
