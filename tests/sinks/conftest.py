"""Fixtures for the warehouse suites: a real PostgreSQL server per module that asks for one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.sinks.postgres_server import PostgresServer


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
