"""Techniques against the signed token: JOSE header tricks, forged or tampered claims,
replays, stale and future tokens, impersonation, oversized and hostile payloads."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from agents.adversaries.lab import Lab
from agents.adversaries.model import Expected, Observation, Reference, Run, Technique
from gateway.protocol import MAX_BODY_BYTES, b64url_encode

__all__ = ["TOKEN_TECHNIQUES"]

_API2 = "API2:2023 Broken Authentication"
_FORGE = "T1606 Forge Web Credentials"
_ALT = "T1550.001 Use Alternate Authentication Material: Application Access Token"


def _refused(*codes: str) -> Expected:
    """Refused with one of ``codes``, and an alert of one of those kinds."""
    return Expected(codes=frozenset(codes), alert=True, alert_kinds=frozenset(codes))


async def _alg_none(lab: Lab, o: Observation) -> None:
    token = lab.token(lab.sender)
    token.header["alg"] = "none"
    o.agency = lab.sender
    await lab.send(o, token.compact(signature=b""))


async def _hmac_public_key(lab: Lab, o: Observation) -> None:
    """HS256 keyed with the sender's public key: a verifier that lets the token choose the
    algorithm would check this MAC with the 'key' it holds for the sender and accept."""
    token = lab.token(lab.sender)
    token.header["alg"] = "HS256"
    public = (
        lab.identities[lab.sender]
        .certificate.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    unsigned = token.compact(signature=b"").rsplit(".", 1)[0]
    mac = hmac.new(public, unsigned.encode("ascii"), hashlib.sha256).digest()
    await lab.send(o, f"{unsigned}.{b64url_encode(mac)}")


def _kid_injection(kid: str) -> Run:
    async def run(lab: Lab, o: Observation) -> None:
        await lab.send(o, lab.token(lab.sender, kid=kid).compact())

    return run


def _fetching_header(name: str) -> Run:
    """A header that points the verifier elsewhere; the gateway must refuse, never fetch."""

    async def run(lab: Lab, o: Observation) -> None:
        attacker = lab.new_key()
        async with lab.probe() as probe:
            token = lab.token(lab.sender, key=attacker)
            if name in ("jku", "x5u"):
                token.header[name] = f"{probe.url}/keys"
            elif name == "jwk":
                raw = attacker.public_key().public_bytes(
                    serialization.Encoding.Raw, serialization.PublicFormat.Raw
                )
                token.header["jwk"] = {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)}
            else:
                token.header["x5c"] = [_self_signed(attacker, lab.sender, now=lab.now())]
            await lab.send(o, token.compact())
            if probe.hits:
                o.blocked = False
                o.notes.append(f"the gateway fetched {probe.hits}")

    return run


def _self_signed(key: Ed25519PrivateKey, code: str, *, now: float) -> str:
    """A base64 DER certificate for ``code`` signed by the attacker's own key."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, code)])
    issued = dt.datetime.fromtimestamp(now, tz=dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(issued - dt.timedelta(days=1))
        .not_valid_after(issued + dt.timedelta(days=30))
        .sign(key, None)
    )
    return base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()


async def _unknown_crit(lab: Lab, o: Observation) -> None:
    token = lab.token(lab.sender)
    token.header["crit"] = ["pasarela-priority"]
    token.header["pasarela-priority"] = "high"
    await lab.send(o, token.compact())


async def _signature_stripped(lab: Lab, o: Observation) -> None:
    await lab.send(o, lab.token(lab.sender).compact(signature=b""))
    head, claims, _ = lab.token(lab.sender).compact().split(".")
    await lab.send(o, f"{head}.{claims}")


async def _body_tampered(lab: Lab, o: Observation) -> None:
    body = b'{"NumSolicitud": "AS001T0000001"}'
    token = lab.token(lab.sender, body=body).compact()
    await lab.send(o, token, b'{"NumSolicitud": "AS001T0000001", "extra": "injected"}')


async def _claims_tampered(lab: Lab, o: Observation) -> None:
    """Sign for one receiver and service, then edit ``aud`` and ``svc`` without re-signing."""
    for claim, value in (("aud", lab.other), ("svc", "ati.request")):
        token = lab.token(lab.sender)
        signed = token.compact()
        token.claims[claim] = value
        head, claims, _ = token.compact(signature=b"").split(".")
        await lab.send(o, f"{head}.{claims}.{signed.rsplit('.', 1)[1]}")


