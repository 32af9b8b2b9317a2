"""A plain reverse proxy: the baseline the gateway is measured against in ``bench/relay.py``.

``POST /v1/messages`` is forwarded to the URL in the ``X-Bench-Target`` header (which must
lie under ``--upstream``) with the body and every end-to-end header as they came, through
one pooled aiohttp session; the receiver's status, body and headers go back as they came.
No crypto, no log, no limits: only what any HTTP relay must do.

    python bench/plain_proxy.py --port 8702 --upstream http://127.0.0.1:8701
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from gateway.protocol import MAX_BODY_BYTES
from pasarela.runtime import configure_logging, run_app

__all__ = ["TARGET_HEADER", "create_proxy_app"]

TARGET_HEADER: Final = "X-Bench-Target"
#: Not forwarded either way: connection-level headers (RFC 9110 section 7.6.1), the ones
#: aiohttp recomputes for the new connection, and the routing header itself.
_NOT_FORWARDED: Final = frozenset(
    name.lower()
    for name in (
        "Connection",
        "Keep-Alive",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
        TARGET_HEADER,
    )
)

SESSION_KEY: Final = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM_KEY: Final = web.AppKey("upstream", str)


def _end_to_end(headers: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    return CIMultiDict(
        (name, value) for name, value in headers if name.lower() not in _NOT_FORWARDED
    )


async def forward(request: web.Request) -> web.Response:
    target = request.headers.get(TARGET_HEADER, "")
    if not target.startswith(request.app[UPSTREAM_KEY]):
        return web.Response(status=400, text=f"{TARGET_HEADER} must be under the upstream URL")
    body = await request.read()
    try:
        async with request.app[SESSION_KEY].post(
            target,
            data=body,
            headers=_end_to_end(request.headers.items()),
            allow_redirects=False,
        ) as answer:
            payload = await answer.read()
            return web.Response(
                status=answer.status, body=payload, headers=_end_to_end(answer.headers.items())
            )
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return web.Response(status=502, text=f"upstream failed: {exc!r}")


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_proxy_app(upstream: str, *, pool: int = 256, timeout: float = 10.0) -> web.Application:
    """The proxy app; its session (``pool`` connections, as the gateway's) is a cleanup_ctx."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[UPSTREAM_KEY] = upstream.rstrip("/") + "/"

    async def session(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=pool, limit_per_host=pool)
        app[SESSION_KEY] = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=timeout),
        )
        yield
        await app[SESSION_KEY].close()

    app.cleanup_ctx.append(session)
    app.router.add_post("/v1/messages", forward)
    app.router.add_get("/v1/health", _health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL targets must lie under")
    args = parser.parse_args()
    configure_logging()
    app = create_proxy_app(args.upstream)
    asyncio.run(run_app(app, host=args.host, port=args.port, name="plain-proxy"))


if __name__ == "__main__":
    main()
