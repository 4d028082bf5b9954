"""``relay check --connect`` against real servers on loopback: each destination opened with its
real credentials and asked something that changes nothing; a wrong credential is reported as
refused, a certificate the relay does not trust names the certificate problem, and no event
reaches any upstream. Each run is the CLI in a subprocess, as a user runs it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from relay.ops import connect
from tests.ops.checking import (
    BAD_KEY,
    GOOD_KEY,
    GOOD_TOKEN,
    AuthUpstream,
    config_file,
    run_check,
)
from tests.sinks.postgres_server import PASSWORD, PostgresServer
from tests.sinks.postgres_server import postgres as postgres  # the fixture, shared with the warehouse suites
from tests.sinks.postgres_server import postgres_ca as postgres_ca
from tests.sinks.postgres_server import postgres_tls as postgres_tls
from tests.support.nats_server import free_port

pytest_plugins = ["tests.support.fixtures"]
pytestmark = pytest.mark.slow


def http_destinations(url: str, key: str, token: str, suffix: str) -> str:
    return "\n".join([
        "[[destinations]]", f'name = "segment-{suffix}"', 'type = "segment"', f'endpoint = "{url}"',
        f'write_key = "{key}"',
        "[[destinations]]", f'name = "webhook-{suffix}"', 'type = "webhook"',
        f'options = {{ url = "{url}/hook", headers = {{ Authorization = "{token}" }} }}',
        "[[destinations]]", f'name = "amplitude-{suffix}"', 'type = "amplitude"', f'endpoint = "{url}"',
        f'options = {{ api_key = "{key}" }}',
        "[[destinations]]", f'name = "posthog-{suffix}"', 'type = "posthog"', f'endpoint = "{url}"',
        f'options = {{ api_key = "{key}" }}', "",
    ])


@pytest.fixture
async def upstream() -> AsyncIterator[AuthUpstream]:
    server = await AuthUpstream().start()
    yield server
    await server.stop()


async def test_http_destinations_with_their_keys_pass_and_no_event_is_sent(
        tmp_path: Path, upstream: AuthUpstream) -> None:
    path = config_file(tmp_path, http_destinations(upstream.url, GOOD_KEY, GOOD_TOKEN, "good"))
    run = await run_check(path)
    assert run.code == 0, run.stderr
    assert "config OK" in run.stderr
    for kind in ("segment", "webhook", "amplitude", "posthog"):
        assert f"({kind}): reachable; " in run.line(f"{kind}-good")
        assert "credentials not refused" in run.line(f"{kind}-good")
    # one request each, and not one event in any of them
    assert sorted((s.method, s.path) for s in upstream.seen) == [
        ("HEAD", "/hook"), ("POST", "/2/httpapi"), ("POST", "/batch/"), ("POST", "/v1/batch")]
    assert upstream.events_sent() == []
    assert [s.body for s in upstream.seen if s.path == "/v1/batch"] == [{"batch": [], "writeKey": GOOD_KEY}]
    assert GOOD_KEY not in run.stderr and GOOD_KEY not in run.stdout  # the key is masked everywhere


async def test_every_http_destination_with_a_wrong_key_is_named_refused(
        tmp_path: Path, upstream: AuthUpstream) -> None:
    path = config_file(tmp_path, http_destinations(upstream.url, GOOD_KEY, GOOD_TOKEN, "good")
                       + http_destinations(upstream.url, BAD_KEY, "Bearer wrong", "bad"))
    run = await run_check(path)
    assert run.code == 1
    for kind in ("segment", "webhook", "amplitude", "posthog"):
        assert f"({kind}): reachable; " in run.line(f"{kind}-good")
        assert f": {connect.REFUSED}:" in run.line(f"{kind}-bad")
    assert "401" in run.line("segment-bad") and "401" in run.line("webhook-bad")
    assert "Invalid API key" in run.line("amplitude-bad")
    assert "Project API key invalid" in run.line("posthog-bad")
    assert ("4 of 8 destinations failed the connection check: segment-bad, webhook-bad, amplitude-bad, "
            "posthog-bad") in run.stderr
    assert "config OK" not in run.stderr
    assert upstream.events_sent() == []
    assert BAD_KEY not in run.stderr
    assert "invalid write key ********" in run.line("segment-bad")  # the upstream echoed it: masked


async def test_a_redirect_or_a_5xx_fails_and_a_receiver_without_head_passes(
        tmp_path: Path, upstream: AuthUpstream) -> None:
    path = config_file(tmp_path, "\n".join(
        f'[[destinations]]\nname = "{name}"\ntype = "webhook"\noptions = {{ url = "{upstream.url}/{route}" }}'
        for name, route in (("moved", "moved"), ("broken", "broken"), ("post-only", "post-only"))) + "\n")
    run = await run_check(path)
    assert run.code == 1
    moved = run.line("moved")
    assert f": {connect.UPSTREAM_ERROR}:" in moved and "does not follow redirects" in moved
    assert "in-the-query" not in run.line("moved")  # the Location is shown without its query
    assert f": {connect.UPSTREAM_ERROR}:" in run.line("broken") and "503" in run.line("broken")
    assert "(webhook): reachable; HEAD was answered 405" in run.line("post-only")
    assert "credentials not checked" in run.line("post-only")


async def test_a_relay_upstream_accepts_its_write_key_and_refuses_another(
        tmp_path: Path, start_relay: Any) -> None:
    upstream = await start_relay(server={"write_keys": ["edge-key-1"]})
    path = config_file(tmp_path, "".join(
        f'[[destinations]]\nname = "{name}"\ntype = "segment"\nendpoint = "{upstream.url}"\n'
        f'write_key = "{key}"\n'
        for name, key in (("to-relay", "edge-key-1"), ("to-relay-wrong", "edge-key-2"))))
    run = await run_check(path)
    assert run.code == 1
    assert "credentials accepted" in run.line("to-relay")
    assert f": {connect.REFUSED}:" in run.line("to-relay-wrong") and "401" in run.line("to-relay-wrong")
    assert upstream.rows("SELECT count(*) FROM events") == [(0,)]
    assert upstream.rows("SELECT count(*) FROM dead_letters") == [(0,)]


# --- TLS ------------------------------------------------------------------------------------------


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_upstream(ca: trustme.CA) -> AsyncIterator[AuthUpstream]:
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server = await AuthUpstream(tls=context).start()
    yield server
    await server.stop()


async def test_https_upstream_passes_with_its_ca_and_fails_naming_the_certificate_without(
        tmp_path: Path, ca: trustme.CA, tls_upstream: AuthUpstream) -> None:
    path = config_file(tmp_path, http_destinations(tls_upstream.url, GOOD_KEY, GOOD_TOKEN, "tls"))
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))

    trusted = await run_check(path, env={"SSL_CERT_FILE": str(bundle)}, unset=("SSL_CERT_DIR",))
    assert trusted.code == 0, trusted.stderr
    assert "reachable over TLS;" in trusted.line("segment-tls")
    assert "reachable over TLS;" in trusted.line("webhook-tls")

    untrusted = await run_check(path, unset=("SSL_CERT_FILE", "SSL_CERT_DIR"))
    assert untrusted.code == 1
    for kind in ("segment", "webhook", "amplitude", "posthog"):
        line = untrusted.line(f"{kind}-tls")
        assert f": {connect.TLS_FAILED}:" in line and "certificate verify failed" in line, line
        assert "SSL_CERT_FILE" in line
    assert tls_upstream.events_sent() == []


# --- NATS -----------------------------------------------------------------------------------------


def nats_destination(name: str, url: str, **options: Any) -> str:
    return (f'[[destinations]]\nname = "{name}"\ntype = "nats"\n'
            f"options = {json.dumps({'servers': [url], **options})}\n").replace('": ', '" = ')


async def test_nats_with_its_token_is_accepted_and_with_another_refused(
        tmp_path: Path, nats_server: Any) -> None:
    server = nats_server('authorization { token: "nats-token-1234" }')
    token_file = tmp_path / "nats-token"
    token_file.write_text("nats-token-1234\n")
    dead = f"nats://127.0.0.1:{free_port()}"
    path = config_file(tmp_path, "".join([
        nats_destination("js", server.url, token_file=str(token_file)),
        nats_destination("js-stream", server.url, token_file=str(token_file), stream="EVENTS",
                         create_stream=True),
        nats_destination("js-missing-stream", server.url, token_file=str(token_file), stream="NOPE"),
        nats_destination("js-wrong", server.url, token="not-the-token"),
        nats_destination("js-down", dead, token="nats-token-1234"),
    ]))
    run = await run_check(path)
    assert run.code == 1
    assert "credentials accepted: JetStream's account info" in run.line("js")
    assert "'EVENTS' does not exist yet (the relay creates it" in run.line("js-stream")
    assert f": {connect.UPSTREAM_ERROR}:" in run.line("js-missing-stream")
    assert "no stream 'NOPE'" in run.line("js-missing-stream")
    wrong = run.line("js-wrong")
    assert f": {connect.REFUSED}:" in wrong and "Authorization Violation" in wrong
    assert f": {connect.UNREACHABLE}:" in run.line("js-down") and "Connection refused" in run.line("js-down")
    assert "3 of 5 destinations failed" in run.stderr
    assert "nats-token-1234" not in run.stderr and "not-the-token" not in run.stderr


async def test_nats_over_tls_passes_with_its_ca_and_fails_naming_the_certificate_without(
        tmp_path: Path, nats_server: Any, ca: trustme.CA) -> None:
    leaf = ca.issue_cert("127.0.0.1")
    cert, key, bundle = tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(bundle))
    server = nats_server(f'tls {{ cert_file: "{cert}", key_file: "{key}" }}')
    url = server.url.replace("nats://", "tls://")
    path = config_file(tmp_path, nats_destination("tls-trusted", url, tls_ca=str(bundle))
                       + nats_destination("tls-untrusted", url))
    run = await run_check(path, unset=("SSL_CERT_FILE", "SSL_CERT_DIR"))
    assert run.code == 1
    assert "over TLS; credentials accepted" in run.line("tls-trusted")
    line = run.line("tls-untrusted")
    assert f": {connect.TLS_FAILED}:" in line and "certificate verify failed" in line, line
    assert "options.tls_ca" in line


# --- PostgreSQL and Kafka ---------------------------------------------------------------------------




def postgres_destination(name: str, server: PostgresServer, **options: Any) -> str:
    fields = {"host": "127.0.0.1", "port": server.port, "user": "postgres", "ssl": "disable", **options}
    return (f'[[destinations]]\nname = "{name}"\ntype = "postgres"\n'
            f"options = {json.dumps(fields)}\n").replace('": ', '" = ')


async def test_postgres_with_its_password_is_accepted_and_with_another_refused(
        tmp_path: Path, postgres: PostgresServer) -> None:
    good = tmp_path / "pg-password"
    good.write_text(PASSWORD + "\n")
    path = config_file(tmp_path, "".join([
        postgres_destination("pg", postgres, password_file=str(good)),
        postgres_destination("pg-wrong", postgres, password_env="WRONG_PG_PASSWORD"),
        postgres_destination("pg-no-database", postgres, password_file=str(good), database="nope"),
    ]))
    run = await run_check(path, env={"WRONG_PG_PASSWORD": "not-the-password"})
    assert run.code == 1
    assert "credentials accepted: SELECT 1 answered" in run.line("pg")
    line = run.line("pg-wrong")
    assert f": {connect.REFUSED}:" in line and "password authentication failed" in line, line
    assert f": {connect.UPSTREAM_ERROR}:" in run.line("pg-no-database")
    assert '"nope" does not exist' in run.line("pg-no-database")
    assert PASSWORD not in run.stderr and "not-the-password" not in run.stderr


async def test_postgres_over_tls_passes_with_its_ca_and_its_name_and_fails_without_either(
        tmp_path: Path, postgres_tls: PostgresServer, postgres_ca: trustme.CA) -> None:
    """A server that takes logins over TLS only, its certificate naming ``localhost``: verified
    against its CA (PGSSLROOTCERT) by that name the login passes, and by address only with
    ``verify-ca``; ``verify-full`` by address, another CA, or no CA at all is TLS failed, with
    why; without TLS the server's refusal is named."""
    good = tmp_path / "pg-password"
    good.write_text(PASSWORD + "\n")
    path = config_file(tmp_path, "".join([
        postgres_destination("pg-tls", postgres_tls, password_file=str(good), ssl="verify-full",
                             host="localhost"),
        postgres_destination("pg-by-address", postgres_tls, password_file=str(good), ssl="verify-full"),
        postgres_destination("pg-verify-ca", postgres_tls, password_file=str(good), ssl="verify-ca"),
        postgres_destination("pg-plain", postgres_tls, password_file=str(good), ssl="disable"),
    ]))
    ours, other = tmp_path / "ca.pem", tmp_path / "other-ca.pem"
    postgres_ca.cert_pem.write_to_path(str(ours))
    trustme.CA().cert_pem.write_to_path(str(other))
    run = await run_check(path, env={"PGSSLROOTCERT": str(ours)})
    assert run.code == 1
    assert "credentials accepted: SELECT 1 answered" in run.line("pg-tls")
    assert "credentials accepted: SELECT 1 answered" in run.line("pg-verify-ca")
    line = run.line("pg-by-address")
    assert f": {connect.TLS_FAILED}:" in line and "certificate verify failed" in line, line
    assert "127.0.0.1" in line.split("certificate verify failed", 1)[1], line  # the name it does not give
    line = run.line("pg-plain")
    assert f": {connect.REFUSED}:" in line and "no encryption" in line, line
    run = await run_check(path, env={"PGSSLROOTCERT": str(other)})
    line = run.line("pg-tls")
    assert f": {connect.TLS_FAILED}:" in line and "certificate verify failed" in line, line
    home = tmp_path / "home"  # no ~/.postgresql/root.crt
    home.mkdir()
    run = await run_check(path, env={"HOME": str(home)}, unset=("PGSSLROOTCERT",))
    line = run.line("pg-tls")
    assert f": {connect.TLS_FAILED}:" in line and "root.crt" in line and "does not exist" in line, line
    assert PASSWORD not in run.stderr


async def test_kafka_metadata_from_a_broker_and_none_from_a_dead_port(tmp_path: Path, tansu: Any) -> None:
    path = config_file(tmp_path, "".join(
        f'[[destinations]]\nname = "{name}"\ntype = "kafka"\n'
        f'options = {{ bootstrap_servers = ["{address}"], topic = "events", idempotent = false }}\n'
        for name, address in (("kafka", tansu.address), ("kafka-down", f"127.0.0.1:{free_port()}"))))
    run = await run_check(path)
    assert run.code == 1
    assert "metadata of 1 broker(s)" in run.line("kafka")
    assert "the topic 'events' does not exist yet" in run.line("kafka")
    assert f": {connect.UNREACHABLE}:" in run.line("kafka-down")
