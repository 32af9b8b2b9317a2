"""The loop thread utilities of the pytest plugin.

An event loop in a daemon thread (:class:`_LoopThread`), where a gateway's servers and its
own HTTP calls run; an HTTP transport that opens a session per request, so it is tied to
no event loop (:class:`_SessionPerRequest`); serving an app on 127.0.0.1 through the
connection guard (:func:`_serve`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

from aiohttp import web

from gateway.guard import GuardedAppRunner, GuardEventKind, GuardPolicy
from gateway.transport import HttpTransport, Transport, WireRequest, WireResponse

_T = TypeVar("_T")

_SHUTDOWN_SECONDS: Final = 2.0


class _LoopThread:
    """An event loop running in a daemon thread: where the servers of one gateway live."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    @property
    def current(self) -> bool:
        """True when called from this thread (where waiting on the loop would deadlock)."""
        return threading.current_thread() is self._thread

    def run(self, coroutine: Coroutine[Any, Any, _T], *, timeout: float = 60.0) -> _T:
        """Run ``coroutine`` on the thread's loop; block the calling thread until it is done."""
        if self.current:
            coroutine.close()
            raise RuntimeError("a pasarela server cannot wait for its own thread")
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call(self, function: Callable[[], _T]) -> _T:
        """Run a plain function on the thread (where the gateway's state is changed)."""

        async def call() -> _T:
            return function()

        return self.run(call())

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.run(self._drain())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10.0)
        self.loop.close()

    async def _drain(self) -> None:
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.loop.shutdown_asyncgens()
        await self.loop.shutdown_default_executor()


class _SessionPerRequest(Transport):
    """HTTP with a new aiohttp session per request: no pool tied to one event loop.

    A connector built on it may be used from any loop (function- or module-scoped) and
    leaves nothing to close.
    """

    async def send(self, request: WireRequest, *, timeout: float = 30.0) -> WireResponse:
        transport = HttpTransport(limit=1)
        try:
            return await transport.send(request, timeout=timeout)
        finally:
            await transport.aclose()


async def _serve(
    app: web.Application,
    *,
    policy: GuardPolicy,
    on_event: Callable[[GuardEventKind], None] | None = None,
) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on 127.0.0.1, a free port, through the connection guard."""
    runner = GuardedAppRunner(
        app,
        policy=policy,
        on_event=on_event,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=_SHUTDOWN_SECONDS,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"
