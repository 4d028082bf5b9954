"""Request bodies: encodings, the caps before and after decompression, JSON whatever the type."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from typing import Any

import pytest

from relay.ingest.bodies import MAX_REQUEST_BYTES, decompress, parse_json
from relay.ingest.responses import Rejection

DOC = json.dumps({"batch": [{"type": "track", "userId": "u", "event": "E"}]}).encode()


def rejected(fn: Any, *args: Any) -> Rejection:
    with pytest.raises(Rejection) as caught:
        fn(*args)
    return caught.value


def json_of(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes."""
    head, tail = b'{"pad": "', b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


# --- decompress -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("", lambda b: b),
        ("identity", lambda b: b),
        ("gzip", gzip.compress),
        ("GZIP", gzip.compress),
        (" gzip ", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("gzip", zlib.compress),
        ("deflate", gzip.compress),
    ],
    ids=["none", "identity", "gzip", "upper-case", "padded", "x-gzip", "deflate", "zlib-labelled-gzip",
         "gzip-labelled-deflate"],
)
def test_supported_encodings_give_back_the_body(encoding, encode):
    assert decompress(encode(DOC), encoding) == DOC


def test_a_gzip_body_of_several_members_is_read_whole():
    first, second = DOC[: len(DOC) // 2], DOC[len(DOC) // 2:]
    assert decompress(gzip.compress(first) + gzip.compress(second), "gzip") == DOC


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, br"])
def test_an_unsupported_encoding_is_a_415_naming_it(encoding):
    error = rejected(decompress, DOC, encoding)
    assert (error.status, error.code, error.message) == (
        415, "unsupported_encoding", f"Content-Encoding {encoding!r} is not supported")


def test_bytes_that_are_not_gzip_are_a_400():
    error = rejected(decompress, DOC, "gzip")
    assert (error.status, error.code) == (400, "invalid_encoding")
    assert error.message.startswith("body is not valid gzip: ")


def test_a_truncated_gzip_body_is_a_400():
    data = gzip.compress(DOC * 20)
    error = rejected(decompress, data[:-12], "gzip")
    assert (error.status, error.code, error.message) == (400, "invalid_encoding", "gzip body is truncated")


def test_a_body_that_inflates_to_exactly_the_cap_is_accepted():
    data = json_of(MAX_REQUEST_BYTES)
    assert decompress(gzip.compress(data), "gzip") == data


@pytest.mark.parametrize("inflated", [MAX_REQUEST_BYTES + 1, 20 * MAX_REQUEST_BYTES],
                         ids=["one-byte-over", "bomb"])
def test_a_body_that_inflates_past_the_cap_is_a_400(inflated):
    data = gzip.compress(b"0" * inflated, compresslevel=9)
    assert len(data) * 100 < inflated
    error = rejected(decompress, data, "gzip")
    assert (error.status, error.code, error.message) == (
        400, "request_too_large", "decompressed request body is larger than 512000 bytes")


def test_members_that_together_inflate_past_the_cap_are_a_400():
    member = gzip.compress(b" " * (MAX_REQUEST_BYTES // 2))
    assert len(decompress(member * 2, "gzip")) == MAX_REQUEST_BYTES
    error = rejected(decompress, member * 3, "gzip")
    assert (error.status, error.code) == (400, "request_too_large")


# --- parse_json -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"a": 1}', {"a": 1}),
        (b' \n{"a": [1, "x"]}\n ', {"a": [1, "x"]}),
        (b'\xef\xbb\xbf{"a": 1}', {"a": 1}),
        ('{"name": "Zoë ✓"}'.encode(), {"name": "Zoë ✓"}),
        (b"[1]", [1]),
    ],
    ids=["object", "whitespace", "utf8-bom", "unicode", "array"],
)
def test_json_is_decoded(data, expected):
    assert parse_json(data) == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "request body is empty"),
        (b" \r\n\t", "request body is empty"),
        (b"\xef\xbb\xbf", "request body is empty"),
        (b'{"a": ', "request body is not valid JSON: "),
        (b"userId=u&event=E", "request body is not valid JSON: "),
        (b'{"a": "\xff\xfe"}', "request body is not valid JSON: "),
        (b'{"a": 1} {"b": 2}', "request body is not valid JSON: "),
    ],
    ids=["empty", "blank", "bom-only", "cut-off", "form-encoded", "not-utf8", "two-documents"],
)
def test_a_body_that_is_not_json_is_a_400(data, message):
    error = rejected(parse_json, data)
    assert (error.status, error.code) == (400, "invalid_json")
    if message.endswith(": "):
        assert error.message.startswith(message) and len(error.message) > len(message)
    else:
        assert error.message == message


# --- over the wire ---------------------------------------------------------------------------------


async def raw_exchange(port: int, head: bytes, body: bytes = b"") -> tuple[int, dict[str, Any]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        headers: dict[str, str] = {}
        while (line := await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        payload = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
        return int(status_line.split()[1]), json.loads(payload)
    finally:
        writer.close()


async def test_a_declared_length_over_the_cap_is_refused_before_the_body_is_sent(relay):
    head = (b"POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 50000000\r\n\r\n")
    status, body = await raw_exchange(relay.relay.port, head)
    assert (status, body) == (400, {"success": False, "code": "request_too_large",
                                    "message": "request body is larger than 512000 bytes",
                                    "error": "request body is larger than 512000 bytes"})


async def test_a_non_utf8_body_is_a_400_not_a_500(relay):
    status, body, _ = await relay.post("/v1/track", data=b'{"userId": "\xff", "event": "E"}')
    assert status == 400
    assert body["code"] == "invalid_json"
    assert relay.events() == []


async def test_a_body_with_a_utf8_bom_is_accepted(relay):
    status, body, _ = await relay.post("/v1/track", data=b'\xef\xbb\xbf{"userId": "u", "event": "BOM"}')
    assert (status, body) == (200, {"success": True})
    assert [e["event"] for e in relay.events()] == ["BOM"]


async def test_a_multi_member_gzip_batch_is_stored_whole(relay):
    doc = json.dumps({"batch": [{"type": "track", "userId": "u", "event": f"E{i}"} for i in range(40)]})
    cut = len(doc) // 3
    data = b"".join(gzip.compress(part.encode()) for part in (doc[:cut], doc[cut:2 * cut], doc[2 * cut:]))
    status, body, _ = await relay.post("/v1/batch", data=data, headers={"Content-Encoding": "gzip"})
    assert (status, body["accepted"]) == (200, 40)
    assert [e["event"] for e in relay.events()] == [f"E{i}" for i in range(40)]
