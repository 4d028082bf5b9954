"""Malformed input, generated: the relay never crashes, never answers 5xx for a client's
mistake, and never stores a partial or unnormalised event."""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import RelayProcess
from tests.support import queuefile

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
ROUTES = ["/v1/track", "/v1/identify", "/v1/batch", "/v1/import", "/v1/t", "/v1/b", "/v1/page", "/v1/alias"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
messages = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["track", "identify", "page", "screen", "group", "alias", "bogus", ""])
        | json_values,
        "userId": st.text(max_size=10) | st.integers() | json_values,
        "anonymousId": st.text(max_size=10) | json_values,
        "event": st.text(max_size=10) | json_values,
        "messageId": st.text(max_size=120) | json_values,
        "timestamp": st.sampled_from(["2024-01-01T00:00:00Z", "yesterday", "", "2024-13-45T99:00:00Z"])
        | json_values,
        "sentAt": st.sampled_from(["2024-01-01T00:00:05.000Z", "nope"]) | json_values,
        "context": json_values,
        "integrations": json_values,
        "properties": json_values,
        "groupId": json_values,
        "previousId": json_values,
    },
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, RelayProcess]]:
    folder = tmp_path_factory.mktemp("fuzz")
    config = folder / "relay.toml"
    config.write_text(f'[server]\nport = 0\n[queue]\npath = "{folder / "q.db"}"\ndurability = "os"\n'
                      '[admin]\nenabled = false\n')
    proc = RelayProcess(config)
    port = proc.start()
    yield port, folder / "q.db", proc
    proc.kill()


def send(port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status >= 400:
            parsed: Any = json.loads(data)
            assert parsed["success"] is False and parsed["code"] and parsed["message"] and parsed["error"]
        return resp.status
    finally:
        conn.close()


def assert_alive_and_clean(port: int, db: Path, proc: RelayProcess) -> None:
    assert proc.proc is not None and proc.proc.poll() is None, "the relay died"
    assert send(port, "POST", "/v1/track", json.dumps({"userId": "probe", "event": "alive"}).encode()) == 200
    conn = queuefile.connect(db)
    try:
        for (body,) in conn.execute("SELECT body FROM events"):
            event = json.loads(body)
            assert event["type"] in {"track", "identify", "page", "screen", "group", "alias"}
            assert event["messageId"] and event["receivedAt"] and event["timestamp"]
            assert event.get("userId") not in (None, "") or event.get("anonymousId") not in (None, "")
    finally:
        conn.close()


@FUZZ
@given(route=st.sampled_from(ROUTES), body=st.binary(max_size=400))
def test_arbitrary_bytes_are_answered_4xx_never_5xx(server, route, body):
    port, _, proc = server
    status = send(port, "POST", route, body, {"Content-Type": "text/plain"})
    assert status in (200, 400), status
    assert proc.proc is not None and proc.proc.poll() is None


@FUZZ
@given(route=st.sampled_from(ROUTES), message=messages, wrap=st.booleans(), compress=st.booleans())
def test_generated_messages_are_stored_whole_or_refused_with_a_reason(server, route, message, wrap, compress):
    port, _, proc = server
    payload: Any = {"batch": [message], "context": {"library": {"name": "fuzz"}}} if wrap else message
    data = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if compress:
        data = gzip.compress(data)
        headers["Content-Encoding"] = "gzip"
    status = send(port, "POST", route, data, headers)
    assert status in (200, 400), status
    assert proc.proc is not None and proc.proc.poll() is None


@FUZZ
@given(kind=st.text(max_size=10), data=st.binary(max_size=200), params=st.dictionaries(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz.", min_size=1, max_size=12), st.text(max_size=12),
    max_size=5))
def test_pixel_always_answers_a_gif_or_a_json_error(server, kind, data, params):
    from urllib.parse import quote, urlencode

    port, _, _ = server
    query = urlencode({**params, "data": base64.b64encode(data).decode()}) if data else urlencode(params)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", f"/v1/pixel/{quote(kind, safe='')}?{query}")
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status < 500
    if resp.status == 200:
        assert resp.getheader("Content-Type") == "image/gif" and body.startswith(b"GIF89a")


@FUZZ
@given(head=st.binary(min_size=1, max_size=300))
def test_garbage_request_heads_do_not_crash_the_relay(server, head):
    port, _, proc = server
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head + b"\r\n\r\n")
        try:
            answer = sock.recv(64)
        except (TimeoutError, ConnectionResetError):
            answer = b""
    if answer.startswith(b"HTTP/1.1 5"):
        raise AssertionError(answer)
    assert proc.proc is not None and proc.proc.poll() is None


def test_after_fuzzing_the_relay_is_alive_and_every_stored_event_is_whole(server):
    port, db, proc = server
    assert_alive_and_clean(port, db, proc)
