"""Fixtures for the warehouse suites: a real PostgreSQL server per module that asks for one."""

from __future__ import annotations

from tests.sinks.postgres_server import postgres

__all__ = ["postgres"]
