"""The log backends a durability test runs against: the state's SQLite file or PostgreSQL.

PostgreSQL is the machine's server (127.0.0.1:5432, trust auth, database ``test``), as in
``tests/backends``; set ``PASARELA_TEST_POSTGRES`` to another URL (without ``schema``) to
use another server. Each test gets a schema of its own, dropped when it ends.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.log import LogRecord
from gateway.pgstore import PostgresLogStore
from gateway.store import SqliteLogStore
from tests.backends.conftest import POSTGRES, drop_schema


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    """The log backend under test."""
    return str(request.param)


@dataclass(frozen=True, slots=True, kw_only=True)
class LogUnderTest:
    """Where a gateway over ``state`` keeps its log, and how to reach it from outside."""

    backend: str
    state: Path
    url: str | None  # the PostgreSQL URL; None: the state's own state.db

    @property
    def serve_args(self) -> tuple[str, ...]:
        """Arguments of ``pasarela serve`` besides ``--state`` and ``--port``."""
        return () if self.url is None else ("--store", self.url)

    @property
    def verify_args(self) -> tuple[str, ...]:
        """Arguments of ``pasarela log verify`` naming this log."""
        return ("--state", str(self.state)) if self.url is None else ("--log", self.url)

    async def records(self) -> list[LogRecord]:
        """Every record, by seq ascending, read through the backend's own store."""
        if self.url is None:
            store = SqliteLogStore(self.state / "state.db")
            try:
                return list(store.records())
            finally:
                store.close()
        pg = await PostgresLogStore.open(self.url)
        try:
            return [record async for record in pg.iter_records()]
        finally:
            await pg.close()


@pytest.fixture
async def log_under_test(backend: str, tmp_path: Path) -> AsyncIterator[LogUnderTest]:
    """The log of a gateway whose state is ``tmp_path/state`` (not created here)."""
    state = tmp_path / "state"
    if backend == "sqlite":
        yield LogUnderTest(backend=backend, state=state, url=None)
        return
    schema = f"crash_{secrets.token_hex(6)}"
    try:
        yield LogUnderTest(backend=backend, state=state, url=f"{POSTGRES}?schema={schema}")
    finally:
        await drop_schema(schema)
