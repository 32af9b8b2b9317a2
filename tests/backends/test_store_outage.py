"""The log's PostgreSQL lost while the gateway runs: health goes red, messages are refused
with 503 store-unavailable (never accepted without a log record), and service resumes by
itself when the database is back. The outage is a TCP proxy the test cuts."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from aiohttp.test_utils import TestClient, TestServer

from gateway.log import MessageLog, verify
from gateway.pgstore import PostgresLogStore
from gateway.testing import make_gateway
from tests.backends.conftest import POSTGRES
from tests.backends.tcpproxy import TcpProxy


def _through(proxy: TcpProxy, url: str) -> str:
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    return url.replace(parts.netloc, f"{user}@127.0.0.1:{proxy.port}" if user else
                       f"127.0.0.1:{proxy.port}")  # fmt: skip


async def test_an_outage_refuses_messages_then_service_resumes_by_itself(
    postgres_url: str,
) -> None:
    target = urlsplit(POSTGRES)
    async with TcpProxy(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        store = await PostgresLogStore.open(_through(proxy, postgres_url))
        world = make_gateway()
        world.gateway.log = MessageLog(store)
        client = TestClient(TestServer(world.app()))
        await client.start_server()
        try:
            before = await world.send("AG001", to="AG002", jti="before-1")
            assert before.status == 200

            proxy.cut()
            during = await world.send("AG001", to="AG002", jti="during-1")
            assert during.status == 503
            assert json.loads(during.body)["type"] == "urn:pasarela:problem:store-unavailable"
            assert during.header("Retry-After") == "1"
            health = await client.get("/v1/health")
            assert health.status == 503
            assert (await health.json())["checks"]["store"]["ok"] is False
            handled = len(world.handled)

            proxy.restore()
            health = await client.get("/v1/health")
            assert health.status == 200, await health.text()
            # The same message, sent again, now goes through, once.
            again = await world.send("AG001", to="AG002", jti="during-1")
            assert again.status == 200
            assert len(world.handled) == handled + 1
        finally:
            await client.close()
    reader = await PostgresLogStore.open(postgres_url, create=False)
    try:
        records = [r async for r in reader.iter_records()]
    finally:
        await reader.close()
    assert verify(records).ok
    accepted = [r.fields.get("corr") for r in records if r.kind == "response"]
    assert accepted == ["before-1", "during-1"]
