"""The kit's parts: JSON-path differences, check selection, and the gateway it plays."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509

from agents.verification import verify_conf
from gateway.protocol import HEADER_SIGNATURE
from pasarela.conformance import CHECKS, KitSettings, UsageError, select_checks
from pasarela.conformance.model import Difference, differences
from pasarela.conformance.session import Session
from pasarela.processes import free_ports
from tests.conformance.conftest import RefusingConnector


def test_differences_name_json_paths_and_ignore_unnamed_members() -> None:
    expected = {"status": 409, "body": {"type": "urn:pasarela:problem:replay"}, "x-y": 1}
    actual = {"status": 200, "body": {"type": "urn:pasarela:problem:replay", "extra": 1}}
    assert differences(expected, actual) == [
        Difference("$.status", 409, 200),
        Difference("$.x-y", 1, "<missing>"),
    ]


def test_differences_take_predicates_lists_and_tell_bools_from_numbers() -> None:
    def positive(value: object) -> str | None:
        return None if isinstance(value, int) and value > 0 else "a positive integer"

    assert differences({"n": positive}, {"n": 3}) == []
    assert differences({"n": positive}, {"n": -1}) == [Difference("$.n", "a positive integer", -1)]
    assert differences([{"a": 1}, {"a": 2}], [{"a": 1}, {"a": 3}]) == [Difference("$[1].a", 2, 3)]
    assert differences({"ok": True}, {"ok": 1}) == [Difference("$.ok", True, 1)]
    assert differences({"odd name": 1}, {}) == [Difference('$["odd name"]', 1, "<missing>")]
    assert differences({"a": {"b": 1}}, {"a": "text"}) == [Difference("$.a", "an object", "text")]


def test_checks_are_selected_by_id_and_glob_and_unknown_names_are_usage_errors() -> None:
    assert [c.id for c in select_checks(["provider.replay"])] == ["provider.replay"]
    consumer = select_checks(["consumer.*"], ["consumer.retry-*,consumer.signs"])
    assert "consumer.retry-503" not in {c.id for c in consumer}
    assert {c.side for c in consumer} == {"consumer"}
    assert len(select_checks()) == len(CHECKS)
    with pytest.raises(UsageError, match=r"no check matches 'provider\.typo'"):
        select_checks(["provider.typo"])
    with pytest.raises(UsageError, match="leave no check"):
        select_checks(["provider.replay"], ["provider.*"])


async def test_the_kits_gateway_serves_a_genuine_configuration_document(
    refusing_connector: RefusingConnector, kit_state: Path
) -> None:
    """The connector can verify the kit's document against the state's CA; the peer and
    the agency are connected in it; what the kit does not play is a problem+json 404."""
    (port,) = free_ports(1)
    settings = KitSettings(connector=refusing_connector.url, agency="AG001", state=kit_state,
                           port=port)  # fmt: skip
    ca = x509.load_pem_x509_certificate((kit_state / "ca" / "cert.pem").read_bytes())
    async with Session.open(settings), aiohttp.ClientSession() as client:
        async with client.get(f"{settings.gateway_url}/v1/conf") as response:
            body = await response.read()
            signature = response.headers[HEADER_SIGNATURE]
        directory = verify_conf(body=body, signature=signature, now=time.time(),
                                ca_certificate=ca)  # fmt: skip
        assert directory.gateway_code == "PASARELA"
        async with client.post(f"{settings.gateway_url}/v1/enrolments", data=b"{}") as response:
            assert response.status == 404
            assert response.content_type == "application/problem+json"
        async with client.post(f"{settings.gateway_url}/v1/messages", data=b"junk") as response:
            assert response.status == 400
            assert (await response.json())["type"] == "urn:pasarela:problem:malformed"
