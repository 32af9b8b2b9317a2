"""Two gateway replicas sharing Redis: a replay is caught whichever replica sees it, a
retry gets the original outcome from either, the rate limit is global, and a lost Redis
stops acceptance until it is back."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.cache import ReplayCache, redis_target
from gateway.pipeline import Limits
from gateway.testing import GatewayWorld, make_gateway
from tests.backends.conftest import REDIS
from tests.backends.tcpproxy import TcpProxy


async def _replicas(url: str, *, limits: Limits | None = None) -> list[GatewayWorld]:
    """Two worlds with the same CA, keys and agencies (same seed), one cache each."""
    worlds = []
    for name in ("r1", "r2"):
        world = make_gateway(limits=limits)
        world.gateway.cache = await ReplayCache.open(url, owner=name)
        worlds.append(world)
    return worlds


@pytest.fixture
async def replicas(redis_url: str) -> AsyncIterator[list[GatewayWorld]]:
    worlds = await _replicas(redis_url)
    yield worlds
    for world in worlds:
        assert world.gateway.cache is not None
        await world.gateway.cache.aclose()


async def test_a_retry_at_another_replica_gets_the_original_outcome_byte_for_byte(
    replicas: list[GatewayWorld],
) -> None:
    one, two = replicas
    first = await one.send("AG001", to="AG002", jti="m-1", body=b'{"n": 1}')
    again = await two.send("AG001", to="AG002", jti="m-1", body=b'{"n": 1}')
    assert first.status == 200
    assert (again.status, dict(again.headers), again.body) == (
        first.status, dict(first.headers), first.body
    )  # fmt: skip
    assert len(one.handled) == 1
    assert two.handled == []  # replica 2 did not deliver it again
    kinds = [record.kind for record in two.store.records()]
    assert kinds == ["retry"]


async def test_a_replay_at_another_replica_is_refused(replicas: list[GatewayWorld]) -> None:
    one, two = replicas
    assert (await one.send("AG001", to="AG002", jti="m-2", body=b'{"n": 1}')).status == 200
    replay = await two.send("AG001", to="AG002", jti="m-2", body=b'{"n": 2}')
    assert replay.status == 409
    assert json.loads(replay.body)["type"] == "urn:pasarela:problem:replay"
    assert two.handled == []


async def test_a_transient_failure_lets_another_replica_deliver(
    replicas: list[GatewayWorld],
) -> None:
    one, two = replicas
    one.transport.set_down("http://agencies.test")
    failed = await one.send("AG001", to="AG002", jti="m-3")
    assert failed.status == 503
    delivered = await two.send("AG001", to="AG002", jti="m-3")
    assert delivered.status == 200
    assert len(two.handled) == 1


async def test_the_rate_limit_is_global_across_replicas(redis_url: str) -> None:
    one, two = await _replicas(redis_url, limits=Limits(rate_per_second=0.01, burst=3))
    try:
        statuses = []
        for n, world in enumerate([one, two, one, two]):
            statuses.append((await world.send("AG001", to="AG002", jti=f"r-{n}")).status)
        assert statuses == [200, 200, 200, 429]
        # Another agency has a bucket of its own.
        assert (await two.send("AG002", to="AG001", jti="other")).status == 200
    finally:
        for world in (one, two):
            assert world.gateway.cache is not None
            await world.gateway.cache.aclose()


async def test_a_lost_redis_stops_acceptance_until_it_is_back(redis_url: str) -> None:
    target = urlsplit(REDIS)
    async with TcpProxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        prefix = redis_target(redis_url).prefix
        through = f"redis://127.0.0.1:{proxy.port}{target.path}?prefix={prefix}"
        (world,) = (make_gateway(),)
        world.gateway.cache = await ReplayCache.open(through, owner="r1", timeout=1.0)
        client = TestClient(TestServer(world.app()))
        await client.start_server()
        try:
            assert (await world.send("AG001", to="AG002", jti="a")).status == 200
            proxy.cut()
            refused = await world.send("AG001", to="AG002", jti="b")
            assert refused.status == 503
            assert json.loads(refused.body)["type"] == "urn:pasarela:problem:store-unavailable"
            health = await client.get("/v1/health")
            assert health.status == 503
            assert (await health.json())["checks"]["cache"]["ok"] is False
            proxy.restore()
            assert (await client.get("/v1/health")).status == 200
            assert (await world.send("AG001", to="AG002", jti="b")).status == 200
            assert len(world.handled) == 2
        finally:
            await client.close()
            await world.gateway.cache.aclose()


def test_redis_urls_are_checked_and_shown_without_the_password() -> None:
    target = redis_target("redis://:s3cret@cache:6379/2?prefix=pisee.gw")
    assert target.prefix == "pisee.gw"
    assert target.url == "redis://:s3cret@cache:6379/2"
    assert "s3cret" not in target.shown
    with pytest.raises(ValueError, match="prefix"):
        redis_target("redis://cache/0?prefix=a b")
    with pytest.raises(ValueError, match="not a Redis URL"):
        redis_target("http://cache/0")
