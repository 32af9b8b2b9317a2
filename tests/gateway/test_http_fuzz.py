"""Property: no header or body thrown at POST /v1/messages yields a 5xx or an unlogged refusal."""

from __future__ import annotations

import json
import string

from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.protocol import HEADER_SIGNATURE, b64url_encode
from gateway.testing import make_gateway, sign_message

_VISIBLE = st.text(alphabet=string.printable.strip(), max_size=200)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
_HEADER_OBJECT = st.fixed_dictionaries(
    {},
    optional={
        "alg": st.sampled_from(["EdDSA", "none", "HS256", "ES256"]) | _JSON,
        "typ": st.sampled_from(["pasarela-msg+jwt", "JWT"]) | _JSON,
        "kid": st.text(max_size=50) | _JSON,
        "jku": st.just("https://example.invalid/jwks"),
        "crit": st.lists(st.text(max_size=5), max_size=2),
    },
)
_CLAIMS = st.dictionaries(
    st.sampled_from(["iss", "aud", "svc", "jti", "iat", "exp", "bh", "corr", "x"]), _JSON
)


def _segment(value: object) -> str:
    return b64url_encode(json.dumps(value).encode())


_STRUCTURED = st.builds(
    lambda h, c, s: f"{_segment(h)}.{_segment(c)}.{b64url_encode(s)}",
    _HEADER_OBJECT,
    _CLAIMS,
    st.binary(max_size=70),
)
_SIGNATURES = st.none() | _VISIBLE | _STRUCTURED | st.just("valid")
_HEADER_NAMES = st.sampled_from(["X-Thing", "Content-Type", "Pasarela-Receipt", "Accept"])


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    signature=_SIGNATURES,
    extra=st.dictionaries(_HEADER_NAMES, _VISIBLE, max_size=3),
    body=st.binary(max_size=300),
)
async def test_arbitrary_input_gets_a_logged_4xx_problem(
    signature: str | None, extra: dict[str, str], body: bytes
) -> None:
    """Every refusal is a 4xx problem+json naming a code, with one log record saying the same."""
    world = make_gateway()
    headers = dict(extra)
    if signature == "valid":
        # A genuine signature over other bytes: the body digest must catch it.
        signature = sign_message(
            world.parties["AG001"], to="AG002", body=body + b"!", jti="f", now=world.clock.now()
        )
    if signature is not None:
        headers[HEADER_SIGNATURE] = signature
    async with TestClient(TestServer(world.app())) as client:
        resp = await client.post("/v1/messages", data=body, headers=headers)
        payload = await resp.read()
        assert 400 <= resp.status < 500, (resp.status, payload)
        assert resp.content_type == "application/problem+json"
        problem = json.loads(payload)
        assert problem["type"].startswith("urn:pasarela:problem:")
        assert problem["status"] == resp.status
        await world.gateway.log.sync()
        refusals = [r for r in world.store.rows if r.kind != "alert"]
        assert len(refusals) == 1
        assert refusals[0].fields["reason"] == problem["type"].rsplit(":", 1)[1]
    assert world.handled == []


_ADMIN_PATHS = st.sampled_from(
    [
        "/v1/admin/disconnect-all",
        "/v1/admin/agencies/AG001/quarantine",
        "/v1/admin/agencies/NOPE/connect",
        "/v1/admin/agencies/AG001/transitions",
        "/v1/admin/certificates/abc/revoke",
        "/v1/admin/generations",
        "/v1/admin/enrolments/xyz/approve",
        "/v1/enrolments",
    ]
)
_AUTH = st.none() | _VISIBLE | st.just("operator") | st.just("expired")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=_ADMIN_PATHS, auth=_AUTH, body=st.binary(max_size=200) | _JSON.map(json.dumps))
async def test_arbitrary_admin_and_enrolment_requests_get_logged_4xx_or_succeed(
    path: str, auth: str | None, body: bytes | str
) -> None:
    """Admin and enrolment input never yields a 5xx; every refusal is a logged problem+json."""
    world = make_gateway()
    headers: dict[str, str] = {}
    if auth == "operator":
        headers["Authorization"] = f"Bearer {world.operator_token()}"
    elif auth == "expired":
        headers["Authorization"] = f"Bearer {world.operator_token(ttl=1)}"
        world.clock.advance(120)
    elif auth is not None:
        headers["Authorization"] = auth
    async with TestClient(TestServer(world.app())) as client:
        resp = await client.post(path, data=body, headers=headers)
        payload = await resp.read()
        assert resp.status < 500, (resp.status, payload)
        await world.gateway.log.sync()
        if resp.status >= 400:
            assert resp.content_type == "application/problem+json"
            problem = json.loads(payload)
            last = [r for r in world.store.rows if r.kind != "alert"][-1]
            assert last.kind in {"admin-rejection", "enrolment-rejection"}
            assert last.fields["reason"] == problem["type"].rsplit(":", 1)[1]
        else:
            assert world.store.rows[-1].kind == "admin"
