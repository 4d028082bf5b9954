"""Fixtures that start real brokers, loaded with ``pytest_plugins = ["tests.support.fixtures"]``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.nats_server import NatsServer
from tests.support.tansu import Tansu


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[Callable[..., NatsServer]]:
    """``nats_server(extra="...")`` -> a started NatsServer; every one stopped at teardown."""
    made: list[NatsServer] = []

    def make(extra: str = "", start: bool = True) -> NatsServer:
        server = NatsServer(tmp_path / f"nats{len(made)}", extra)
        made.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in made:
        server.kill()


@pytest.fixture
def tansu(tmp_path: Path) -> Iterator[Tansu]:
    """A started Tansu broker, killed at teardown."""
    broker = Tansu(tmp_path / "tansu")
    broker.start()
    yield broker
    broker.kill()
