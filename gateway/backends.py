"""Opening the message log's store from a URL: SQLite or PostgreSQL."""

from __future__ import annotations

from gateway.log import LogStore
from gateway.pgstore import PostgresLogStore
from gateway.store import open_log_store

__all__ = ["is_postgres_url", "open_store"]


def is_postgres_url(url_or_path: str) -> bool:
    return url_or_path.lower().startswith(("postgresql://", "postgres://"))


async def open_store(url_or_path: str, *, chain: str = "") -> LogStore:
    """The log store named by ``url_or_path``: SQLite (a path or ``sqlite:///...``) or
    PostgreSQL (``postgresql://...?schema=NAME``, see :mod:`gateway.pgstore`), where
    ``chain`` names the replica's hash chain.

    Raises ``ValueError`` for a URL it cannot use and
    :class:`~gateway.pgstore.StoreUnavailable` when PostgreSQL cannot be reached.
    """
    if is_postgres_url(url_or_path):
        return await PostgresLogStore.open(url_or_path, chain=chain)
    return open_log_store(url_or_path)
