"""Request boundaries read from the bytes alone, so that each head gets its own deadline."""

from __future__ import annotations

import json

import pytest

from relay.ingest.guard import CHUNKED, MAX_CHUNKS, Framing, as_json_error, content_length

HEAD = b"POST /v1/track HTTP/1.1\r\nHost: r\r\nContent-Length: 2\r\n\r\n"
GET = b"GET /v1/pixel/track?userId=u HTTP/1.1\r\nHost: r\r\n\r\n"
CHUNKED_HEAD = b"POST /v1/track HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked\r\n\r\n"
CHUNKED_BODY = b"2\r\n{\"\r\n1a;ext=1\r\n" + b"x" * 26 + b"\r\n0\r\n\r\n"


@pytest.mark.parametrize(("head", "expected"), [
    (b"GET / HTTP/1.1\r\nHost: r", 0),
    (b"POST / HTTP/1.1\r\nContent-Length: 17", 17),
    (b"POST / HTTP/1.1\r\ncontent-length:  5 ", 5),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked", CHUNKED),
    (b"POST / HTTP/1.1\r\ntransfer-encoding:  Chunked ", CHUNKED),
    # a coding list is chunked when its last coding is, as aiohttp reads it
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked", CHUNKED),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: identity, chunked", CHUNKED),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip,CHUNKED\t", CHUNKED),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: ,chunked", CHUNKED),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity", None),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked,", None),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: identity", None),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked", None),
    (b"POST / HTTP/1.1\r\nContent-Length: 02", 2),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3", None),
    (b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3", None),
    (b"POST / HTTP/1.1\r\nContent-Length: -1", None),
    (b"POST / HTTP/1.1\r\nContent-Length: x", None),
])
def test_content_length_is_read_or_refused(head, expected):
    assert content_length(head) == expected


@pytest.mark.parametrize(("chunks", "state", "heads"), [
    ([HEAD + b"{}"], Framing.IDLE, (1, 1)),  # one whole request
    ([HEAD[:10], HEAD[10:30], HEAD[30:] + b"{"], Framing.BODY, (1, 1)),  # head in pieces, half a body
    ([HEAD + b"{}" + HEAD[:5]], Framing.HEAD, (2, 1)),  # the next request has begun
    ([HEAD + b"{}" + GET + GET], Framing.IDLE, (3, 3)),  # pipelined, bodiless GETs
    ([HEAD[:-2], b"\r\n{}\r\n"], Framing.IDLE, (1, 1)),  # CRLFCRLF split across reads; a stray CRLF
    ([CHUNKED_HEAD + CHUNKED_BODY], Framing.IDLE, (1, 1)),  # a whole chunked request
    ([CHUNKED_HEAD + CHUNKED_BODY + HEAD[:5]], Framing.HEAD, (2, 1)),  # and the next head begins
    ([CHUNKED_HEAD + CHUNKED_BODY + HEAD + b"{}"], Framing.IDLE, (2, 2)),
    # the same bytes a byte at a time: sizes, data, CRLFs and the last chunk split anywhere
    ([bytes([b]) for b in CHUNKED_HEAD + CHUNKED_BODY + HEAD[:5]], Framing.HEAD, (2, 1)),
    ([CHUNKED_HEAD + b"2\r\n{}"], Framing.CHUNK_DATA, (1, 1)),  # the chunk's CRLF still to come
    ([CHUNKED_HEAD + b"0\r\nX-Trailer: 1\r\n\r\n" + GET], Framing.IDLE, (2, 2)),  # trailers
    ([CHUNKED_HEAD + b"zz\r\n"], Framing.LOST, (1, 1)),  # not a hex size: aiohttp refuses it
    ([CHUNKED_HEAD + b"f" * 9000], Framing.LOST, (1, 1)),  # an endless size line
    ([b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n2\r\n{}"], Framing.LOST, (1, 1)),
    ([b"GET / HTTP/1.1\r\n" + b"X: " + b"y" * 70_000], Framing.LOST, (1, 0)),
    # a long head is cut to its framing lines and still followed to its end
    ([b"POST / HTTP/1.1\r\n" + b"X: y\r\n" * 20_000 + b"Content-Length: 2\r\n\r\n{}" + GET],
     Framing.IDLE, (2, 2)),
    ([b"POST / HTTP/1.1\r\nTransfer-Encoding: identity, chunked\r\n\r\n" + CHUNKED_BODY + GET],
     Framing.IDLE, (2, 2)),
])
def test_framing_follows_heads_and_bodies(chunks, state, heads):
    framing = Framing()
    started = ended = 0
    for chunk in chunks:
        s, e = framing.feed(chunk)
        started, ended = started + s, ended + e
    assert (framing.state, (started, ended)) == (state, heads)


def test_a_body_in_more_chunks_than_the_bound_is_flagged_without_reading_the_rest():
    framing = Framing()
    framing.feed(CHUNKED_HEAD + b"1\r\nx\r\n" * MAX_CHUNKS)
    assert framing.state == Framing.CHUNK_SIZE
    framing.feed(b"1\r\nx\r\n" * 100_000)
    assert framing.state == Framing.FLOODED


def test_aiohttps_text_error_answer_becomes_the_json_error_body():
    text = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: 44\r\nConnection: close\r\n\r\n"
            b"Duplicate 'Content-Length' header found.\n\n  x")
    head, _, body = as_json_error(text).partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 400 Bad Request"
    assert b"Content-Type: application/json" in head and b"Connection: close" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert json.loads(body) == {"success": False, "code": "bad_request",
                                "message": "Duplicate 'Content-Length' header found.",
                                "error": "Duplicate 'Content-Length' header found."}
    ours = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n\r\n{}"
    assert as_json_error(ours) == ours
