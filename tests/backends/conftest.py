"""Fixtures that run a test against every store backend.

PostgreSQL is the machine's server (127.0.0.1:5432, trust auth, database ``test``); each
test gets a schema of its own, dropped afterwards, so runs never see each other. Redis is
127.0.0.1:6379; each test gets a key prefix of its own, its keys deleted afterwards. Set
``PASARELA_TEST_POSTGRES`` (without ``schema``) or ``PASARELA_TEST_REDIS`` (without
``prefix``) to use other servers.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio

POSTGRES = os.environ.get("PASARELA_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("PASARELA_TEST_REDIS", "redis://127.0.0.1:6379/0")


def schema_url(schema: str) -> str:
    return f"{POSTGRES}?schema={schema}"


async def drop_schema(schema: str) -> None:
    conn = await asyncpg.connect(POSTGRES)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A URL naming a fresh schema, dropped when the test ends."""
    schema = f"t_{secrets.token_hex(6)}"
    yield schema_url(schema)
    await drop_schema(schema)


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Where a log store lives, for each backend in turn."""
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'log.db'}"
        return
    schema = f"t_{secrets.token_hex(6)}"
    yield schema_url(schema)
    await drop_schema(schema)


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """A URL naming a fresh key prefix, whose keys are deleted when the test ends."""
    prefix = f"t-{secrets.token_hex(6)}"
    yield f"{REDIS}?prefix={prefix}"
    client = redis.asyncio.from_url(REDIS)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
