"""Fixtures of the conformance kit's tests: a state directory and small stand-in connectors."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gateway.clock import SeededRandomness
from gateway.state import init_state


@pytest.fixture(scope="session")
def kit_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state made like ``pasarela init --agencies 3`` (never written by the kit)."""
    path = tmp_path_factory.mktemp("kit-state")
    init_state(path, agencies=3, randomness=SeededRandomness(11), now=time.time())
    return path


@dataclass
class RefusingConnector:
    """Answers every POST ``401 expired``: a connector that accepts nothing."""

    url: str
    seen: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture
def refusing_connector() -> Iterator[RefusingConnector]:
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, document: dict[str, object], media: str) -> None:
            body = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", media)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._answer(200, {"status": "ok"}, "application/json")

        def do_POST(self) -> None:
            seen.append(dict(self.headers.items()))
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            problem = {"type": "urn:pasarela:problem:expired", "title": "Message expired",
                       "status": 401}  # fmt: skip
            self._answer(401, problem, "application/problem+json")

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield RefusingConnector(url=f"http://127.0.0.1:{server.server_address[1]}", seen=seen)
    finally:
        server.shutdown()
        server.server_close()
