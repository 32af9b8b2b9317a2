"""The Python example connectors (examples/connectors/python and broken) against a gateway.

Each connector's aiohttp app runs in the test's event loop on a free port, registered at
the in-process gateway of the pytest plugin; a middleware records every delivery so that
a real one (token, receipt, body) can be posted again directly. The examples are not a
package: they are loaded by path.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import hashlib
import http.client
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import jsonschema
import pytest
import yaml
from aiohttp import web

from agents.verification import Refused
from pasarela.processes import free_ports
from pasarela.pytest_plugin import AgencyFactory, PasarelaAgency, PasarelaGateway, PasarelaPortal

ROOT = Path(__file__).resolve().parents[1]
CODE = "AG001"
MESSAGES = f"/agencies/{CODE}/messages"


def _load(name: str, relative: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


reference = _load("pasarela_example_connector", "examples/connectors/python/connector.py")
broken = _load("pasarela_broken_connector", "examples/connectors/broken/connector.py")


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(frozen=True, slots=True)
class Delivery:
    headers: dict[str, str]  # the Pasarela-* and Content-Type headers the gateway sent
    body: bytes
    answer: Answer


@dataclass(slots=True)
class Running:
    url: str
    agency: PasarelaAgency
    deliveries: list[Delivery] = field(default_factory=list)


async def _post(url: str, body: bytes, headers: dict[str, str] | None = None) -> Answer:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers or {}) as response,
    ):
        return Answer(
            status=response.status,
            headers={k.lower(): v for k, v in response.headers.items()},
            body=await response.read(),
        )


_TRIGGER_RESPONSES = yaml.safe_load(
    (ROOT / "docs" / "openapi" / "connector.yaml").read_text(encoding="utf-8")
)["paths"]["/trigger/send"]["post"]["responses"]


async def _trigger(running: Running, request: dict[str, Any]) -> Answer:
    """POST /trigger/send; the answer must be one docs/openapi/connector.yaml describes."""
    headers = {"Content-Type": "application/json", "Pasarela-Test-Case": "pytest#1"}
    answer = await _post(f"{running.url}/trigger/send", json.dumps(request).encode(), headers)
    schema = _TRIGGER_RESPONSES[str(answer.status)]["content"]["application/json"]["schema"]
    jsonschema.validate(answer.json(), schema)
    return answer


def _recorder(deliveries: list[Delivery]) -> Any:
    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        body = await request.read()
        response = await handler(request)
        if request.path.endswith("/messages") and isinstance(response, web.Response):
            headers = {
                k: v for k, v in request.headers.items() if k.lower().startswith("pasarela-")
            }
            headers["Content-Type"] = request.headers.get("Content-Type", "application/json")
            answer = Answer(
                status=response.status,
                headers={k.lower(): v for k, v in response.headers.items()},
                body=bytes(response.body) if isinstance(response.body, bytes) else b"",
            )
            deliveries.append(Delivery(headers=headers, body=body, answer=answer))
        return response

    return record


@contextlib.asynccontextmanager
async def _running(
    build: Callable[[Any], web.Application],
    module: ModuleType,
    gateway: PasarelaGateway,
    agency_factory: AgencyFactory,
    *,
    gateway_url: str | None = None,
) -> AsyncIterator[Running]:
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    agency = agency_factory(CODE, endpoint=f"{url}{MESSAGES}", services={"ati.request", "ping"})
    settings = module.Settings(
        gateway_url=gateway_url or gateway.url,
        agency=CODE,
        key=agency.key_path,
        cert=agency.certificate_path,
        ca=gateway.ca_certificate_path,
        port=port,
    )
    running = Running(url=url, agency=agency)
    app = build(settings)
    app.middlewares.append(_recorder(running.deliveries))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield running
    finally:
        await runner.cleanup()


def _reference(
    gateway: PasarelaGateway, agency_factory: AgencyFactory, **options: Any
) -> contextlib.AbstractAsyncContextManager[Running]:
    return _running(reference.create_app, reference, gateway, agency_factory, **options)


def _broken(
    gateway: PasarelaGateway, agency_factory: AgencyFactory, *defects: str
) -> contextlib.AbstractAsyncContextManager[Running]:
    def build(settings: Any) -> web.Application:
        app: web.Application = broken.create_app(settings, frozenset(defects))
        return app

    return _running(build, broken, gateway, agency_factory)


def _without(headers: dict[str, str], name: str) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k != name}


def _log_lines(capsys: pytest.CaptureFixture[str], event: str) -> list[dict[str, Any]]:
    """The connector's JSON log lines of ``event`` written to stderr since the last read."""
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line[:1] == "{"]
    return [line for line in lines if line["event"] == event]


