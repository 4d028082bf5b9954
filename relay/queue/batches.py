"""How a request's events are kept in one row of the queue file (pure: no SQLite here).

A request's accepted events become one row of the ``batches`` table (see
``relay.queue.store``): their encoded JSON bodies, as ingest's normalisation produced them,
concatenated and compressed with zstd when that pays, and beside them a small index, one
entry per event: its messageId, its type and its body's length. The events of a row have
consecutive ids, ``first`` to ``first + count - 1``, so a destination's cursor is still
one integer: the id of the last event it finished, wherever in a row that falls.

Storing the body once instead of a row per event is what makes a commit cheap: one
record and one index entry per request instead of a hundred (and a tenth of the bytes to
fsync on typical data).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import NamedTuple

import msgspec
import zstandard

from relay.types import Stored

RAW, ZSTD = 0, 1
COMPRESS_FROM = 512  # bytes: smaller bodies are kept as they are
MIN_GAIN = 0.9  # compressed only when it saves at least a tenth
ZSTD_LEVEL = 1
MAX_EVENTS = 4096  # events one row holds at most (a request larger than this takes several)
TYPE_CODES = {"identify": "i", "track": "t", "page": "p", "screen": "s", "group": "g", "alias": "a"}
CODE_TYPES = {code: kind for kind, code in TYPE_CODES.items()}

_index_encode = msgspec.msgpack.Encoder().encode
_index_decode = msgspec.msgpack.Decoder(tuple[list[str], str, list[int]]).decode
_local = threading.local()


class Packed(NamedTuple):
    """One row to insert, every column but ``first`` (given by the queue when it inserts)."""

    events: int
    received_at: float
    write_key: str
    target: str | None
    ids: bytes
    body: bytes
    codec: int
    raw_bytes: int  # the bodies' size before compression


def _compressor() -> zstandard.ZstdCompressor:
    found: zstandard.ZstdCompressor | None = getattr(_local, "compressor", None)
    if found is None:
        found = _local.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return found


def _decompressor() -> zstandard.ZstdDecompressor:
    found: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if found is None:
        found = _local.decompressor = zstandard.ZstdDecompressor()
    return found


def pack(received_at: float, write_key: str, message_ids: Sequence[str], types: Sequence[str],
         bodies: Sequence[bytes], target: str | None = None) -> Packed:
    """One row for events that share their arrival (time, write key) and target."""
    raw = b"".join(bodies)
    index = _index_encode((list(message_ids), "".join([TYPE_CODES.get(t, "t") for t in types]),
                           [len(b) for b in bodies]))
    body, codec = raw, RAW
    if len(raw) >= COMPRESS_FROM:
        squeezed = _compressor().compress(raw)
        if len(squeezed) <= len(raw) * MIN_GAIN:
            body, codec = squeezed, ZSTD
    return Packed(len(bodies), received_at, write_key, target, index, body, codec, len(raw))


def body_bytes(body: bytes, codec: int) -> bytes:
    """The concatenated bodies of a row, decompressed."""
    if codec == RAW:
        return bytes(body)
    if codec == ZSTD:
        return bytes(_decompressor().decompress(body))
    raise ValueError(f"unknown body codec {codec}")


def index_of(index: bytes) -> tuple[list[str], str, list[int]]:
    """(messageIds, type codes, body lengths) of a row."""
    return _index_decode(index)


def unpack(first: int, received_at: float, write_key: str, index: bytes, body: bytes, codec: int,
           after: int = 0, limit: int = MAX_EVENTS) -> list[Stored]:
    """The events of a row with an id above ``after``, at most ``limit`` of them."""
    message_ids, codes, sizes = _index_decode(index)
    data = body_bytes(body, codec)
    if len(message_ids) != len(sizes) or len(codes) != len(sizes) or sum(sizes) != len(data):
        raise ValueError("a queue row's index does not match its body")
    out: list[Stored] = []
    at = 0
    kinds = CODE_TYPES
    skip = max(0, after - first + 1)
    for i, size in enumerate(sizes):
        if i >= skip:
            out.append(Stored(first + i, received_at, write_key, message_ids[i], kinds.get(codes[i], "track"),
                              data[at:at + size]))
            if len(out) >= limit:
                break
        at += size
    return out
