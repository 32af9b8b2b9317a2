"""Child servers on loopback: free ports, start, wait for health, stop with SIGTERM.

Used by ``pasarela demo``, the benchmarks and end-to-end tests, so all of them start and
stop the gateway and the agency host the same way an operator would.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

__all__ = [
    "Child",
    "StartupError",
    "child_process",
    "free_port",
    "free_ports",
    "pasarela_argv",
    "wait_healthy",
]


class StartupError(Exception):
    """A child server exited or did not become healthy in time."""


@dataclass(slots=True, kw_only=True)
class Child:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> list[str]:
        """The last lines of the child's output (for an error report)."""
        if not self.log.exists():
            return []
        return self.log.read_text(errors="replace").splitlines()[-lines:]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that were free a moment ago (held open
    together while chosen, so two calls cannot hand out the same port)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def pasarela_argv(*args: str) -> list[str]:
    """The command line that runs ``pasarela ARGS`` with this interpreter."""
    return [sys.executable, "-m", "pasarela", *args]


@contextlib.contextmanager
def child_process(name: str, argv: list[str], *, port: int, log: Path) -> Iterator[Child]:
    """Run ``argv`` with its output in ``log``; SIGTERM (then SIGKILL after 10 s) on exit."""
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603
        try:
            yield Child(name=name, url=f"http://127.0.0.1:{port}", process=process, log=log)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


async def wait_healthy(child: Child, *, timeout: float = 30.0) -> None:
    """Poll ``GET /v1/health`` until 200; raise StartupError if the child dies or times out."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if child.process.poll() is not None:
                raise StartupError(f"{child.name} exited with code {child.process.returncode}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(f"{child.url}/v1/health") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise StartupError(f"{child.name} at {child.url} not healthy after {timeout:.0f}s")