async def _replay_other_body(lab: Lab, o: Observation) -> None:
    """A message the sender really sent, sent again by someone else with another body; and
    the sender's key reusing a ``jti`` for another body."""
    body = b'{"n": 1}'
    token = lab.token(lab.sender, body=body, jti="lab-replay-" + lab.sender).compact()
    original = await lab.post(
        "/v1/messages",
        body=body,
        headers={"Pasarela-Signature": token, "Content-Type": "application/json"},
    )
    o.notes.append(f"original delivery: HTTP {original[0]}")
    await lab.send(o, token, b'{"n": 2}')
    reused = lab.token(lab.sender, body=b'{"n": 3}', jti="lab-replay-" + lab.sender)
    await lab.send(o, reused.compact(), b'{"n": 3}')


async def _replay_after_window(lab: Lab, o: Observation) -> None:
    """A message signed ten minutes ago (as if captured then) sent now."""
    token = lab.token(lab.sender, iat=lab.now() - 600, lifetime=60).compact()
    await lab.send(o, token)


async def _expired(lab: Lab, o: Observation) -> None:
    token = lab.token(lab.sender, iat=lab.now() - 120, lifetime=60).compact()
    await lab.send(o, token)


async def _iat_future(lab: Lab, o: Observation) -> None:
    token = lab.token(lab.sender, iat=lab.now() + 600, lifetime=60).compact()
    await lab.send(o, token)


async def _impersonation(lab: Lab, o: Observation) -> None:
    """The sender's valid key, signing as another agency."""
    token = lab.token(lab.sender)
    token.claims["iss"] = lab.other
    o.agency = lab.sender
    await lab.send(o, token.compact())


async def _service_not_granted(lab: Lab, o: Observation) -> None:
    """Calls to services the receiver does not offer or the sender may not call."""
    o.agency = lab.sender
    for service in ("registry.export", "admin.keys"):
        await lab.send(o, lab.token(lab.sender, to=lab.other, service=service).compact())


async def _deeply_nested(lab: Lab, o: Observation) -> None:
    """Claims nested 2,000 levels deep (deeper than Python's recursion limit, small enough
    to fit the 8 KiB header limit): the parser must refuse, not crash."""
    token = lab.token(lab.sender)
    head = b64url_encode(json.dumps(token.header).encode())
    claims = b64url_encode(b'{"iss": ' + b"[" * 2_000 + b"]" * 2_000 + b"}")
    signature = lab.identities[lab.sender].key.sign(f"{head}.{claims}".encode())
    await lab.send(o, f"{head}.{claims}.{b64url_encode(signature)}")


async def _oversized(lab: Lab, o: Observation) -> None:
    body = b"{" + b" " * (MAX_BODY_BYTES - 1) + b"}"  # one byte over
    await lab.send(o, lab.token(lab.sender, body=body).compact(), body)


