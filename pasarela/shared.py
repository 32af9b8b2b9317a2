"""The trust store and registry replicas share in their PostgreSQL schema.

With ``pasarela serve --store postgresql://...`` the schema's ``documents`` table holds
``trust``, ``registry`` and ``revision``. The first replica to start seeds them from its
state directory; every replica then loads them from there, writes them back after an
operator action (bumping ``revision``, and the state directory's copy for the agency host),
and polls ``revision`` once a second, so an enrolment, revocation or agency state change
made at one replica is in force at all of them within a second.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import structlog

from gateway.log import StoreUnavailable
from gateway.pgstore import PostgresDocuments
from gateway.registry import Registry
from gateway.state import StateDir
from gateway.trust import TrustStore

if TYPE_CHECKING:
    from gateway.service import Gateway

__all__ = ["SharedState", "running"]

_log = structlog.get_logger("pasarela.shared")


class SharedState:
    """One replica's view of the shared trust store and registry."""

    def __init__(self, state: StateDir, documents: PostgresDocuments) -> None:
        self.state = state
        self.documents = documents
        self.revision = 0
        self._lock = asyncio.Lock()

    def _snapshots(self) -> dict[str, bytes]:
        return {
            "trust": json.dumps(self.state.trust.snapshot()).encode(),
            "registry": json.dumps(self.state.registry.snapshot()).encode(),
        }

    async def load(self) -> None:
        """Seed the schema from the state directory if it is new, then take what it holds."""
        if await self.documents.seed({**self._snapshots(), "revision": b"1"}):
            _log.info("shared_state_seeded", schema=self.documents.shown)
        await self._reload()

    async def _reload(self) -> bool:
        """Take the shared documents when their revision moved; True when it did."""
        found = await self.documents.get("trust", "registry", "revision")
        revision = int(found.get("revision", b"0"))
        if revision == self.revision or "trust" not in found or "registry" not in found:
            return False
        self.state.trust = TrustStore.restore(self.state.trust.ca, json.loads(found["trust"]))
        self.state.registry = Registry.restore(json.loads(found["registry"]))
        self.revision = revision
        return True

    async def persist(self) -> None:
        """After an operator action at this replica: write the documents, bump revision."""
        async with self._lock:
            self.state.persist()  # the state directory's copy, for the agency host
            self.revision = await self.documents.bump(self._snapshots())

    async def follow(self, gateway: Gateway, *, interval: float = 1.0) -> None:
        """Keep ``gateway`` on the shared documents (a task for the server's lifetime)."""
        while True:
            await asyncio.sleep(interval)
            try:
                async with self._lock:
                    if await self._reload():
                        gateway.trust, gateway.registry = self.state.trust, self.state.registry
                        _log.info("shared_state_reloaded", revision=self.revision)
            except StoreUnavailable as exc:  # the store's own health check says so
                _log.warning("shared_state_unavailable", detail=str(exc))
            except Exception:  # a bad document must not stop the following for good
                _log.exception("shared_state_unreadable", revision=self.revision)


async def running(shared: SharedState, gateway: Gateway) -> AsyncIterator[None]:
    """An aiohttp cleanup context body: follow the shared state while the app runs."""
    task = asyncio.get_running_loop().create_task(shared.follow(gateway))
    try:
        yield
    finally:
        task.cancel()
