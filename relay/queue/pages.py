"""A damaged queue file read page by page, without SQLite (https://www.sqlite.org/fileformat2.html).

SQLite refuses a file whose header is zeroed and stops a table scan at the first page it
cannot read, so ``relay recover`` reads the file format itself, as ``sqlite3 .recover``
does (Python's sqlite3 module has no recovery extension, and the relay does not depend on
a CLI): ``Image`` is the file's pages with the committed frames of its ``-wal`` laid over
them (page size from the header, else from the WAL, else found from the pages
themselves); ``Tree`` walks one b-tree from its root, yields every record it can decode,
and keeps the key ranges of subtrees it could not reach, which ``orphans`` then looks for
among table leaf pages nothing else claimed (not on the free list, not visited).
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAGIC = b"SQLite format 3\x00"
HEADER_BYTES = 100
WAL_MAGIC = (0x377F0682, 0x377F0683)
WAL_HEADER, WAL_FRAME_HEADER = 32, 24
INDEX_INTERIOR, TABLE_INTERIOR, INDEX_LEAF, TABLE_LEAF = 2, 5, 10, 13
KINDS = (INDEX_INTERIOR, TABLE_INTERIOR, INDEX_LEAF, TABLE_LEAF)
PAGE_SIZES = (4096, 512, 1024, 2048, 8192, 16384, 32768, 65536)
SIZE_PROBE_PAGES = 256
Record = tuple[Any, ...]
Range = tuple[int | None, int | None]  # (low, high]: keys above low up to high; None is open


def _u16(data: bytes | mmap.mmap, at: int) -> int:
    return int.from_bytes(data[at:at + 2], "big")


def _u32(data: bytes | mmap.mmap, at: int) -> int:
    return int.from_bytes(data[at:at + 4], "big")


def varint(data: bytes, at: int) -> tuple[int, int]:
    """(value, next offset); an IndexError past the end of ``data``."""
    value = 0
    for i in range(8):
        byte = data[at + i]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, at + i + 1
    return (value << 8) | data[at + 8], at + 9


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


_INT_SIZES = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8}


def record(payload: bytes) -> Record | None:
    """The values of one record, or None when its header and body do not add up."""
    try:
        header_end, at = varint(payload, 0)
        types = []
        while at < header_end:
            kind, at = varint(payload, at)
            types.append(kind)
        if at != header_end:
            return None
        values: list[Any] = []
        at = header_end
        for kind in types:
            if kind == 0:
                values.append(None)
            elif kind in _INT_SIZES:
                size = _INT_SIZES[kind]
                if at + size > len(payload):
                    return None
                values.append(int.from_bytes(payload[at:at + size], "big", signed=True))
                at += size
            elif kind == 7:
                if at + 8 > len(payload):
                    return None
                values.append(struct.unpack(">d", payload[at:at + 8])[0])
                at += 8
            elif kind in (8, 9):
                values.append(kind - 8)
            elif kind >= 12:
                size = (kind - 12) // 2
                if at + size > len(payload):
                    return None
                chunk = bytes(payload[at:at + size])
                values.append(chunk if kind % 2 == 0 else chunk.decode("utf-8"))
                at += size
            else:
                return None  # 10 and 11 are reserved
        return tuple(values) if at == len(payload) else None
    except (IndexError, UnicodeDecodeError):
        return None


class Image:
    """The pages of a database file as SQLite would see them after reading its WAL."""

    def __init__(self, main: mmap.mmap | bytes, wal: mmap.mmap | bytes, page_size: int, reserved: int,
                 frames: dict[int, int], page_count: int, header_ok: bool) -> None:
        self._main, self._wal, self._frames = main, wal, frames
        self.page_size, self.usable = page_size, page_size - reserved
        self.page_count, self.header_ok = page_count, header_ok

    @classmethod
    @contextmanager
    def open(cls, path: str) -> Iterator[Image]:
        with _mapped(Path(path)) as main, _mapped(Path(path + "-wal")) as wal:
            header_ok = main[:16] == MAGIC
            wal_size = _wal_page_size(wal)
            if header_ok:
                page_size = _u16(main, 16)
                page_size = 65536 if page_size == 1 else page_size
                reserved = main[20]
                if page_size not in PAGE_SIZES or reserved > 32:
                    header_ok, page_size, reserved = False, wal_size or _guess_page_size(main), 0
            else:
                page_size, reserved = wal_size or _guess_page_size(main), 0
            frames, wal_pages = _wal_frames(wal, page_size)
            page_count = wal_pages or len(main) // page_size
            yield cls(main, wal, page_size, reserved, frames, page_count, header_ok)

    def page(self, number: int) -> bytes | None:
        """Page ``number`` (from 1), or None when the file ends before it."""
        if number < 1 or number > self.page_count:
            return None
        size = self.page_size
        if number in self._frames:
            at = self._frames[number]
            return bytes(self._wal[at:at + size])
        at = (number - 1) * size
        if at + size > len(self._main):
            return None
        return bytes(self._main[at:at + size])

    def header(self) -> bytes | None:
        first = self.page(1)
        return first[:HEADER_BYTES] if first is not None and first[:16] == MAGIC else None

    def free_pages(self) -> set[int]:
        """Pages on the free list (empty when the header is lost: nothing says which)."""
        header = self.header()
        free: set[int] = set()
        if header is None:
            return free
        trunk, seen = _u32(header, 32), set()
        while trunk and trunk not in seen and (page := self.page(trunk)) is not None:
            seen.add(trunk)
            free.add(trunk)
            count = min(_u32(page, 4), (self.usable - 8) // 4)
            free.update(_u32(page, 8 + 4 * i) for i in range(count))
            trunk = _u32(page, 0)
        return free

    def local_size(self, payload: int, table_leaf: bool) -> int:
        usable = self.usable
        most = usable - 35 if table_leaf else (usable - 12) * 64 // 255 - 23
        if payload <= most:
            return payload
        least = (usable - 12) * 32 // 255 - 23
        keep = least + (payload - least) % (usable - 4)
        return keep if keep <= most else least

    def overflow(self, first: int, need: int) -> bytes | None:
        """``need`` bytes from the overflow chain starting at page ``first``."""
        out, seen = bytearray(), set()
        page_number = first
        while len(out) < need:
            if page_number in seen or (page := self.page(page_number)) is None:
                return None
            seen.add(page_number)
            out += page[4:self.usable][:need - len(out)]
            page_number = _u32(page, 0)
        return bytes(out)


@contextmanager
def _mapped(path: Path) -> Iterator[mmap.mmap | bytes]:
    if not path.exists() or path.stat().st_size == 0:
        yield b""
        return
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
        yield view


def _wal_page_size(wal: mmap.mmap | bytes) -> int:
    if len(wal) < WAL_HEADER or _u32(wal, 0) not in WAL_MAGIC:
        return 0
    size = _u32(wal, 8)
    return size if size in PAGE_SIZES else 0


def _wal_checksum(data: bytes, big: bool, s0: int, s1: int) -> tuple[int, int]:
    words = struct.unpack(f"{'>' if big else '<'}{len(data) // 4}I", data)
    mask = 0xFFFFFFFF
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & mask
        s1 = (s1 + words[i + 1] + s0) & mask
    return s0, s1


def _wal_frames(wal: mmap.mmap | bytes, page_size: int) -> tuple[dict[int, int], int]:
    """Where each page's newest committed frame starts in the WAL, and the database's size
    in pages after the last commit (0 without a valid WAL). Frames are taken as SQLite
    takes them: salts equal to the header's and a running checksum that holds, up to the
    last commit frame."""
    if len(wal) < WAL_HEADER or _u32(wal, 0) not in WAL_MAGIC or _u32(wal, 8) != page_size:
        return {}, 0
    big = _u32(wal, 0) == WAL_MAGIC[1]
    s0, s1 = _wal_checksum(bytes(wal[:24]), big, 0, 0)
    if (s0, s1) != (_u32(wal, 24), _u32(wal, 28)):
        return {}, 0
    salts = bytes(wal[16:24])
    committed: dict[int, int] = {}
    pending: dict[int, int] = {}
    size = 0
    at = WAL_HEADER
    while at + WAL_FRAME_HEADER + page_size <= len(wal):
        head = bytes(wal[at:at + WAL_FRAME_HEADER])
        if head[8:16] != salts:
            break
        s0, s1 = _wal_checksum(head[:8], big, s0, s1)
        body = at + WAL_FRAME_HEADER
        s0, s1 = _wal_checksum(bytes(wal[body:body + page_size]), big, s0, s1)
        if (s0, s1) != (_u32(head, 16), _u32(head, 20)):
            break
        pending[_u32(head, 0)] = body
        if _u32(head, 4):
            committed.update(pending)
            pending, size = {}, _u32(head, 4)
        at += WAL_FRAME_HEADER + page_size
    return committed, size


def _looks_like_btree(page: bytes | mmap.mmap, at: int, size: int) -> bool:
    kind = page[at]
    if kind not in KINDS:
        return False
    header = 12 if kind in (INDEX_INTERIOR, TABLE_INTERIOR) else 8
    cells, content = _u16(page, at + 3), _u16(page, at + 5) or 65536
    return at + header + 2 * cells <= content <= size


def _guess_page_size(main: mmap.mmap | bytes) -> int:
    """The page size of a file whose header is lost: the smallest size at whose boundaries
    nearly as many b-tree pages begin as at the best size's (a multiple of the true size
    scores as well; a fraction of it lands inside pages)."""
    scores: dict[int, float] = {}
    for size in PAGE_SIZES:
        count = min(len(main) // size, SIZE_PROBE_PAGES)
        if count < 2:
            continue
        hits = sum(_looks_like_btree(main[k * size:(k + 1) * size], 0, size) for k in range(1, count))
        hits += _looks_like_btree(main[:size], HEADER_BYTES, size)
        scores[size] = hits / count
    if not scores or max(scores.values()) == 0:
        return PAGE_SIZES[0]
    best = max(scores.values())
    return min(size for size, score in scores.items() if score >= 0.9 * best)


@dataclass(slots=True)
class Leaf:
    """What one readable table leaf held: its cell count and the cells that did not decode
    (by position), so that rows lost inside a page are counted exactly."""
    cells: int
    lost: list[int] = field(default_factory=list)


class Tree:
    """One b-tree of ``image`` from its root page. ``rows()`` yields (key, record) in key
    order for a table (key: the rowid) and (None, record) for an index; afterwards
    ``broken`` holds the key ranges of subtrees that could not be read and ``leaves`` the
    table leaves that were."""

    def __init__(self, image: Image, root: int, accept: Callable[[Record], bool] = lambda r: True) -> None:
        self.image, self.root, self.accept = image, root, accept
        self.visited: set[int] = set()
        self.broken: list[Range] = []
        self.leaves: list[tuple[Range, Leaf]] = []

    def rows(self) -> Iterator[tuple[int | None, Record]]:
        stack: list[tuple[int, Range]] = [(self.root, (None, None))]
        while stack:
            number, bounds = stack.pop()
            page = None if number in self.visited else self.image.page(number)
            at = HEADER_BYTES if number == 1 else 0
            if page is None or not _looks_like_btree(page, at, self.image.usable):
                self.broken.append(bounds)
                continue
            self.visited.add(number)
            kind = page[at]
            if kind == TABLE_INTERIOR:
                stack.extend(reversed(self._children(page, at, bounds)))
            elif kind == TABLE_LEAF:
                yield from self._table_leaf(page, at, bounds)
            else:
                yield from self._index_page(page, at, kind, stack)

    def _pointers(self, page: bytes, at: int, header: int) -> list[int | None]:
        usable = self.image.usable
        out: list[int | None] = []
        for i in range(_u16(page, at + 3)):
            pointer = _u16(page, at + header + 2 * i)
            out.append(pointer if at + header <= pointer < usable else None)
        return out

    def _children(self, page: bytes, at: int, bounds: Range) -> list[tuple[int, Range]]:
        """Child pages with their key ranges; an undecodable cell joins its range to the
        next child's, which is then read but also counted as broken."""
        low, high = bounds
        children: list[tuple[int, Range]] = []
        lost = False
        for pointer in self._pointers(page, at, 12):
            try:
                if pointer is None:
                    raise IndexError
                child = _u32(page, pointer)
                key, _ = varint(page, pointer + 4)
                key = _signed(key)
                if (low is not None and key <= low) or (high is not None and key > high) or not child:
                    raise IndexError
            except IndexError:
                lost = True
                continue
            if lost:
                self.broken.append((low, key))
                lost = False
            children.append((child, (low, key)))
            low = key
        if lost:
            self.broken.append((low, high))
        children.append((_u32(page, at + 8), (low, high)))
        return children

    def _table_leaf(self, page: bytes, at: int, bounds: Range) -> Iterator[tuple[int | None, Record]]:
        low, high = bounds
        image = self.image
        pointers = self._pointers(page, at, 8)
        leaf = Leaf(len(pointers))
        self.leaves.append((bounds, leaf))
        previous = low
        for position, pointer in enumerate(pointers):
            row = None
            try:
                if pointer is not None:
                    size, cursor = varint(page, pointer)
                    key, cursor = varint(page, cursor)
                    key = _signed(key)
                    local = image.local_size(size, table_leaf=True)
                    payload = page[cursor:cursor + local]
                    if len(payload) == local and cursor + local <= image.usable:
                        if local < size:
                            rest = image.overflow(_u32(page, cursor + local), size - local)
                            payload = payload + rest if rest is not None else b""
                        row = record(payload) if len(payload) == size else None
                        in_range = (previous is None or key > previous) and (high is None or key <= high)
                        if row is not None and (not in_range or not self.accept(row)):
                            row = None
            except IndexError:
                row = None
            if row is None:
                leaf.lost.append(position)
                continue
            previous = key
            yield key, row

    def _index_page(self, page: bytes, at: int, kind: int,
                    stack: list[tuple[int, Range]]) -> Iterator[tuple[int | None, Record]]:
        """An index page's entries (an interior cell's key is an entry too); its children
        are read after it (an index is only read whole here, never by range)."""
        interior = kind == INDEX_INTERIOR
        for pointer in self._pointers(page, at, 12 if interior else 8):
            try:
                if pointer is None:
                    continue
                cursor = pointer
                if interior:
                    stack.append((_u32(page, cursor), (None, None)))
                    cursor += 4
                size, cursor = varint(page, cursor)
                local = self.image.local_size(size, table_leaf=False)
                payload = page[cursor:cursor + local]
                if local < size:
                    rest = self.image.overflow(_u32(page, cursor + local), size - local)
                    payload = payload + rest if rest is not None else b""
                row = record(payload) if len(payload) == size else None
                if row is not None and self.accept(row):
                    yield None, row
            except IndexError:
                continue
        if interior:
            stack.append((_u32(page, at + 8), (None, None)))


def orphans(image: Image, claimed: set[int], ranges: list[Range],
            accept: Callable[[Record], bool]) -> Iterator[tuple[int, Record]]:
    """Rows of table leaf pages nobody claimed (not visited by any walk, not free) whose
    key falls in one of ``ranges`` and whose record ``accept`` takes: the pages under
    interior pages that were lost."""
    if not ranges:
        return
    for number in range(2, image.page_count + 1):
        if number in claimed:
            continue
        page = image.page(number)
        if page is None or page[0] != TABLE_LEAF or not _looks_like_btree(page, 0, image.usable):
            continue
        probe = Tree(image, number, accept)
        for key, row in probe._table_leaf(page, 0, (None, None)):
            if key is not None and any((lo is None or key > lo) and (hi is None or key <= hi)
                                       for lo, hi in ranges):
                yield key, row
