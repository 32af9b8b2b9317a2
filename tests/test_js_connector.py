"""The JavaScript connector (examples/connectors/javascript) against a real gateway.

The connector runs as a ``node`` subprocess. The gateway delivers to it through a small
recording proxy, so a real delivery (token, receipt, body) can be replayed directly.
Skipped when ``node`` or the connector's ``node_modules`` is missing (install with
``npm ci --prefix examples/connectors/javascript``).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pasarela.pytest_plugin import AgencyFactory, PasarelaGateway, PasarelaPortal

CONNECTOR_DIR = Path(__file__).resolve().parent.parent / "examples" / "connectors" / "javascript"
NODE = shutil.which("node")
CODE = "AG001"

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not installed"),
    pytest.mark.skipif(
        not (CONNECTOR_DIR / "node_modules").is_dir(),
        reason="the JavaScript connector's dependencies are not installed: "
        "run `npm ci --prefix examples/connectors/javascript`",
    ),
]


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _post(port: int, path: str, body: bytes, headers: dict[str, str]) -> Answer:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        return Answer(
            status=response.status,
            headers={k.lower(): v for k, v in response.getheaders()},
            body=response.read(),
        )
    finally:
        connection.close()


@dataclass
class Recorder:
    """Forwards POSTs to the connector and records each request and its answer."""

    target: int
    deliveries: list[tuple[dict[str, str], bytes, Answer]] = field(default_factory=list)


def _proxy(recorder: Recorder) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {k: v for k, v in self.headers.items() if k.lower().startswith("pasarela-")}
            headers["Content-Type"] = self.headers.get("Content-Type", "application/json")
            answer = _post(recorder.target, self.path, body, headers)
            recorder.deliveries.append((headers, body, answer))
            self.send_response(answer.status)
            for name in ("content-type", "pasarela-signature"):
                if name in answer.headers:
                    self.send_header(name, answer.headers[name])
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass(frozen=True, slots=True)
class JsConnector:
    port: int
    recorder: Recorder
    process: subprocess.Popen[bytes]


@pytest.fixture
def js_connector(
    pasarela_gateway: PasarelaGateway, pasarela_agency: AgencyFactory
) -> Iterator[JsConnector]:
    recorder = Recorder(target=0)
    proxy = _proxy(recorder)  # bound first: the connector's port must not be the proxy's
    proxy_port = proxy.server_address[1]
    port = _free_port()
    while port == proxy_port:
        port = _free_port()
    recorder.target = port
    agency = pasarela_agency(
        CODE,
        endpoint=f"http://127.0.0.1:{proxy_port}/agencies/{CODE}/messages",
        services={"ati.request"},
    )
    environment = {
        **os.environ,
        "PASARELA_GATEWAY_URL": pasarela_gateway.url,
        "PASARELA_AGENCY": CODE,
        "PASARELA_KEY": str(agency.key_path),
        "PASARELA_CERT": str(agency.certificate_path),
        "PASARELA_CA": str(pasarela_gateway.ca_certificate_path),
        "PORT": str(port),
    }
    assert NODE is not None
    process = subprocess.Popen(
        [NODE, "connector.mjs"],
        cwd=CONNECTOR_DIR,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                output = process.stdout.read().decode() if process.stdout else ""
                pytest.fail(f"the connector exited with {process.returncode}: {output}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("the connector did not listen within 10 s")
                time.sleep(0.05)
        yield JsConnector(port=port, recorder=recorder, process=process)
    finally:
        process.kill()
        process.wait()
        if process.stdout:
            process.stdout.close()
        proxy.shutdown()
        proxy.server_close()


def test_the_portal_gets_a_signed_answer(
    js_connector: JsConnector, pasarela_gateway: PasarelaGateway, pasarela_portal: PasarelaPortal
) -> None:
    reply = asyncio.run(pasarela_portal.send(to=CODE, body={"NumSolicitud": "AT001W-1"}))
    assert reply.status == 200
    assert reply.claims.iss == CODE
    assert reply.claims.aud == "PORTAL"
    assert reply.claims.svc == "ati.request"
    assert reply.claims.corr == reply.jti
    assert reply.json() == {"estado": "00", "recibido": reply.jti}
    assert pasarela_gateway.alerts() == []


def test_the_trigger_sends_an_answer_to_the_portal(
    js_connector: JsConnector, pasarela_gateway: PasarelaGateway, pasarela_portal: PasarelaPortal
) -> None:
    body = {"NumSolicitud": "AT001W-1", "Respuesta": "Se entrega la información."}
    request = {"to": "PORTAL", "service": "ati.answer", "body": body}
    answer = _post(
        js_connector.port,
        "/trigger/send",
        json.dumps(request).encode(),
        {"Content-Type": "application/json"},
    )
    assert answer.status == 200, answer.body
    result = answer.json()
    assert result["receipt_verified"] is True
    assert result["status"] == 200
    assert result["body"]["status"] == "received"
    asyncio.run(pasarela_portal.wait_received(1, timeout=10))
    (received,) = pasarela_portal.received
    assert received.claims.iss == CODE
    assert received.claims.svc == "ati.answer"
    assert received.json() == body
    assert pasarela_gateway.alerts() == []


def _message_to_connector(
    js_connector: JsConnector, pasarela_portal: PasarelaPortal
) -> tuple[dict[str, str], bytes, Answer]:
    """A real delivery from the portal to the connector, as the proxy recorded it."""
    reply = asyncio.run(pasarela_portal.send(to=CODE, body={"NumSolicitud": "AT001W-2"}))
    assert reply.status == 200
    (delivery,) = js_connector.recorder.deliveries
    return delivery


def test_a_forged_receipt_is_refused(
    js_connector: JsConnector, pasarela_portal: PasarelaPortal
) -> None:
    headers, body, _ = _message_to_connector(js_connector, pasarela_portal)
    receipt = headers["Pasarela-Receipt"]
    head, claims, signature = receipt.split(".")
    forged = f"{head}.{claims}.{signature[:-4]}AAAA"
    path = f"/agencies/{CODE}/messages"
    for bad in (forged, f"{head}.{claims[:-2]}xx.{signature}", "not-a-receipt"):
        answer = _post(js_connector.port, path, body, {**headers, "Pasarela-Receipt": bad})
        assert 400 <= answer.status < 500, answer.body
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["type"] in {
            "urn:pasarela:problem:bad-signature",
            "urn:pasarela:problem:malformed",
            "urn:pasarela:problem:unknown-key",
        }
    missing = {k: v for k, v in headers.items() if k != "Pasarela-Receipt"}
    answer = _post(js_connector.port, path, body, missing)
    assert 400 <= answer.status < 500
    assert answer.headers["content-type"] == "application/problem+json"


def test_a_tampered_body_is_refused(
    js_connector: JsConnector, pasarela_portal: PasarelaPortal
) -> None:
    headers, body, _ = _message_to_connector(js_connector, pasarela_portal)
    answer = _post(js_connector.port, f"/agencies/{CODE}/messages", body + b" ", headers)
    assert answer.status == 400
    assert answer.json()["type"] == "urn:pasarela:problem:body-digest-mismatch"


def test_a_replayed_delivery_is_answered_idempotently(
    js_connector: JsConnector, pasarela_portal: PasarelaPortal
) -> None:
    headers, body, original = _message_to_connector(js_connector, pasarela_portal)
    path = f"/agencies/{CODE}/messages"
    for _ in range(2):
        again = _post(js_connector.port, path, body, headers)
        assert again.status == original.status
        assert again.body == original.body
        assert again.headers["pasarela-signature"] == original.headers["pasarela-signature"]


def test_the_trigger_retries_an_unavailable_receiver_then_reports_it(
    js_connector: JsConnector, pasarela_agency: AgencyFactory
) -> None:
    pasarela_agency("AG002")  # no endpoint: every delivery fails, 503 receiver-unavailable
    request = {"to": "AG002", "service": "ping", "body": {"ping": 1}}
    started = time.monotonic()
    answer = _post(
        js_connector.port,
        "/trigger/send",
        json.dumps(request).encode(),
        {"Content-Type": "application/json"},
    )
    assert answer.status == 200, answer.body
    result = answer.json()
    assert result["status"] == 503
    assert result["receipt_verified"] is False
    assert result["body"]["type"] == "urn:pasarela:problem:receiver-unavailable"
    assert result["body"]["jti"] == result["jti"]  # the same jti on every attempt
    assert time.monotonic() - started >= 3  # it waited Retry-After between attempts
