"""``pasarela log verify``: check one log, or the chains of several replicas together."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from gateway.backends import is_postgres_url
from gateway.log import Verification, averify, verify
from gateway.pgstore import PostgresLogStore, postgres_target
from gateway.store import SqliteLogStore

__all__ = ["LogCheck", "check_log"]


@dataclass(frozen=True, slots=True)
class LogCheck:
    log: str  # what was checked, without any password
    result: Verification

    def as_dict(self) -> dict[str, object]:
        return {
            "log": self.log,
            "ok": self.result.ok,
            "records": self.result.records,
            "first_bad_seq": self.result.first_bad_seq,
            "problem": self.result.problem,
        }


async def _check_postgres(url: str) -> list[LogCheck]:
    store = await PostgresLogStore.open(url, create=False)
    shown = postgres_target(url).shown
    try:
        chains = await store.chains() or [""]
        return [
            LogCheck(
                f"{shown}#{chain}" if len(chains) > 1 or chain else shown,
                await averify(store.iter_records(chain=chain)),
            )
            for chain in chains
        ]
    finally:
        await store.close()


def check_log(target: str | Path) -> list[LogCheck]:
    """Verify the chain of a SQLite file (a path or ``sqlite:///PATH``), or every chain of
    a PostgreSQL schema (one per replica; read only). Raises ``FileNotFoundError`` or
    ``ValueError`` for a log that is not there, :class:`~gateway.log.StoreUnavailable` for
    a server that does not answer."""
    text = str(target)
    if is_postgres_url(text):
        return asyncio.run(_check_postgres(text))
    path = Path(text.removeprefix("sqlite://")).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    store = SqliteLogStore(path)
    try:
        return [LogCheck(str(path), verify(store.records()))]
    finally:
        store.close()
