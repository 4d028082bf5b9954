"""Reading a request body: size caps before and after decompression, JSON whatever the type."""

from __future__ import annotations

import asyncio
import logging
import zlib

import msgspec
from aiohttp import ClientPayloadError, web

from relay.ingest.responses import Rejection

MAX_REQUEST_BYTES = 500 * 1024
# Levels of objects and arrays a body may nest (the body's own object is level 1): deeper
# JSON is refused before it is decoded, as decoding, plugins and encoding recurse per level.
MAX_NESTING = 64
DEFAULT_BODY_TIMEOUT = 30.0
READ_CHUNK = 64 * 1024
_decode = msgspec.json.Decoder().decode
_GZIP_OR_ZLIB = 32 + zlib.MAX_WBITS
_GZIP_MAGIC = b"\x1f\x8b"
_UTF8_BOM = b"\xef\xbb\xbf"
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b'"[]{}')
_RUNS = (b"[" * (MAX_NESTING + 1), b"{" * (MAX_NESTING + 1))  # that many opened at once
_ENCODINGS = {"": None, "identity": None, "gzip": _GZIP_OR_ZLIB, "x-gzip": _GZIP_OR_ZLIB,
              "deflate": _GZIP_OR_ZLIB}

log = logging.getLogger(__name__)
# The body's size as read (a chunked body declares none), for the bytes-in metric.
BODY_BYTES = web.RequestKey("relay_body_bytes", int)


def too_large(what: str) -> Rejection:
    return Rejection(400, "request_too_large", f"{what} is larger than {MAX_REQUEST_BYTES} bytes")


async def read_raw(request: web.Request, timeout: float = DEFAULT_BODY_TIMEOUT) -> bytes:
    """The body as sent, refused past the cap without reading the rest, and refused when
    the client takes longer than ``timeout`` seconds to send it (a slow client)."""
    if request.content_length is not None and request.content_length > MAX_REQUEST_BYTES:
        raise too_large("request body")
    content = request.content
    if content.is_eof():  # the whole body came with the head (the usual case): nothing to wait for
        data = content.read_nowait()
        request[BODY_BYTES] = len(data)
        if len(data) > MAX_REQUEST_BYTES:
            raise too_large("request body")
        return data
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await content.read(READ_CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                request[BODY_BYTES] = size
                if size > MAX_REQUEST_BYTES:
                    raise too_large("request body")
                chunks.append(chunk)
    except TimeoutError:
        raise Rejection(408, "body_timeout", f"the request body did not arrive within {timeout:g} s",
                        {"Connection": "close"}) from None
    except (ConnectionError, ClientPayloadError) as exc:
        # the client went away mid-body: nothing to answer, nothing stored; not the relay's fault
        log.debug("client disconnected before its request body arrived",
                  extra={"path": request.path, "received_bytes": size, "error": str(exc)})
        raise Rejection(400, "client_disconnected", "the client closed the connection mid-body",
                        {"Connection": "close"}) from None
    return b"".join(chunks)


def decompress(raw: bytes, content_encoding: str) -> bytes:
    encoding = content_encoding.strip().lower()
    if encoding not in _ENCODINGS:
        raise Rejection(415, "unsupported_encoding", f"Content-Encoding {encoding!r} is not supported")
    wbits = _ENCODINGS[encoding]
    if wbits is None or not raw:
        return raw
    parts: list[bytes] = []
    size = 0
    while True:  # a gzip stream may hold several members, one after another (RFC 1952)
        inflater = zlib.decompressobj(wbits)
        try:
            part = inflater.decompress(raw, MAX_REQUEST_BYTES + 1 - size)
        except zlib.error as exc:
            raise Rejection(400, "invalid_encoding", f"body is not valid {encoding}: {exc}") from None
        parts.append(part)
        size += len(part)
        if size > MAX_REQUEST_BYTES or inflater.unconsumed_tail:
            raise too_large("decompressed request body")
        if not inflater.eof:
            raise Rejection(400, "invalid_encoding", f"{encoding} body is truncated")
        raw = inflater.unused_data
        if not raw.startswith(_GZIP_MAGIC):  # other trailing bytes are ignored, as before
            return b"".join(parts)


def too_deep(data: bytes, limit: int = MAX_NESTING) -> bool:
    """Whether the JSON in ``data`` nests objects and arrays deeper than ``limit`` levels.

    Read at C speed from the bytes, before anything decodes them: escaped backslashes and
    quotes are dropped, then every byte but quotes and brackets; a body with no more
    brackets than the limit (most single events) is done. Otherwise the strings go (an
    empty pair of quotes first, as most strings hold no bracket) and each pass removes the
    innermost pairs, exactly one level per pass. Invalid JSON may go either way: the
    decoder refuses it."""
    if b"\\" in data:
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = data.translate(None, _NOT_STRUCTURE)
    if len(structure) - structure.count(b'"') <= limit:
        return False
    structure = structure.replace(b'""', b"")  # joins two strings at worst: still strings
    if b'"' in structure:
        structure = b"".join(structure.split(b'"')[::2])
    if _RUNS[0] in structure or _RUNS[1] in structure:
        return True
    for _ in range(limit):
        # "0" marks a removed pair, so that a pair it leaves empty waits for the next pass
        shorter = structure.replace(b"[]", b"0").replace(b"{}", b"0").replace(b"0", b"")
        if not shorter or len(shorter) == len(structure):
            return False  # all of it within the limit (or unbalanced: the decoder says so)
        structure = shorter
    return True


def deep_json(what: str) -> Rejection:
    return Rejection(400, "nesting_too_deep",
                     f"{what} nests objects and arrays deeper than {MAX_NESTING} levels")


def parse_json(data: bytes) -> object:
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM):]
    if not data.strip():
        raise Rejection(400, "invalid_json", "request body is empty")
    if too_deep(data):
        raise deep_json("request body")
    try:
        return _decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise Rejection(400, "invalid_json", f"request body is not valid JSON: {exc}") from None
    except RecursionError:  # unbalanced brackets the nesting check left to the decoder
        raise deep_json("request body") from None