TOKEN_TECHNIQUES: tuple[Technique, ...] = (
    Technique(
        id="alg-none",
        title="Unsigned token (alg: none)",
        description="A token whose header says alg none and carries no signature.",
        references=Reference(rfc8725="3.1, 3.2", owasp=_API2, attack=_FORGE),
        expected=_refused("algorithm-not-allowed"),
        run=_alg_none,
    ),
    Technique(
        id="hmac-public-key",
        title="Algorithm confusion: HS256 keyed with the sender's public key",
        description="The MAC a verifier that trusts the header's alg would accept.",
        references=Reference(rfc8725="2.1, 3.1", owasp=_API2, attack=_FORGE),
        expected=_refused("algorithm-not-allowed"),
        run=_hmac_public_key,
    ),
    Technique(
        id="kid-path-traversal",
        title="kid injection: a file path",
        description="kid '../../../../etc/passwd': key lookup must be an exact match.",
        references=Reference(rfc8725="3.10", owasp="API8:2023 Security Misconfiguration"),
        expected=_refused("unknown-key", "malformed"),
        run=_kid_injection("../../../../etc/passwd"),
    ),
    Technique(
        id="kid-sql-injection",
        title="kid injection: SQL text",
        description="kid \"x' OR '1'='1\": key lookup must never build a query from it.",
        references=Reference(rfc8725="3.10", owasp="API8:2023 Security Misconfiguration"),
        expected=_refused("unknown-key", "malformed"),
        run=_kid_injection("x' OR '1'='1"),
    ),
    *(
        Technique(
            id=f"{name}-header",
            title=f"{name} header pointing the verifier elsewhere",
            description=f"A token signed by the attacker's key with a {name} header naming "
            "that key; the gateway must refuse it and never fetch anything.",
            references=Reference(
                rfc8725="3.10", owasp="API7:2023 Server Side Request Forgery", attack=_FORGE
            ),
            expected=_refused("forbidden-header"),
            run=_fetching_header(name),
        )
        for name in ("jku", "x5u", "jwk", "x5c")
    ),
    Technique(
        id="unknown-crit",
        title="Unknown critical header",
        description="crit lists an extension v1 does not define: the token must be refused.",
        references=Reference(rfc8725="3.1", owasp=_API2),
        expected=_refused("forbidden-header"),
        run=_unknown_crit,
    ),
    Technique(
        id="signature-stripped",
        title="Signature stripped",
        description="The sender's token with its signature removed (empty, then no segment).",
        references=Reference(rfc8725="3.1", owasp=_API2, attack=_FORGE),
        expected=_refused("bad-signature", "malformed"),
        run=_signature_stripped,
    ),
    Technique(
        id="body-tampered",
        title="Body changed after signing",
        description="A valid token with a body that is not the one it signed (bh).",
        references=Reference(
            owasp="API8:2023 Security Misconfiguration",
            attack="T1565.002 Transmitted Data Manipulation",
        ),
        expected=_refused("body-digest-mismatch"),
        run=_body_tampered,
    ),
    Technique(
        id="claims-tampered",
        title="Claims changed after signing (aud, svc)",
        description="The receiver and the service of a signed token edited without re-signing.",
        references=Reference(rfc8725="3.1", owasp=_API2, attack=_FORGE),
        expected=_refused("bad-signature"),
        run=_claims_tampered,
    ),
    Technique(
        id="replay-other-body",
        title="Replay with another body; jti reused",
        description="A delivered message sent again with another body, and the sender's key "
        "signing a second message under a jti it already used.",
        references=Reference(rfc8725="3.8", owasp=_API2, attack=_ALT),
        expected=_refused("body-digest-mismatch", "replay"),
        run=_replay_other_body,
    ),
    Technique(
        id="replay-after-window",
        title="Replay after the retention window",
        description="A message signed ten minutes ago, sent now: past exp, refused as expired.",
        references=Reference(rfc8725="3.8", owasp=_API2, attack=_ALT),
        expected=_refused("expired"),
        run=_replay_after_window,
    ),
    Technique(
        id="expired-token",
        title="Expired token",
        description="exp two minutes in the past.",
        references=Reference(rfc8725="3.10", owasp=_API2),
        expected=_refused("expired"),
        run=_expired,
    ),
    Technique(
        id="iat-in-future",
        title="Issued in the future, beyond the leeway",
        description="iat ten minutes ahead: a pre-minted token or a broken clock.",
        references=Reference(rfc8725="3.10", owasp=_API2),
        expected=_refused("clock-skew"),
        run=_iat_future,
    ),
    Technique(
        id="impersonation",
        title="Impersonation: the sender's valid key, another agency's iss",
        description="A signs a token claiming to be B: refused, and counted against A.",
        references=Reference(rfc8725="3.10", owasp=_API2, attack=_ALT),
        expected=_refused("sender-mismatch"),
        run=_impersonation,
    ),
    Technique(
        id="service-not-granted",
        title="Service not granted (broken function-level authorization)",
        description="Calls to services the receiver does not offer to the sender.",
        references=Reference(owasp="API5:2023 Broken Function Level Authorization"),
        expected=_refused("not-authorized"),
        run=_service_not_granted,
    ),
    Technique(
        id="deeply-nested-json",
        title="Deeply nested JSON claims",
        description="A signed payload of 2,000 nested arrays: refused, never a crash.",
        references=Reference(owasp="API4:2023 Unrestricted Resource Consumption"),
        expected=_refused("malformed"),
        run=_deeply_nested,
    ),
    Technique(
        id="oversized-body",
        title="Oversized body",
        description="A body one byte over the limit (1 MiB).",
        references=Reference(
            owasp="API4:2023 Unrestricted Resource Consumption",
            attack="T1499 Endpoint Denial of Service",
        ),
        expected=_refused("payload-too-large"),
        run=_oversized,
    ),
)
