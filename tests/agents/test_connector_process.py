"""Tests for agents.connector_process: settings, the trigger's requests and answers, the
exchange log and the aiohttp plumbing of a connector process."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization

from agents.conf import ConfCache
from agents.connector import Connector, RetryPolicy
from agents.connector_process import (
    CLIENT_MAX_SIZE,
    TEST_CASE_HEADER,
    BadTrigger,
    ExchangeLog,
    SendRequest,
    Settings,
    TriggerResult,
    add_env_option,
    connector_app,
    handle_delivery,
    handle_trigger,
    health_response,
    parse_settings,
    parse_trigger,
    send_for_trigger,
    settings_from_arguments,
    settings_parser,
)
from agents.verification import Directory, Identity, Refused
from gateway.admin import conf_document
from gateway.clock import ManualClock
from gateway.protocol import HEADER_RECEIPT, HEADER_SIGNATURE, MAX_BODY_BYTES
from gateway.testing import GATEWAY_URL, GatewayWorld, sign_message
from gateway.transport import WireRequest, WireResponse
from gateway.trust import private_key_pem
from pasarela.runtime import directory_from_trust

ROOT = Path(__file__).resolve().parents[2]
ENVIRONMENT = {
    "PASARELA_GATEWAY_URL": "http://127.0.0.1:8700",
    "PASARELA_AGENCY": "AG001",
    "PASARELA_KEY": "key.pem",
    "PASARELA_CERT": "cert.pem",
}
_TRIGGER_RESPONSES = yaml.safe_load(
    (ROOT / "docs" / "openapi" / "connector.yaml").read_text(encoding="utf-8")
)["paths"]["/trigger/send"]["post"]["responses"]


def assert_documented(result: TriggerResult) -> None:
    """The answer is one docs/openapi/connector.yaml describes for its status."""
    response = _TRIGGER_RESPONSES[str(result.status)]
    schema = response["content"]["application/json"]["schema"]
    jsonschema.validate(json.loads(json.dumps(result.document)), schema)


# -- settings ---------------------------------------------------------------------------------
def test_settings_come_from_the_environment() -> None:
    settings = parse_settings([], ENVIRONMENT)
    assert settings == Settings(
        gateway_url="http://127.0.0.1:8700",
        agency="AG001",
        key=Path("key.pem"),
        cert=Path("cert.pem"),
    )
    assert (settings.ca, settings.host, settings.port) == (None, "127.0.0.1", 8800)
    assert settings.endpoint == "http://127.0.0.1:8800/agencies/AG001/messages"


def test_a_flag_wins_over_its_variable() -> None:
    environ = {**ENVIRONMENT, "PORT": "9100", "HOST": "0.0.0.0", "PASARELA_CA": ""}
    settings = parse_settings(["--port", "9200", "--agency", "AG002", "--ca", "ca.pem"], environ)
    assert (settings.agency, settings.port, settings.host) == ("AG002", 9200, "0.0.0.0")
    assert settings.ca == Path("ca.pem")


def test_missing_settings_and_a_bad_port_end_the_program(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as ended:
        parse_settings([], {"PASARELA_AGENCY": "AG001", "PASARELA_KEY": ""})
    assert ended.value.code == 2
    error = capsys.readouterr().err
    assert "missing: --gateway-url ($PASARELA_GATEWAY_URL), --key ($PASARELA_KEY)" in error
    assert "--cert ($PASARELA_CERT)" in error
    with pytest.raises(SystemExit):
        parse_settings(["--port", "http"], ENVIRONMENT)
    assert "not a number: 'http'" in capsys.readouterr().err


def test_a_connector_adds_its_own_flags(capsys: pytest.CaptureFixture[str]) -> None:
    environ = {**ENVIRONMENT, "PASARELA_EXTRA": "from-env"}
    parser = settings_parser(prog="mine.py", description="mine", environ=environ)
    add_env_option(parser, "--extra", "PASARELA_EXTRA", "something of mine", environ)
    args = parser.parse_args([])
    assert args.extra == "from-env"
    assert settings_from_arguments(parser, args).agency == "AG001"
    parser.print_help()
    help_text = capsys.readouterr().out
    assert "mine.py" in help_text
    assert "$PASARELA_EXTRA" in help_text
    assert "$PASARELA_GATEWAY_URL" in help_text


def write_credentials(world: GatewayWorld, folder: Path, code: str) -> tuple[Path, Path]:
    party = world.parties[code]
    key, cert = folder / f"{code}.key.pem", folder / f"{code}.cert.pem"
    key.write_bytes(private_key_pem(party.key))
    cert.write_bytes(party.record.certificate.public_bytes(serialization.Encoding.PEM))
    return key, cert


def test_settings_load_the_agencys_identity_and_the_ca(world: GatewayWorld, tmp_path: Path) -> None:
    key, cert = write_credentials(world, tmp_path, "AG001")
    ca = tmp_path / "ca.pem"
    ca.write_bytes(world.trust.ca.certificate.public_bytes(serialization.Encoding.PEM))
    settings = Settings(gateway_url=GATEWAY_URL, agency="AG001", key=key, cert=cert, ca=ca)
    assert settings.load_identity().kid == world.parties["AG001"].kid
    assert settings.load_ca() == world.trust.ca.certificate
    other = Settings(gateway_url=GATEWAY_URL, agency="AG002", key=key, cert=cert)
    with pytest.raises(ValueError, match="certifies AG001, not the agency AG002"):
        other.load_identity()
    assert other.load_ca() is None


# -- the trigger --------------------------------------------------------------------------
def test_a_trigger_asks_for_the_compact_json_of_its_body() -> None:
    asked = parse_trigger(b'{"to": "AG002", "service": "ati.request", "body": {"a": "\xc3\xb1"}}')
    assert asked == SendRequest(to="AG002", service="ati.request", body='{"a":"ñ"}'.encode())


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"not json", 'expected a JSON object {"to", "service", "body"}'),
        (b'["AG002"]', 'expected a JSON object {"to", "service", "body"}'),
        (b'{"to": "AG002", "service": "ping"}', 'expected a JSON object {"to", "service", "body"}'),
        (b'{"to": "ag002", "service": "ping", "body": 1}', '"to" must be an agency code'),
        (b'{"to": "AG002", "service": "Ping!", "body": 1}', '"service" must be a service code'),
    ],
)
def test_a_bad_trigger_says_what_is_wrong(raw: bytes, error: str) -> None:
    with pytest.raises(BadTrigger) as bad:
        parse_trigger(raw)
    assert str(bad.value) == error
    assert isinstance(bad.value, ValueError)


def test_trigger_results_are_the_documents_of_the_openapi_description() -> None:
    verified = TriggerResult.verified(status=201, body=b'{"ok":1}', jti="AG001-1", answer_jti="x")
    refusal = Refused(code="rate-limited", status=429, detail="slow down", problem={"type": "t"})
    results = {
        "receiver": verified,
        "gateway": TriggerResult.refused(refusal, jti="AG001-2"),
        "verification failed": TriggerResult.verification_failed("receipt: no", jti="AG001-3"),
        "gateway unreachable": TriggerResult.unreachable(OSError("down"), jti="AG001-4"),
        "bad-trigger": TriggerResult.bad_request(BadTrigger("no")),
    }
    for outcome, result in results.items():
        assert_documented(result)
        assert result.outcome == outcome
    assert verified.document == {
        "status": 201,
        "body": {"ok": 1},
        "receipt_verified": True,
        "jti": "AG001-1",
        "answer_jti": "x",
    }
    assert results["gateway"].document["body"] == {"type": "t"}
    assert results["gateway"].document["status"] == 429
    assert results["gateway unreachable"].status == 503
    assert "jti" not in results["gateway unreachable"].document
    assert results["gateway unreachable"].log_fields()["jti"] == "AG001-4"
    text = TriggerResult.verified(status=200, body=b"\xffplain", jti="j", answer_jti="a")
    assert text.document["body"] == "\ufffdplain"
    problem_text = Refused(code="http-500", status=500, detail="oops")
    assert TriggerResult.refused(problem_text, jti="j").document["body"] == "oops"


def connector(world: GatewayWorld, **options: Any) -> Connector:
    party = world.parties["AG001"]
    return Connector(
        identity=Identity(code="AG001", key=party.key, certificate=party.record.certificate),
        gateway_url=GATEWAY_URL,
        transport=world.transport,
        clock=world.clock,
        randomness=world.randomness,
        directory_source=lambda: directory_from_trust(world.trust, gateway_code="PASARELA"),
        retry=RetryPolicy(attempts=1),
        **options,
    )


async def test_send_for_trigger_reports_how_the_send_ended(world: GatewayWorld) -> None:
    client = connector(world)
    verified = await send_for_trigger(client, SendRequest(to="AG002", service="ping", body=b"{}"))
    assert (verified.status, verified.outcome) == (200, "receiver")
    assert verified.document["body"] == {}
    assert verified.document["answer_jti"] == f"re-{verified.jti}"

    refused = await send_for_trigger(client, SendRequest(to="AG404", service="ping", body=b"{}"))
    assert (refused.status, refused.outcome) == (200, "gateway")
    assert refused.document["status"] == 404

    relay = world.transport.route(GATEWAY_URL)
    assert relay is not None

    async def without_receipt(request: WireRequest) -> WireResponse:
        answer = await relay(request)
        headers = {k: v for k, v in answer.headers.items() if k != HEADER_RECEIPT}
        return WireResponse(status=answer.status, headers=headers, body=answer.body)

    world.transport.mount(GATEWAY_URL, without_receipt)
    failed = await send_for_trigger(client, SendRequest(to="AG002", service="ping", body=b"{}"))
    assert (failed.status, failed.document["reason"]) == (
        502,
        "receipt: HTTP 200 without a receipt",
    )

    world.transport.set_down(GATEWAY_URL)
    down = await send_for_trigger(client, SendRequest(to="AG002", service="ping", body=b"{}"))
    assert (down.status, down.outcome) == (503, "gateway unreachable")
    assert down.jti is not None
    for result in (verified, refused, failed, down):
        assert_documented(result)


# -- the log ----------------------------------------------------------------------------------
def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_the_log_writes_one_json_line_per_exchange(world: GatewayWorld) -> None:
    stream = io.StringIO()
    log = ExchangeLog(stream=stream, clock=ManualClock(12.3456), connector="test")
    token = sign_message(world.parties["PORTAL"], to="AG001", jti="PORTAL-1", now=0, body=b"{}")
    refusal = WireResponse(status=409, body=b'{"type": "urn:pasarela:problem:replay"}')
    log.delivery({HEADER_SIGNATURE: token, TEST_CASE_HEADER: "c#1"}, b"{}", refusal)
    log.delivery({}, b"x" * 3, WireResponse(status=200))
    asked = SendRequest(to="AG002", service="ping", body=b"{}")
    result = TriggerResult.unreachable("down", jti="AG001-1")
    log.send({TEST_CASE_HEADER: "c#2"}, request=asked, result=result)
    log.send({}, result=TriggerResult.bad_request("no"))
    log.send({}, request=asked, outcome="crash", error="RuntimeError()")
    log.event("listening", url="http://127.0.0.1:8800")
    delivery, anonymous, send, bad, crash, listening = lines(stream)
    assert delivery == {
        "at": 12.346,
        "event": "delivery",
        "connector": "test",
        "case": "c#1",
        "iss": "PORTAL",
        "jti": "PORTAL-1",
        "svc": "ping",
        "bytes": 2,
        "status": 409,
        "problem": "replay",
    }
    assert (anonymous["case"], anonymous["iss"], anonymous["problem"]) == (None, None, None)
    assert send == {
        "at": 12.346,
        "event": "send",
        "connector": "test",
        "case": "c#2",
        "to": "AG002",
        "service": "ping",
        "jti": "AG001-1",
        "status": 503,
        "outcome": "gateway unreachable",
        "answer_status": None,
        "reason": "down",
    }
    assert (bad["status"], bad["outcome"], bad["error"]) == (400, "bad-trigger", "no")
    assert (crash["outcome"], crash["to"]) == ("crash", "AG002")
    assert listening["event"] == "listening"


def test_the_log_writes_to_the_current_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    ExchangeLog().event("conf", exp=1)
    (line,) = capsys.readouterr().err.splitlines()
    assert json.loads(line)["event"] == "conf"


# -- the aiohttp side ------------------------------------------------------------------------
class Process:
    """A connector process over the in-memory world: its conf cache, log and receipts."""

    def __init__(self, world: GatewayWorld) -> None:
        self.world = world
        self.stream = io.StringIO()
        self.log = ExchangeLog(stream=self.stream, clock=world.clock)
        self.conf = ConfCache(gateway_url=GATEWAY_URL, transport=world.transport, clock=world.clock)
        self.received: list[tuple[WireRequest, Directory]] = []
        self.send: Callable[[SendRequest], Awaitable[TriggerResult]] = self.unreachable
        self.closed = False

    async def serve_conf(self, request: WireRequest) -> WireResponse:
        body, signature = conf_document(self.world.gateway)
        return WireResponse(status=200, headers={HEADER_SIGNATURE: signature}, body=body)

    async def receive(self, request: WireRequest, directory: Directory) -> WireResponse:
        self.received.append((request, directory))
        return WireResponse(status=200, headers={"Content-Type": "application/json"}, body=b"{}")

    async def unreachable(self, asked: SendRequest) -> TriggerResult:
        return TriggerResult.unreachable("nobody", jti="AG001-1")

    async def deliver(self, request: web.Request) -> web.Response:
        return await handle_delivery(request, conf=self.conf, receive=self.receive, log=self.log)

    async def trigger(self, request: web.Request) -> web.Response:
        return await handle_trigger(request, send=self.send, log=self.log)

    async def health(self, request: web.Request) -> web.Response:
        party = self.world.parties["AG001"]
        identity = Identity(code="AG001", key=party.key, certificate=party.record.certificate)
        return health_response(identity, self.conf, extra=True)

    async def aclose(self) -> None:
        self.closed = True


@pytest.fixture
async def process(world: GatewayWorld) -> AsyncIterator[tuple[Process, TestClient[Any, Any]]]:
    running = Process(world)
    app = connector_app(running)
    async with TestClient(TestServer(app)) as client:
        yield running, client
    assert running.closed


async def test_a_delivery_waits_for_the_configuration_document(
    process: tuple[Process, TestClient[Any, Any]],
) -> None:
    running, client = process
    running.world.transport.set_down(GATEWAY_URL)
    headers = {TEST_CASE_HEADER: "d#1"}
    response = await client.post("/agencies/AG001/messages", data=b"{}", headers=headers)
    assert (response.status, response.headers["Retry-After"]) == (503, "1")
    assert (await response.json())["type"] == "urn:pasarela:problem:receiver-unavailable"
    assert running.received == []

    running.world.transport.set_down(GATEWAY_URL, down=False)
    running.world.transport.mount(GATEWAY_URL, running.serve_conf)
    response = await client.post("/agencies/AG001/messages", data=b'{"a":1}', headers=headers)
    assert response.status == 200
    ((request, directory),) = running.received
    assert (request.body, request.url.endswith("/agencies/AG001/messages")) == (b'{"a":1}', True)
    assert directory.gateway_code == "PASARELA"
    health = await (await client.get("/health")).json()
    assert (health["agency"], health["conf"], health["extra"]) == ("AG001", "loaded", True)
    logged = [line for line in lines(running.stream) if line["event"] == "delivery"]
    assert [(line["case"], line["status"]) for line in logged] == [("d#1", 503), ("d#1", 200)]


async def test_a_delivery_over_a_mebibyte_is_refused(
    process: tuple[Process, TestClient[Any, Any]],
) -> None:
    """Refused by the connector (problem+json), not by aiohttp's limit: the app takes bodies
    up to CLIENT_MAX_SIZE, for triggers the gateway is to refuse as too large."""
    assert CLIENT_MAX_SIZE > MAX_BODY_BYTES
    running, client = process
    body = io.BytesIO(b"x" * (MAX_BODY_BYTES + 1))
    response = await client.post("/agencies/AG001/messages", data=body)
    assert response.status == 413
    assert (await response.json())["type"] == "urn:pasarela:problem:payload-too-large"
    (line,) = lines(running.stream)
    assert (line["bytes"], line["problem"]) == (MAX_BODY_BYTES + 1, "payload-too-large")


async def test_a_trigger_is_parsed_sent_logged_and_answered(
    process: tuple[Process, TestClient[Any, Any]],
) -> None:
    running, client = process
    headers = {TEST_CASE_HEADER: "t#1"}
    bad = await client.post("/trigger/send", data=b"{}", headers=headers)
    assert (bad.status, await bad.json()) == (
        400,
        {"error": 'expected a JSON object {"to", "service", "body"}'},
    )
    asked = {"to": "AG002", "service": "ping", "body": [1]}
    answer = await client.post("/trigger/send", json=asked, headers=headers)
    assert (answer.status, await answer.json()) == (
        503,
        {"error": "gateway unreachable", "reason": "nobody"},
    )

    async def crash(asked: SendRequest) -> TriggerResult:
        raise RuntimeError("boom")

    running.send = crash
    crashed = await client.post("/trigger/send", json=asked, headers=headers)
    assert crashed.status == 500
    outcomes = [(line["case"], line["outcome"]) for line in lines(running.stream)]
    assert outcomes == [("t#1", "bad-trigger"), ("t#1", "gateway unreachable"), ("t#1", "crash")]
    assert lines(running.stream)[-1]["error"] == "RuntimeError('boom')"
