"""Fixtures for the forwarding tests, loaded with ``pytest_plugins = ["tests.support.forwarding_fixtures"]``.

- ``upstreams``: starts FakeUpstreams and stops them all at teardown, checking that their
  ports no longer accept connections.
- ``leak_check``: after the test (and after every other fixture's teardown), no child
  process of the test runner is alive, no socket of the test runner is listening that was
  not listening before, and no asyncio task is left pending.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psutil
import pytest

from tests.support.forwarding import refuses
from tests.support.upstream import FakeUpstream


@pytest.fixture
async def upstreams() -> AsyncIterator[Callable[..., Awaitable[FakeUpstream]]]:
    """``await upstreams(script=[...], ...)`` -> a started FakeUpstream; all stopped at teardown."""
    made: list[FakeUpstream] = []

    async def make(*args: Any, **kwargs: Any) -> FakeUpstream:
        upstream = FakeUpstream(*args, **kwargs)
        await upstream.start()
        made.append(upstream)
        return upstream

    yield make
    for upstream in made:
        port = upstream.port
        await upstream.stop()
        assert port is not None and refuses(port), f"fake upstream still listens on {port}"


def _listening() -> set[tuple[str, int]]:
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process().net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN}


@pytest.fixture
async def leak_check() -> AsyncIterator[None]:
    """Request it first (``pytestmark = pytest.mark.usefixtures("leak_check")``) so that its
    teardown runs after the relay, upstream and subprocess fixtures have cleaned up."""
    me = psutil.Process()
    before = _listening()
    yield
    children = [c for c in me.children(recursive=True) if c.is_running() and c.status() != "zombie"]
    assert not children, f"processes left behind: {[c.cmdline() for c in children]}"
    left = _listening() - before
    assert not left, f"sockets still listening: {left}"
    current = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    assert not pending, f"asyncio tasks left pending: {pending}"
