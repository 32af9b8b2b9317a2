"""docs/openapi/connector.yaml: valid, and true to the protocol and the reference host."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from openapi_spec_validator import validate

from gateway.protocol import AGENCY_CODE, SERVICE_CODE, ProblemCode
from gateway.service import problem_response

SPEC = Path(__file__).resolve().parents[1] / "docs" / "openapi" / "connector.yaml"


def _spec() -> dict[str, Any]:
    document = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def test_document_is_valid_openapi_3_1() -> None:
    validate(_spec())


def test_codes_follow_the_protocol() -> None:
    """The agency and service patterns are the protocol's own."""
    schemas = _spec()["components"]["schemas"]
    assert schemas["AgencyCode"]["pattern"] == f"^{AGENCY_CODE.pattern}$"
    trigger = _spec()["paths"]["/trigger/send"]["post"]["requestBody"]["content"]
    service = trigger["application/json"]["schema"]["properties"]["service"]
    assert service["pattern"] == f"^{SERVICE_CODE.pattern}$"


def test_refusals_of_the_reference_host_fit_the_problem_schema() -> None:
    """What the agency host answers when it refuses (the gateway's problem builder) is a
    Problem, for every code a receiver may use."""
    problem = _spec()["components"]["schemas"]["Problem"]
    for code in (
        ProblemCode.MALFORMED,
        ProblemCode.BAD_SIGNATURE,
        ProblemCode.UNKNOWN_KEY,
        ProblemCode.EXPIRED,
        ProblemCode.REPLAY,
        ProblemCode.NOT_FOUND,
    ):
        response = problem_response(code, "refused", jti="j1")
        jsonschema.validate(json.loads(response.body), problem)
        assert response.header("Content-Type") == "application/problem+json"


def test_the_messages_endpoint_requires_both_headers() -> None:
    deliver = _spec()["paths"]["/agencies/{code}/messages"]["post"]
    required = {p["name"] for p in deliver["parameters"] if p.get("required")}
    assert {"Pasarela-Signature", "Pasarela-Receipt", "code"} <= required
