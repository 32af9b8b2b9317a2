"""What replicas of the gateway share in Redis: the replay memory and the rate buckets.

One gateway process keeps both in memory (:mod:`gateway.pipeline`). Several replicas
behind one address must agree on them, or a replay sent to replica 2 of a message that
replica 1 accepted would be delivered again, and each replica would grant an agency its
own rate. With ``pasarela serve --cache redis://HOST:PORT/DB?prefix=NAME`` they share:

- ``<prefix>:seen:<iss>:<jti>``: a hash ``bh``, ``state`` (``pending`` while a replica
  delivers the message, ``done`` with its ``outcome``), kept until the token's ``exp``
  plus the leeway. Claiming it is atomic (a Lua script), so exactly one replica delivers
  a message; the others answer a retry with the stored outcome, byte for byte, and a
  replay (same ``jti``, another body) with ``409 replay``.
- ``<prefix>:bucket:<iss>``: the agency's token bucket (``tokens``, ``updated``), refilled
  and taken in one script, so the rate limit is global.

Every Redis failure is :class:`~gateway.log.StoreUnavailable`: the gateway then accepts
nothing (``503 store-unavailable``) until Redis is back.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.log import StoreUnavailable
from gateway.transport import WireResponse

__all__ = ["Claim", "ReplayCache", "redis_target"]

#: KEYS[1] the seen key; ARGV: bh, owner, ttl ms. Returns {1} when claimed, else the hash.
_CLAIM: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'bh', ARGV[1], 'state', 'pending', 'owner', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {1}
end
return {0, redis.call('HGET', KEYS[1], 'bh'), redis.call('HGET', KEYS[1], 'state'),
        redis.call('HGET', KEYS[1], 'outcome') or ''}
"""

#: KEYS[1] the bucket; ARGV: now (s), rate, burst, ttl ms. Returns {1} or {0, wait in ms}.
_TAKE: Final = """
local now, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens'))
local updated = tonumber(redis.call('HGET', KEYS[1], 'updated'))
if tokens == nil then
  tokens = burst
else
  tokens = math.min(burst, tokens + math.max(0, now - updated) * rate)
end
local granted = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  granted = 1
else
  wait = math.ceil((1 - tokens) / rate * 1000)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'updated', tostring(now))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {granted, wait}
"""

#: KEYS[1] the seen key; ARGV: owner. Deletes a pending claim this owner holds.
_RELEASE: Final = """
if redis.call('HGET', KEYS[1], 'state') == 'pending' and
   redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True, slots=True)
class RedisTarget:
    url: str  # without pasarela's own parameters
    prefix: str
    shown: str  # without the password


def redis_target(url: str) -> RedisTarget:
    """Split ``redis://HOST:PORT/DB?prefix=NAME`` into the client's URL and the prefix."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"not a Redis URL (scheme {parts.scheme!r})")
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((v for k, v in query if k == "prefix"), "pasarela")
    if not prefix or len(prefix) > 64 or not all(c.isalnum() or c in "_.-" for c in prefix):
        raise ValueError(f"prefix {prefix!r}: 1 to 64 letters, digits, '_', '.' or '-'")
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    host = parts.netloc.rpartition("@")[2]
    shown = f"{parts.scheme}://{host}{parts.path}?prefix={prefix}"
    return RedisTarget(
        url=urlunsplit((parts.scheme, parts.netloc, parts.path, rest, "")),
        prefix=prefix,
        shown=shown,
    )


@dataclass(frozen=True, slots=True)
class Claim:
    """The outcome of claiming a message: ours to deliver, or somebody else's."""

    new: bool
    bh: str = ""
    done: bool = False
    outcome: WireResponse | None = None


def _encode(response: WireResponse) -> str:
    return json.dumps(
        {
            "status": response.status,
            "headers": dict(response.headers),
            "body": base64.b64encode(response.body).decode("ascii"),
        }
    )


def _decode(text: str) -> WireResponse:
    value = json.loads(text)
    return WireResponse(
        status=int(value["status"]),
        headers={str(k): str(v) for k, v in value["headers"].items()},
        body=base64.b64decode(value["body"]),
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ReplayCache:
    """The shared replay memory and rate buckets. Open it with :meth:`open`."""

    def __init__(self, client: Any, target: RedisTarget, *, owner: str) -> None:
        self._client = client
        self.target = target
        self.owner = owner
        self._claim = client.register_script(_CLAIM)
        self._take = client.register_script(_TAKE)
        self._release = client.register_script(_RELEASE)

    @classmethod
    async def open(cls, url: str, *, owner: str, timeout: float = 5.0) -> ReplayCache:
        """Connect and check that Redis answers; :class:`StoreUnavailable` if it does not."""
        target = redis_target(url)
        client = aioredis.from_url(
            target.url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        cache = cls(client, target, owner=owner)
        try:
            await cache.ping()
        except StoreUnavailable:
            await client.aclose()
            raise
        return cache

    def _key(self, kind: str, *parts: str) -> str:
        return ":".join((self.target.prefix, kind, *parts))

    def _lost(self, exc: Exception) -> StoreUnavailable:
        return StoreUnavailable(f"Redis at {self.target.shown}: {type(exc).__name__}: {exc}")

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            raise self._lost(exc) from exc

    async def claim(self, iss: str, jti: str, bh: str, *, ttl: float) -> Claim:
        """Claim ``(iss, jti)`` for delivery, or read who has it and how it ended."""
        key = self._key("seen", iss, jti)
        try:
            reply = await self._claim(keys=[key], args=[bh, self.owner, _ms(ttl)])
        except (RedisError, OSError) as exc:
            raise self._lost(exc) from exc
        if int(reply[0]) == 1:
            return Claim(new=True)
        stored_bh, state, outcome = (_text(v) for v in reply[1:4])
        done = state == "done"
        return Claim(new=False, bh=stored_bh, done=done, outcome=_decode(outcome) if done else None)

    async def finish(self, iss: str, jti: str, outcome: WireResponse, *, ttl: float) -> None:
        """Store the final outcome for retries arriving at any replica."""
        key = self._key("seen", iss, jti)
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping={"state": "done", "outcome": _encode(outcome)})
                pipe.pexpire(key, _ms(ttl))
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self._lost(exc) from exc

    async def release(self, iss: str, jti: str) -> None:
        """Forget a claim that ended in a transient failure: a retry may deliver again."""
        try:
            await self._release(keys=[self._key("seen", iss, jti)], args=[self.owner])
        except (RedisError, OSError) as exc:
            raise self._lost(exc) from exc

    async def take(self, iss: str, *, rate: float, burst: float, now: float) -> float | None:
        """Take one token of ``iss``'s global bucket at time ``now`` (the replicas' clocks
        must agree: they are the machines' wall clocks); None, or seconds to wait."""
        ttl = max(1.0, burst / rate * 2)
        try:
            granted, wait = await self._take(
                keys=[self._key("bucket", iss)], args=[now, rate, burst, _ms(ttl)]
            )
        except (RedisError, OSError) as exc:
            raise self._lost(exc) from exc
        return None if int(granted) == 1 else int(wait) / 1000

    async def aclose(self) -> None:
        await self._client.aclose()


def _ms(seconds: float) -> int:
    return max(1000, int(seconds * 1000))
