"""``filter``: a destination filter, like Segment's: a condition and what to do when it holds.

``if`` is an expression in the FQL subset of ``relay.plugins.fql`` (empty: every message).
For a message it matches, the actions apply in Segment's order:

1. ``sample``: keep ``percent`` (0 to 1) of the messages; keyed on ``path`` (``userId``, say)
   the choice is the same for every message with that value, else it is random;
2. ``drop``: drop it;
3. ``drop_properties``: remove these dotted paths (``properties.email``, ``context.ip``);
4. ``allow_properties``: in each object the paths name, keep only the named keys
   (``["properties.sku", "properties.price"]`` keeps those two keys of ``properties``).

Messages it does not match go on unchanged.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from typing import Annotated, Any

import msgspec

from relay import __version__
from relay.plugins import Message, paths
from relay.plugins.fql import Condition, FQLError, compile_condition

Percent = Annotated[float, msgspec.Meta(ge=0, le=1)]
HASH_SPACE = float(1 << 64)


class Sample(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    percent: Percent
    path: str = ""  # keyed on this field: deterministic per value


class FilterOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True,
                    rename={"condition": "if"}):
    condition: str = ""
    sample: Sample | None = None
    drop: bool = False
    drop_properties: tuple[str, ...] = ()
    allow_properties: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.condition.strip():
            try:
                compile_condition(self.condition)
            except FQLError as exc:
                raise ValueError(f"{exc} - at `$.if`") from None
        paths.check_lists(self, "drop_properties", "allow_properties")
        if self.sample is not None and self.sample.path:
            try:
                paths.split(self.sample.path)
            except ValueError as exc:
                raise ValueError(f"{exc} - at `$.sample.path`") from None


def sample_point(value: Any) -> float:
    """Where ``value`` falls in [0, 1): the same for the same value, on every machine."""
    data = value.encode() if isinstance(value, str) else msgspec.json.encode(value)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") / HASH_SPACE


class Filter:
    name = "filter"
    type = "destination"
    version = __version__
    Options = FilterOptions

    def __init__(self, rand: random.Random | None = None) -> None:
        self._rand = rand or random.Random()
        self._condition: Condition | None = None
        self._sample: Sample | None = None
        self._sample_path: paths.Path = ()
        self._drop = False
        self._drop_paths: list[paths.Path] = []
        self._allow: dict[paths.Path, frozenset[str]] = {}

    async def load(self, options: FilterOptions) -> None:
        self._condition = compile_condition(options.condition) if options.condition.strip() else None
        self._sample = options.sample
        self._sample_path = paths.split(options.sample.path) if options.sample and options.sample.path else ()
        self._drop = options.drop
        self._drop_paths = [paths.split(p) for p in options.drop_properties]
        allow: defaultdict[paths.Path, set[str]] = defaultdict(set)
        for path in options.allow_properties:
            *parent, key = paths.split(path)
            allow[tuple(parent)].add(key)
        self._allow = {parent: frozenset(keys) for parent, keys in allow.items()}

    async def event(self, message: Message) -> Message | None:
        if self._condition is not None and not self._condition.matches(message):
            return message
        if self._sample is not None and not self._sampled(message, self._sample.percent):
            return None
        if self._drop:
            return None
        for path in self._drop_paths:
            paths.remove(message, path)
        for parent, keys in self._allow.items():
            paths.keep_only(message, parent, keys)
        return message

    def _sampled(self, message: Message, percent: float) -> bool:
        if self._sample_path:
            value = paths.get(message, self._sample_path)
            if value is not None:
                return sample_point(value) < percent
        return self._rand.random() < percent
