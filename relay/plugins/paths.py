"""Dotted paths into a message: ``context.traits.email``, ``properties.items.*.sku``.

A segment ``*`` stands for every key of an object or every item of an array; a segment of
digits indexes an array. A key that itself contains a dot cannot be named.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec

WILDCARD = "*"

Path = tuple[str, ...]
Slot = tuple[dict[str, Any] | list[Any], Any]  # (container, key or index)


def split(path: str) -> Path:
    parts = tuple(path.split("."))
    if not path or "" in parts:
        raise ValueError(f"{path!r} is not a dotted path (like `properties.email`)")
    return parts


def check_lists(options: object, *keys: str) -> None:
    """Every path in the options' list fields ``keys`` is a dotted path, else ValueError
    naming the first bad one as ``$.key[i]`` (for an options struct's ``__post_init__``)."""
    for key in keys:
        for i, path in enumerate(getattr(options, key)):
            try:
                split(path)
            except ValueError as exc:
                raise ValueError(f"{exc} - at `$.{key}[{i}]`") from None


def get(root: Any, parts: Sequence[str]) -> Any:
    """The value at ``parts`` (no wildcards), or None when any step is missing."""
    value = root
    for part in parts:
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def locate(root: Any, parts: Sequence[str]) -> list[Slot]:
    """Every existing (container, key) that ``parts`` reaches, wildcards expanded."""
    found: list[Slot] = []
    _walk(root, parts, 0, found)
    return found


def _walk(node: Any, parts: Sequence[str], i: int, found: list[Slot]) -> None:
    part = parts[i]
    keys: Sequence[Any]
    if isinstance(node, dict):
        keys = list(node) if part == WILDCARD else ([part] if part in node else [])
    elif isinstance(node, list):
        if part == WILDCARD:
            keys = range(len(node))
        else:
            keys = [int(part)] if part.isdigit() and int(part) < len(node) else []
    else:
        return
    last = i == len(parts) - 1
    for key in keys:
        if last:
            found.append((node, key))
        else:
            _walk(node[key], parts, i + 1, found)


def slot(root: Any, parts: Sequence[str]) -> Slot | None:
    """The (container, key) a path without wildcards reaches, or None: ``locate`` without
    the lists, for the paths that name one value (most of them)."""
    node = root
    key: Any = None
    for i, part in enumerate(parts):
        if i:
            node = node[key]
        if isinstance(node, dict):
            if part not in node:
                return None
            key = part
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            key = int(part)
        else:
            return None
    return (node, key) if parts else None


def remove(root: Any, parts: Sequence[str]) -> int:
    """Delete what ``parts`` reaches; return how many values went."""
    if WILDCARD not in parts:
        one = slot(root, parts)
        if one is None:
            return 0
        del one[0][one[1]]
        return 1
    found = locate(root, parts)
    indexed: list[Slot] = []
    for container, key in found:
        if isinstance(container, dict):
            del container[key]
        else:
            indexed.append((container, key))
    for container, index in sorted(indexed, key=lambda slot: slot[1], reverse=True):
        del container[index]  # highest index first, so the others stay valid
    return len(found)


def replace(root: Any, parts: Sequence[str], change: Callable[[Any], Any]) -> int:
    """Replace each value ``parts`` reaches by ``change(value)``; return how many."""
    if WILDCARD not in parts:
        one = slot(root, parts)
        if one is None:
            return 0
        container, key = one
        container[key] = change(container[key])
        return 1
    found = locate(root, parts)
    for container, key in found:
        container[key] = change(container[key])
    return len(found)


def keep_only(root: Any, parent: Sequence[str], keys: frozenset[str]) -> int:
    """In each object ``parent`` reaches (the root when empty), delete every key not in ``keys``."""
    objects = [root] if not parent else [c[k] for c, k in locate(root, parent)]
    removed = 0
    for obj in objects:
        if isinstance(obj, dict):
            for key in [k for k in obj if k not in keys]:
                del obj[key]
                removed += 1
    return removed


_encode = msgspec.json.Encoder().encode
MAX_CHANGED_PATHS = 20


def leaves(value: Any, prefix: str = "") -> dict[str, bytes]:
    """Each leaf of a message by its dotted path, its value encoded (to compare, never shown)."""
    if isinstance(value, dict) and value:
        out: dict[str, bytes] = {}
        for key, item in value.items():
            out.update(leaves(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: _encode(value)}


def changed(before: dict[str, bytes], after: dict[str, bytes]) -> dict[str, list[str]]:
    """The paths removed, added and changed (the paths only: a removed value is never shown)."""
    change = {
        "removed": sorted(before.keys() - after.keys())[:MAX_CHANGED_PATHS],
        "added": sorted(after.keys() - before.keys())[:MAX_CHANGED_PATHS],
        "changed": sorted(k for k in before.keys() & after.keys()
                          if before[k] != after[k])[:MAX_CHANGED_PATHS],
    }
    return {k: v for k, v in change.items() if v}