# -- both ---------------------------------------------------------------------------------------
def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_uses(source: str) -> list[str]:
    """Where ``source`` reaches past the library's public API: a name imported from
    agents.* or gateway.* that is not in the module's ``__all__`` (nor a module), a private
    attribute of anything but ``self``, or, in a subclass of a library class, a private
    method or attribute (the library's own, overridden or replaced)."""
    tree = ast.parse(source)
    library: set[str] = set()
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] not in {"agents", "gateway"}:
                continue
            module = importlib.import_module(node.module)
            for alias in node.names:
                library.add(alias.asname or alias.name)
                if alias.name not in module.__all__ and not isinstance(
                    getattr(module, alias.name, None), ModuleType
                ):
                    found.append(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            mine = isinstance(node.value, ast.Name) and node.value.id == "self"
            if not mine:
                found.append(ast.unparse(node))
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        if not any(isinstance(base, ast.Name) and base.id in library for base in node.bases):
            continue
        for inner in ast.walk(node):
            name = None
            if isinstance(inner, ast.FunctionDef | ast.AsyncFunctionDef):
                name = inner.name
            elif isinstance(inner, ast.Attribute):
                name = inner.attr
            if name and _private(name):
                found.append(f"{node.name}.{name}")
    return found


@pytest.mark.parametrize("module", [reference, broken], ids=["python", "broken"])
def test_examples_use_only_the_librarys_public_api(module: ModuleType) -> None:
    assert module.__file__ is not None
    assert _private_uses(Path(module.__file__).read_text(encoding="utf-8")) == []


def test_the_public_api_check_finds_private_uses() -> None:
    source = """
from agents.connector import Connector, _RETRYABLE
from agents.host import AgencyHost
class _Client(Connector):
    async def _ensure_directory(self): ...
class _Host(AgencyHost):
    def __init__(self):
        self._services = {}
host = AgencyHost()
host._answers.clear()
super().__init__()
"""
    assert _private_uses(source) == [
        "agents.connector._RETRYABLE",
        "host._answers",
        "_Client._ensure_directory",
        "_Host._services",
    ]


def test_examples_take_their_settings_from_the_environment_and_flags() -> None:
    environ = {
        "PASARELA_GATEWAY_URL": "http://127.0.0.1:8700",
        "PASARELA_AGENCY": CODE,
        "PASARELA_KEY": "key.pem",
        "PASARELA_CERT": "cert.pem",
        "PASARELA_CA": "ca.pem",
        "PORT": "9100",
        "PASARELA_DEFECTS": "wrong-corr",
    }
    settings = reference.parse_settings(["--host", "0.0.0.0"], environ)
    assert settings == reference.Settings(
        gateway_url="http://127.0.0.1:8700",
        agency=CODE,
        key=Path("key.pem"),
        cert=Path("cert.pem"),
        ca=Path("ca.pem"),
        host="0.0.0.0",
        port=9100,
    )
    assert broken.parse_settings(["--host", "0.0.0.0"], environ) == (settings, {"wrong-corr"})
    assert broken.parse_settings(["--defects", "none"], environ)[1] == frozenset()
    with pytest.raises(SystemExit):
        broken.parse_settings(["--defects", "no-such-defect"], environ)
    with pytest.raises(SystemExit):
        reference.parse_settings([], {})


# -- the reference connector ----------------------------------------------------------------
async def test_reference_answers_deliveries_and_repeats_its_first_answer(
    pasarela_gateway: PasarelaGateway,
    pasarela_agency: AgencyFactory,
    pasarela_portal: PasarelaPortal,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with _reference(pasarela_gateway, pasarela_agency) as running:
        reply = await pasarela_portal.send(to=CODE, body={"NumSolicitud": "AT001W-1"})
        assert reply.status == 200
        assert reply.json() == {"estado": "00", "recibido": reply.jti}
        assert (reply.claims.iss, reply.claims.aud, reply.claims.corr) == (
            CODE,
            "PORTAL",
            reply.jti,
        )
        echo = await pasarela_portal.send(to=CODE, service="ping", body={"ping": 1})
        assert echo.json() == {"ping": 1}

        first = running.deliveries[0]
        url = f"{running.url}{MESSAGES}"
        capsys.readouterr()
        again = await _post(url, first.body, {**first.headers, "Pasarela-Test-Case": "pytest#2"})
        assert (again.status, again.body) == (first.answer.status, first.answer.body)
        assert again.header("Pasarela-Signature") == first.answer.header("Pasarela-Signature")
        (logged,) = _log_lines(capsys, "delivery")
        assert logged["case"] == "pytest#2"
        assert (logged["iss"], logged["svc"], logged["status"]) == ("PORTAL", "ati.request", 200)

        missing = await _post(url, first.body, _without(first.headers, "Pasarela-Receipt"))
        assert missing.status == 400
        assert missing.json()["type"] == "urn:pasarela:problem:malformed"
        tampered = await _post(url, first.body + b" ", first.headers)
        assert tampered.json()["type"] == "urn:pasarela:problem:body-digest-mismatch"
    assert pasarela_gateway.alerts() == []


async def test_reference_trigger_sends_and_verifies_the_reply(
    pasarela_gateway: PasarelaGateway,
    pasarela_agency: AgencyFactory,
    pasarela_portal: PasarelaPortal,
) -> None:
    body = {"NumSolicitud": "AT001W-1", "Respuesta": "Se entrega la información."}
    async with _reference(pasarela_gateway, pasarela_agency) as running:
        answer = await _trigger(running, {"to": "PORTAL", "service": "ati.answer", "body": body})
    assert answer.status == 200, answer.body
    result = answer.json()
    assert result["status"] == 200
    assert result["receipt_verified"] is True
    assert result["body"] == {"status": "received", "jti": result["jti"]}
    assert result["answer_jti"] != result["jti"]
    (received,) = pasarela_portal.received
    assert received.claims.jti == result["jti"]
    assert received.json() == body


async def test_reference_reports_refusals_and_bad_triggers(
    pasarela_gateway: PasarelaGateway, pasarela_agency: AgencyFactory
) -> None:
    async with _reference(pasarela_gateway, pasarela_agency) as running:
        refused = await _trigger(running, {"to": "AG404", "service": "ping", "body": {}})
        assert refused.status == 200, refused.body
        result = refused.json()
        assert result["from"] == "gateway"
        assert result["receipt_verified"] is False
        assert result["status"] == 404
        assert result["body"]["type"] == "urn:pasarela:problem:unknown-receiver"
        assert result["body"]["jti"] == result["jti"]

        for bad in ({"to": "PORTAL", "service": "ping"}, {"to": "x", "service": "ping", "body": 1}):
            answer = await _trigger(running, bad)
            assert answer.status == 400
            assert "error" in answer.json()


async def test_reference_without_its_gateway(
    pasarela_gateway: PasarelaGateway, pasarela_agency: AgencyFactory
) -> None:
    (closed,) = free_ports(1)
    dead = f"http://127.0.0.1:{closed}"
    async with _reference(pasarela_gateway, pasarela_agency, gateway_url=dead) as running:
        health = await _post_get(f"{running.url}/health")
        assert health["conf"] == "not fetched yet"

        delivery = await _post(f"{running.url}{MESSAGES}", b"{}", {"Pasarela-Signature": "a.b.c"})
        assert delivery.status == 503
        assert delivery.header("Retry-After") == "1"
        assert delivery.json()["type"] == "urn:pasarela:problem:receiver-unavailable"

        trigger = await _trigger(running, {"to": "PORTAL", "service": "ping", "body": {}})
        assert trigger.status == 503
        assert trigger.json()["error"] == "gateway unreachable"


async def _post_get(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        return await response.json()


@pytest.mark.parametrize(
    ("folder", "extra"), [("python", {}), ("broken", {"PASARELA_DEFECTS": "none"})]
)
def test_example_runs_as_a_script(
    folder: str,
    extra: dict[str, str],
    pasarela_gateway: PasarelaGateway,
    pasarela_agency: AgencyFactory,
    pasarela_portal: PasarelaPortal,
) -> None:
    (port,) = free_ports(1)
    agency = pasarela_agency(
        CODE, endpoint=f"http://127.0.0.1:{port}{MESSAGES}", services={"ati.request"}
    )
    environment = {
        **os.environ,
        "PASARELA_GATEWAY_URL": pasarela_gateway.url,
        "PASARELA_AGENCY": CODE,
        "PASARELA_KEY": str(agency.key_path),
        "PASARELA_CERT": str(agency.certificate_path),
        "PASARELA_CA": str(pasarela_gateway.ca_certificate_path),
        "PORT": str(port),
        **extra,
    }
    script = ROOT / "examples" / "connectors" / folder / "connector.py"
    process = subprocess.Popen(
        [sys.executable, str(script)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/health")
                response = connection.getresponse()
                health = json.loads(response.read())
                connection.close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the connector did not listen within 20 s"
                time.sleep(0.05)
        assert response.status == 200
        assert health["agency"] == CODE
        reply = asyncio.run(pasarela_portal.send(to=CODE, body={"NumSolicitud": "AT001W-3"}))
        assert reply.json() == {"estado": "00", "recibido": reply.jti}
    finally:
        process.terminate()
        _, errors = process.communicate(timeout=10)
    lines = [json.loads(line) for line in errors.decode().splitlines() if line.startswith("{")]
    assert any(line["event"] == "delivery" and line["status"] == 200 for line in lines), errors
    (listening,) = [line for line in lines if line["event"] == "listening"]
    assert listening["url"] == f"http://127.0.0.1:{port}{MESSAGES}"
    assert listening.get("defects") == ([] if folder == "broken" else None)


# -- the broken connector -------------------------------------------------------------------
def test_defects_are_named_with_the_check_they_break() -> None:
    assert len(broken.DEFECTS) == 14
    assert all(check.split(".")[0] in {"provider", "consumer"} for check in broken.DEFECTS.values())
    assert len(set(broken.DEFECTS.values())) == len(broken.DEFECTS)
    assert broken.parse_defects(None) == frozenset(broken.DEFECTS)
    assert broken.parse_defects("all") == frozenset(broken.DEFECTS)
    assert broken.parse_defects("none") == frozenset()
    assert broken.parse_defects("wrong-corr, jti-from-body") == {"wrong-corr", "jti-from-body"}
    with pytest.raises(ValueError, match="no-such-defect"):
        broken.parse_defects("wrong-corr,no-such-defect")
    readme = (ROOT / "examples" / "connectors" / "broken" / "README.md").read_text()
    for name, check in broken.DEFECTS.items():
        assert f"`{name}`" in readme
        assert f"`{check}`" in readme


async def test_broken_without_defects_is_a_correct_connector(
    pasarela_gateway: PasarelaGateway,
    pasarela_agency: AgencyFactory,
    pasarela_portal: PasarelaPortal,
) -> None:
    async with _broken(pasarela_gateway, pasarela_agency) as running:
        reply = await pasarela_portal.send(to=CODE, body={"NumSolicitud": "AT001W-1"})
        assert reply.json() == {"estado": "00", "recibido": reply.jti}
        assert reply.claims.corr == reply.jti

        first = running.deliveries[0]
        url = f"{running.url}{MESSAGES}"
        again = await _post(url, first.body, first.headers)
        assert again.header("Pasarela-Signature") == first.answer.header("Pasarela-Signature")
        missing = await _post(url, first.body, _without(first.headers, "Pasarela-Receipt"))
        assert missing.json()["type"] == "urn:pasarela:problem:malformed"

        body = {"NumSolicitud": "AT001W-1", "Respuesta": "Sí."}
        request = {"to": "PORTAL", "service": "ati.answer", "body": body}
        answers = [await _trigger(running, request) for _ in range(2)]
        refused = await _trigger(running, {"to": "AG404", "service": "ping", "body": {}})
    results = [answer.json() for answer in answers]
    assert [r["receipt_verified"] for r in results] == [True, True]
    assert results[0]["jti"] != results[1]["jti"]
    assert [m.json() for m in pasarela_portal.received] == [body, body]
    assert refused.json()["from"] == "gateway"
    assert [alert["kind"] for alert in pasarela_gateway.alerts()] == ["unknown-receiver"]


@pytest.mark.parametrize("defect", ["wrong-corr", "answer-typ-jwt"])
async def test_broken_answers_fail_at_the_gateway(
    defect: str,
    pasarela_gateway: PasarelaGateway,
    pasarela_agency: AgencyFactory,
    pasarela_portal: PasarelaPortal,
) -> None:
    async with _broken(pasarela_gateway, pasarela_agency, defect):
        with pytest.raises(Refused) as refused:
            await pasarela_portal.send(to=CODE, body={"NumSolicitud": "AT001W-1"})
    assert (refused.value.status, refused.value.code) == (502, "bad-response-signature")


async def test_broken_duplicate_and_receipt_defects(
    pasarela_gateway: PasarelaGateway,
    pasarela_agency: AgencyFactory,
    pasarela_portal: PasarelaPortal,
) -> None:
    defects = ("fresh-answer-to-duplicate", "missing-receipt-accepted")
    async with _broken(pasarela_gateway, pasarela_agency, *defects) as running:
        await pasarela_portal.send(to=CODE, body={"NumSolicitud": "AT001W-1"})
        first = running.deliveries[0]
        url = f"{running.url}{MESSAGES}"
        again = await _post(url, first.body, first.headers)
        assert again.status == 200
        assert again.header("Pasarela-Signature") != first.answer.header("Pasarela-Signature")
        missing = await _post(url, first.body, _without(first.headers, "Pasarela-Receipt"))
        assert missing.status == 200
        forged = first.headers["Pasarela-Receipt"][:-4] + "AAAA"
        bad = await _post(url, first.body, {**first.headers, "Pasarela-Receipt": forged})
        assert bad.json()["type"] == "urn:pasarela:problem:bad-signature"


async def test_broken_jti_from_body_repeats_a_jti(
    pasarela_gateway: PasarelaGateway,
    pasarela_agency: AgencyFactory,
    pasarela_portal: PasarelaPortal,
) -> None:
    body = {"NumSolicitud": "AT001W-1"}
    request = {"to": "PORTAL", "service": "ati.answer", "body": body}
    async with _broken(pasarela_gateway, pasarela_agency, "jti-from-body") as running:
        results = [(await _trigger(running, request)).json() for _ in range(2)]
    digest = hashlib.sha256(json.dumps(body, separators=(",", ":")).encode()).hexdigest()
    assert [r["jti"] for r in results] == [f"{CODE}-{digest[:32]}"] * 2
    assert all(r["receipt_verified"] for r in results)
    assert len(pasarela_portal.received) == 1  # the gateway took the second for a retry
