"""Security fuzzing of the HTTP app: no forgery is accepted, every refusal is problem+json.

Hypothesis drives the aiohttp app in process with messages built from genuine ones and then
broken a few parts at a time (JOSE header, claims before or after signing, the signing key
and its trust state, signature bytes, the compact serialization, the body, HTTP headers) so
that inputs reach every check of the pipeline, not only the first; with admin requests under
forged operator tokens; with CSR garbage. For every input: no 5xx; the same client still
gets ``/v1/health``; every refusal is problem+json naming a known problem code; a message is
accepted only when an independent check (``cryptography`` and the test's own record of keys)
finds an EdDSA signature by the current key of the agency in ``iss``; the admin API changes
nothing without a genuine operator token; an enrolment never certifies a key by itself.

Examples per test come from the profile named by ``PASARELA_FUZZ_PROFILE``: ``ci`` (the
default) or ``fuzz`` (5000 per test, ``make fuzz``). The app is served behind the guarded
runner, as ``pasarela serve`` serves it. The regression tests at the end pin what the fuzzer
found (each was a bug, now fixed).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import json
import os
import string
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_runner import BaseRunner
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.admin import Admin
from gateway.clock import SeededRandomness
from gateway.detection import DetectionPolicy
from gateway.guard import GuardedAppRunner
from gateway.operators import TYP_ADMIN
from gateway.pipeline import Limits
from gateway.protocol import (
    HEADER_SIGNATURE,
    PROBLEM_CONTENT_TYPE,
    TYP_CONF,
    TYP_MESSAGE,
    TYP_RECEIPT,
    ProblemCode,
    b64url_encode,
)
from gateway.registry import StateEvent
from gateway.testing import GatewayWorld, Party, make_gateway, sign_message
from gateway.trust import KeyRecord, build_csr, generate_key

# Not "ci" itself: that is Hypothesis's own profile, which CI machines load for every test
# of the session. These are applied per test (``_budget``), never loaded globally.
settings.register_profile(
    "pasarela-ci",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("pasarela-fuzz", settings.get_profile("pasarela-ci"), max_examples=5000)
_PROFILE: Final = os.environ.get("PASARELA_FUZZ_PROFILE", "ci")


def _budget(ci_examples: int) -> settings:
    """The selected profile; under ``ci``, this test's share of the ~40 s CI budget."""
    profile = settings.get_profile(f"pasarela-{_PROFILE}")
    return settings(profile, max_examples=ci_examples) if _PROFILE == "ci" else profile


_AGENCIES: Final = ("AG001", "AG002", "PORTAL", "AG003")  # AG003 is disconnected
_MAX_BODY: Final = 4096  # a low limit keeps near-limit bodies cheap
_LEEWAY: Final = 30
_ADMIN_AUDIENCE: Final = "PASARELA/admin"
_PROBLEMS: Final = {code.type_uri: code for code in ProblemCode}
_B64: Final = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
_PRINTABLE = st.text(string.ascii_letters + string.digits + string.punctuation + " ", max_size=60)
_ED25519_OID: Final = bytes.fromhex("06032b6570")
DER, SPKI = Encoding.DER, PublicFormat.SubjectPublicKeyInfo

# Bounds of the strategies.
_MAX_HEADER: Final = 16_000  # the guarded server parses header fields up to 16 KiB
_MAX_JTI: Final = 128  # the protocol's limit
# br and zstd are refused by aiohttp's parser before the app: problem+json (the guarded
# server), but no log record, which this suite's log property would flag.
_ENCODINGS: Final = ("identity", " IDENTITY ", "compress", "x-custom", "", "gzip")


# -- the lab: keys in every trust state, and what the test knows of them ---------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Lab:
    world: GatewayWorld
    kids: Mapping[str, str]  # by role: AG001 (current), AG001@gen1, AG001@revoked, ...
    keys: Mapping[str, Ed25519PrivateKey]  # by role (the gateway's: only via Gateway.sign)
    #: The oracle's truth, from this module's own setup: each agency's one current key.
    current: Mapping[str, tuple[str, Ed25519PublicKey]]
    enrolment: str = ""  # a pending enrolment's id (the admin test's lab)

    def role(self, role: str, sender: str) -> str:
        """``@revoked``, ``@gen1``, ``@expired``: the sender's own key in that state."""
        if not role.startswith("@"):
            return role
        return sender + role if sender + role in self.kids else "stranger"


def _make_lab() -> _Lab:
    """Agencies in key generation 2, each with a superseded, a revoked and an expired key."""
    world = make_gateway(
        _AGENCIES,
        limits=Limits(max_body=_MAX_BODY, rate_per_second=0.01, burst=1),
        detection=DetectionPolicy(quarantine_after=3, flood_after=2),
    )
    trust, gateway, randomness = world.trust, world.gateway, world.randomness
    now = world.clock.now()
    world.registry.apply("AG003", StateEvent.DISCONNECT, actor="lab", reason="fixture")
    kids = {"gateway@gen1": gateway.key_record.kid, "operator": "ops"}
    kids["stranger"] = b64url_encode(hashlib.sha256(b"certified nowhere").digest())
    keys = {"operator": world.operator_key, "stranger": generate_key(randomness)}
    for code, party in world.parties.items():
        kids[f"{code}@gen1"], keys[f"{code}@gen1"] = party.kid, party.key
    trust.open_generation()
    gateway.key_record = trust.issue(
        gateway.config.code, gateway.key_record.public_key, randomness=randomness, now=now
    )
    kids["gateway"] = gateway.key_record.kid

    def certify(role: str, key: Ed25519PrivateKey, *, days_ago: int = 0) -> KeyRecord:
        code = role.split("@", maxsplit=1)[0]
        record = trust.issue(
            code, key.public_key(), randomness=randomness, now=now - days_ago * 86_400
        )
        kids[role], keys[role] = record.kid, key
        return record

    for code in _AGENCIES:
        # PORTAL keeps its key: one public key under a superseded and a current kid.
        key = keys[f"{code}@gen1"] if code == "PORTAL" else generate_key(randomness)
        world.parties[code] = Party(code=code, key=key, record=certify(code, key))  # for the echo
        trust.revoke(certify(f"{code}@revoked", generate_key(randomness)).kid)
        certify(f"{code}@expired", generate_key(randomness), days_ago=800)
    current = {code: (kids[code], keys[code].public_key()) for code in _AGENCIES}
    return _Lab(world=world, kids=kids, keys=keys, current=current)


_STALE: Final = ("@gen1", "@revoked", "@expired")  # the sender's own key, no longer current
_SIGNERS: Final = (*_AGENCIES, *_STALE, *_STALE, "stranger", "operator", "gateway")
_KIDS: Final = (*_SIGNERS, "AG002@revoked", "PORTAL@gen1", "gateway@gen1")
Client = TestClient[web.Request, web.Application]


class _GuardedTestServer(TestServer):
    """The app behind the guarded runner `pasarela serve` uses (header limits, problem+json
    for what aiohttp's own parser refuses)."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return GuardedAppRunner(self.app, **kwargs)


@contextlib.asynccontextmanager
async def _serve(world: GatewayWorld) -> AsyncIterator[Client]:
    async with TestClient(_GuardedTestServer(world.app())) as client:
        yield client


# -- oracles: independent of gateway.protocol and gateway.pipeline ---------------------------


def _strict_b64url(segment: str) -> bytes | None:
    """Canonical unpadded base64url (RFC 7515 section 2) decoded, else None."""
    try:
        raw = base64.b64decode(segment + "=" * (-len(segment) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == segment else None


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({name for name, _ in pairs}) != len(pairs):
        raise ValueError("duplicate member")
    return dict(pairs)


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw, object_pairs_hook=_unique)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _timely(claims: Mapping[str, Any], now: float) -> bool:
    iat, exp = claims.get("iat"), claims.get("exp")
    return isinstance(iat, int) and isinstance(exp, int) and iat - _LEEWAY <= now <= exp + _LEEWAY


def _forgery_findings(token: str | None, body: bytes, lab: _Lab) -> list[str]:
    """Why an accepted message should not have been: empty only for a genuine one."""
    parts = (token or "").split(".")
    if len(parts) != 3:
        return [f"{len(parts)} segments"]
    header_raw, claims_raw, signature = (_strict_b64url(part) for part in parts)
    if header_raw is None or claims_raw is None or signature is None:
        return ["a segment is not canonical base64url"]
    header, claims = _json_object(header_raw), _json_object(claims_raw)
    if header is None or claims is None:
        return ["header or claims not a JSON object with unique members"]
    iss = claims.get("iss")
    if not isinstance(iss, str) or iss not in lab.current:
        return [f"iss {iss!r} is no agency with a current key"]
    kid, public_key = lab.current[iss]
    findings = []
    try:
        public_key.verify(signature, f"{parts[0]}.{parts[1]}".encode("ascii"))
    except InvalidSignature:
        findings.append(f"signature does not verify with {iss}'s current key")
    if header != {"alg": "EdDSA", "typ": TYP_MESSAGE, "kid": kid}:
        findings.append(f"JOSE header {header!r}, not EdDSA by {iss}'s current kid")
    if claims.get("bh") != b64url_encode(hashlib.sha256(body).digest()):
        findings.append("bh is not the body's digest")
    if not _timely(claims, lab.world.clock.now()):
        findings.append("iat/exp do not cover now")
    return findings


def _genuine_operator_token(authorization: str | None, lab: _Lab) -> bool:
    """A bearer token signed by the operator's key, timely, for this gateway's admin API."""
    scheme, _, token = (authorization or "").partition(" ")
    parts = token.strip().split(".")
    if scheme.lower() != "bearer" or len(parts) != 3:
        return False
    _, claims_raw, signature = (_strict_b64url(part) for part in parts)
    try:
        lab.world.operator_key.public_key().verify(
            signature or b"", f"{parts[0]}.{parts[1]}".encode()
        )
    except (InvalidSignature, UnicodeEncodeError):
        return False
    claims = _json_object(claims_raw or b"") or {}
    aud = claims.get("aud")
    audience = aud == _ADMIN_AUDIENCE or (isinstance(aud, list) and _ADMIN_AUDIENCE in aud)
    return audience and _timely(claims, lab.world.clock.now())


def _problem_code(status: int, content_type: str, payload: bytes) -> ProblemCode:
    """Assert a refusal is an RFC 9457 document naming a known code; return that code."""
    assert 400 <= status < 500, (status, payload[:300])
    assert content_type == PROBLEM_CONTENT_TYPE, (status, content_type, payload[:300])
    document = json.loads(payload)
    code = _PROBLEMS.get(document.get("type"))
    assert code is not None, document
    assert document["status"] == status == code.status, document
    assert document["title"] == code.caption, document
    return code


async def _assert_alive(client: Client, *, keys_may_fail: bool = False) -> None:
    """The same client still gets a health report, with a working store."""
    resp = await client.get("/v1/health")
    report = await resp.json()
    assert report["checks"]["store"]["ok"] is True, report
    assert resp.status == 200 or (keys_may_fail and resp.status == 503), report


# -- message plans: a genuine message, then up to a few faults -------------------------------


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Final = _Absent()  # a header member or claim removed


@dataclass(frozen=True, slots=True)
class Now:
    """A NumericDate relative to the world's clock."""

    offset: int


@dataclass(frozen=True, slots=True)
class DigestOf:
    """A ``bh`` over other bytes than the body."""

    data: bytes


@dataclass(frozen=True, slots=True)
class JwkOf:
    """An embedded JWK (the ``jwk`` header) of a role's public key."""

    role: str


@dataclass(frozen=True, slots=True)
class Fault:
    """One broken part of a genuine message. Kinds, by ``name`` and ``value``:

    header, header-late (a JOSE member set before or after signing; ABSENT removes it),
    claim, claim-late (the same for claims), window (value: iat offset, lifetime),
    sign (name: the signing role; the kid follows), kid (name: the role whose kid is named),
    duplicate (name: header or claims; value: a member repeated ahead of the real one),
    signature (name: flip, truncate, extend, empty, zero, hmac; value: an int),
    serialization (name: drop, duplicate, pad, char, noncanonical, swapcase, standard,
    trailing-dot, deep; value: segment, int), body (name: append, flip, truncate; value: int).
    """

    kind: str
    name: str = ""
    value: object = None


@dataclass(frozen=True, slots=True)
class Body:
    """``nest`` levels of JSON array around ``data``, padded with spaces to ``pad_to``."""

    data: bytes = b"{}"
    nest: int = 0
    pad_to: int = 0

    def bytes(self) -> bytes:
        return (b"[" * self.nest + self.data + b"]" * self.nest).ljust(self.pad_to)


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """The HTTP side: the signature header(s), other headers."""

    signatures: str = "one"  # one | none | twice | plus-garbage | lowercase | two-spellings
    padding: int = 0  # whitespace around the token (HTTP trims it)
    extra: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class MessagePlan:
    sender: str = "AG001"
    receiver: str = "AG002"
    service: str = "ping"
    jti: str = "m-1"
    body: Body = Body()
    faults: tuple[Fault, ...] = ()
    envelope: Envelope = Envelope()


def _resolve(value: object, lab: _Lab, now: int) -> object:
    if isinstance(value, Now):
        return now + value.offset
    if isinstance(value, DigestOf):
        return b64url_encode(hashlib.sha256(value.data).digest())
    if isinstance(value, JwkOf):
        x = lab.keys[value.role].public_key().public_bytes_raw()
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(x)}
    return value


def _set(members: dict[str, object], name: str, value: object, lab: _Lab, now: int) -> None:
    if value is ABSENT:
        members.pop(name, None)
    else:
        members[name] = _resolve(value, lab, now)


def _segment(members: Mapping[str, object], duplicate: object = None) -> str:
    text = json.dumps(members, separators=(",", ":"))
    if isinstance(duplicate, tuple):  # (name, value) written ahead of the real member
        text = "{" + json.dumps(duplicate[0]) + ":" + json.dumps(duplicate[1]) + "," + text[1:]
    return b64url_encode(text.encode())


def _signature(how: str, arg: int, signature: bytes, signing_input: bytes, secret: bytes) -> bytes:
    if how == "flip" and signature:
        flipped = bytearray(signature)
        flipped[arg // 8 % len(signature)] ^= 1 << arg % 8
        return bytes(flipped)
    if how == "hmac":  # alg confusion: an HMAC keyed with a key anybody can read
        return hmac.new(secret, signing_input, hashlib.sha256).digest()
    cuts = {
        "truncate": signature[:-1],
        "extend": signature + b"\0",
        "empty": b"",
        "zero": bytes(64),
    }
    return cuts.get(how, signature)


def _reserialize(token: str, how: str, index: int, arg: int) -> str:
    parts = token.split(".")
    index %= len(parts)
    part = parts[index]
    if how == "drop":
        del parts[index]
    elif how == "duplicate":
        parts.insert(index, part)
    elif how == "pad":
        parts[index] = part + "=" * (1 + arg % 2)
    elif how == "char":
        at = arg % (len(part) + 1)
        parts[index] = part[:at] + "+/=*~%\t ."[arg % 9] + part[at:]
    elif how == "noncanonical" and len(part) % 4 in (2, 3) and part[-1] in _B64:
        # Flip an unused trailing bit: a lenient decoder reads the same bytes.
        parts[index] = part[:-1] + _B64[_B64.index(part[-1]) ^ 1]
    elif how == "swapcase":
        parts[index] = part.swapcase()
    elif how == "standard":
        parts[index] = part.replace("-", "+").replace("_", "/")
    elif how == "trailing-dot":
        parts.append("")
    elif how == "deep":  # nested deeper than the JSON parser goes, the token kept under 8 KB
        room = (_MAX_HEADER - len(token) + len(part)) * 3 // 4 - 6
        depth = max(0, min(1000 + arg % 2000, room // 2))
        parts[index] = b64url_encode(b'{"x":' + b"[" * depth + b"]" * depth + b"}")
    return ".".join(parts)


def _token(plan: MessagePlan, lab: _Lab, body: bytes) -> str:
    now = int(lab.world.clock.now())
    by_kind: dict[str, list[Fault]] = {}
    for fault in plan.faults:
        by_kind.setdefault(fault.kind, []).append(fault)
    signer = lab.role(([plan.sender] + [f.name for f in by_kind.get("sign", [])])[-1], plan.sender)
    kid = lab.role(([signer] + [f.name for f in by_kind.get("kid", [])])[-1], plan.sender)
    header: dict[str, object] = {"alg": "EdDSA", "typ": TYP_MESSAGE, "kid": lab.kids[kid]}
    claims: dict[str, object] = {
        "iss": plan.sender,
        "aud": plan.receiver,
        "svc": plan.service,
        "jti": plan.jti,
        "iat": now,
        "exp": now + 60,
        "bh": b64url_encode(hashlib.sha256(body).digest()),
    }
    for fault in by_kind.get("window", []):
        start, lifetime = fault.value if isinstance(fault.value, tuple) else (0, 60)
        claims.update(iat=now + start, exp=now + start + lifetime)
    for kind, members in (("header", header), ("claim", claims)):
        for fault in by_kind.get(kind, []):
            _set(members, fault.name, fault.value, lab, now)
    duplicates = {f.name: _resolve(f.value, lab, now) for f in by_kind.get("duplicate", [])}
    header_segment = _segment(header, duplicates.get("header"))
    claims_segment = _segment(claims, duplicates.get("claims"))
    if signer == "gateway":  # Gateway.sign writes its own header
        token = lab.world.gateway.sign(claims, typ=TYP_MESSAGE)
        header_segment, claims_segment, encoded = token.split(".")
        signature = base64.urlsafe_b64decode(encoded + "==")
    else:
        signature = lab.keys[signer].sign(f"{header_segment}.{claims_segment}".encode())
    for kind, members in (("header-late", header), ("claim-late", claims)):
        for fault in by_kind.get(kind, []):
            _set(members, fault.name, fault.value, lab, now)
    if "header-late" in by_kind:
        header_segment = _segment(header)
    if "claim-late" in by_kind:
        claims_segment = _segment(claims)
    secret = lab.current.get(plan.sender, lab.current["AG001"])[1].public_bytes_raw()
    for fault in by_kind.get("signature", []):
        signing_input = f"{header_segment}.{claims_segment}".encode()
        signature = _signature(fault.name, int(str(fault.value)), signature, signing_input, secret)
    token = f"{header_segment}.{claims_segment}.{b64url_encode(signature)}"
    for fault in by_kind.get("serialization", []):
        index, arg = fault.value if isinstance(fault.value, tuple) else (0, 0)
        token = _reserialize(token, fault.name, index, arg)
    return token


def _realize(plan: MessagePlan, lab: _Lab) -> tuple[list[tuple[str, str]], bytes, str | None]:
    """The request a plan stands for: headers, body, and the token the gateway reads."""
    body = signed = plan.body.bytes()
    token = _token(plan, lab, signed)
    for fault in (f for f in plan.faults if f.kind == "body"):
        arg = int(str(fault.value))
        if fault.name == "append":
            body += bytes([arg % 256])
        elif fault.name == "flip" and body:
            at = arg % len(body)
            body = body[:at] + bytes([body[at] ^ 1]) + body[at + 1 :]
        elif fault.name == "truncate":
            body = body[:-1]
    value = " " * plan.envelope.padding + token + " " * plan.envelope.padding
    value = value[:_MAX_HEADER]
    signatures = {
        "one": [(HEADER_SIGNATURE, value)],
        "none": [],
        "twice": [(HEADER_SIGNATURE, value), (HEADER_SIGNATURE, value)],
        "plus-garbage": [(HEADER_SIGNATURE, value), (HEADER_SIGNATURE, "x")],
        "lowercase": [(HEADER_SIGNATURE.lower(), value)],
        "two-spellings": [(HEADER_SIGNATURE, value), (HEADER_SIGNATURE.upper(), value)],
    }[plan.envelope.signatures]
    seen = ",".join(v.strip(" \t") for _, v in signatures) if signatures else None  # RFC 9110
    return [*signatures, *plan.envelope.extra], body, seen


async def _post(
    client: Client, headers: list[tuple[str, str]], body: bytes
) -> tuple[int, str, bytes]:
    """POST /v1/messages: over a raw socket when header names differ only in case (aiohttp's
    client would merge those into one)."""
    if len({name.lower() for name, _ in headers}) == len({name for name, _ in headers}):
        resp = await client.post("/v1/messages", data=body, headers=headers)
        return resp.status, resp.content_type, await resp.read()
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    fields = "".join(f"{name}: {value}\r\n" for name, value in headers)
    head = "POST /v1/messages HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n"
    writer.write(f"{head}Content-Length: {len(body)}\r\n{fields}\r\n".encode() + body)
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    response_head, _, payload = answer.partition(b"\r\n\r\n")
    status_line, *lines = response_head.decode("latin-1").split("\r\n")
    received = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines)}
    return int(status_line.split()[1]), received["content-type"].split(";")[0], payload


async def _exchange(plans: Sequence[MessagePlan], *, at_once: bool = False) -> list[int | str]:
    """Send the plans to a fresh lab, one after the other or all at once; check each answer,
    the log, the server's health. Returns each answer's status (2xx) or problem code."""
    lab = _make_lab()
    requests = [_realize(plan, lab) for plan in plans]
    outcomes: list[int | str] = []
    async with _serve(lab.world) as client:
        if at_once:
            answers = await asyncio.gather(*(_post(client, h, body) for h, body, _ in requests))
        else:
            answers = [await _post(client, headers, body) for headers, body, _ in requests]
        for (_, body, token), (status, content_type, payload) in zip(
            requests, answers, strict=True
        ):
            if status < 400:
                findings = _forgery_findings(token, body, lab)
                assert not findings, (status, findings, token)
                assert (status, payload) == (200, body)  # the echo receiver's answer
                outcomes.append(status)
            else:
                outcomes.append(_problem_code(status, content_type, payload).value)
        await _assert_alive(client)
        await lab.world.gateway.log.sync()
        logged = [r.fields["reason"] for r in lab.world.store.rows if r.kind == "rejection"]
        refused = [o for o in outcomes if isinstance(o, str)]
        assert sorted(map(str, logged)) == sorted(refused) if at_once else logged == refused
    return outcomes


# -- message strategies and properties -------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
_CODES = st.sampled_from([*_AGENCIES, "PASARELA", "NOPE1", "ag001", "AG001 ", "A", "", "AG0011"])
_JTI = st.sampled_from(["m-1", "m-2"]) | st.text(
    alphabet=string.ascii_letters + string.digits + "._:-", min_size=1, max_size=_MAX_JTI
)
_OFFSETS = st.sampled_from([-(10**6), -400, -331, -301, -91, -31, -30, 0, 29, 30, 31, 240, 300])
_HEADER_VALUES: Final[Mapping[str, st.SearchStrategy[object]]] = {
    "alg": st.sampled_from(["none", "HS256", "ES256", "Ed25519", "eddsa", "EdDSA ", ABSENT])
    | _JSON,
    "typ": st.sampled_from(["JWT", TYP_RECEIPT, TYP_CONF, TYP_ADMIN, "PASARELA-MSG+JWT", ABSENT]),
    "kid": st.sampled_from(["", "ops", "AG001", ABSENT]) | st.text(max_size=50) | _JSON,
    "jku": st.just("https://attacker.invalid/jwks.json"),
    "x5u": st.just("https://attacker.invalid/cert.pem"),
    "jwk": st.builds(JwkOf, st.sampled_from(["stranger", "AG001", "operator"])),
    "x5c": st.just(["MIIB"]),
    "crit": st.sampled_from([["b64"], [], ["exp"]]),
    "b64": st.just(False),
    "iss": _CODES,
}
_CLAIM_VALUES: Final[Mapping[str, st.SearchStrategy[object]]] = {
    "iss": _CODES | _JSON,
    "aud": _CODES | _JSON,
    "svc": st.sampled_from(["pong", "PING", "", "p" * 65, "ping ", ABSENT]) | _JSON,
    "jti": _JTI | st.sampled_from(["", "a b", "é", "x" * 129, ABSENT]) | _JSON,
    "iat": st.builds(Now, _OFFSETS) | st.sampled_from([1.5, "0", True, -1, 2**40, ABSENT]),
    "exp": st.builds(Now, _OFFSETS) | st.sampled_from([1.5, "0", True, -1, 2**40, ABSENT]),
    "bh": st.builds(DigestOf, st.binary(max_size=8))
    | st.sampled_from(["A" * 43, "A" * 42, "A" * 42 + "=", "+" * 43, ABSENT])
    | _JSON,
    "corr": _JTI | st.sampled_from(["", "a b", 7]),
    "x": _JSON,
    "pad": st.integers(0, 5500).map(lambda n: "p" * n),  # tokens up to ~8 KB
}


def _members(
    kind: str, values: Mapping[str, st.SearchStrategy[object]]
) -> st.SearchStrategy[Fault]:
    late = st.sampled_from([kind, kind, f"{kind}-late"])
    return st.sampled_from(sorted(values)).flatmap(
        lambda name: st.builds(Fault, late, st.just(name), values[name])
    )


_CORE_HEADERS = {name: _HEADER_VALUES[name] for name in ("alg", "typ", "kid")}
_FAULT_KINDS: Final[Mapping[str, st.SearchStrategy[Fault]]] = {
    "sign": st.builds(Fault, st.just("sign"), st.sampled_from(_SIGNERS)),
    "kid": st.builds(Fault, st.just("kid"), st.sampled_from(_KIDS)),
    "window": st.builds(
        Fault,
        st.just("window"),
        value=st.tuples(_OFFSETS, st.sampled_from([1, 60, 300, 301, 0, -1])),
    ),
    "header": _members("header", _CORE_HEADERS),
    "extension": _members("header", _HEADER_VALUES),
    "claim": _members("claim", _CLAIM_VALUES),
    "duplicate": st.builds(
        Fault,
        st.just("duplicate"),
        st.sampled_from(["header", "claims"]),
        st.tuples(st.sampled_from(["alg", "kid", "iss", "aud"]), st.sampled_from(["none", 7])),
    ),
    "signature": st.builds(
        Fault,
        st.just("signature"),
        st.sampled_from(["flip", "truncate", "extend", "empty", "zero", "hmac"]),
        st.integers(0, 511),
    ),
    "serialization": st.builds(
        Fault,
        st.just("serialization"),
        st.sampled_from(["drop", "duplicate", "pad", "char", "noncanonical", "trailing-dot"])
        | st.sampled_from(["swapcase", "standard", "deep"]),
        st.tuples(st.integers(0, 2), st.integers(0, 10_000)),
    ),
    "body": st.builds(
        Fault, st.just("body"), st.sampled_from(["append", "flip", "truncate"]), st.integers()
    ),
}
#: Weighted by repetition (sampled_from is uniform; one_of favours its first branches).
_FAULTS: st.SearchStrategy[Fault] = st.sampled_from(
    ["sign"] * 4 + ["kid", "window"] * 2 + ["claim"] * 3 + list(_FAULT_KINDS)
).flatmap(_FAULT_KINDS.__getitem__)
_SMALL_BODIES = st.builds(Body, st.sampled_from([b"{}", b'{"q":"who"}', b"", b"\xff\xfe"]))
_ODD_BODIES = _SMALL_BODIES | st.builds(
    Body,
    st.binary(max_size=64) | st.sampled_from([b"\xc3\x28", b"\xed\xa0\x80", b"\x00" * 8]),
    st.sampled_from([0, 0, 1, 100, 2000]),  # opaque to the gateway: any depth is fine
    st.sampled_from([0, 0, _MAX_BODY - 1, _MAX_BODY, _MAX_BODY + 1, _MAX_BODY + 512]),
)
_EXTRA_HEADERS = st.tuples(st.just("Content-Encoding"), st.sampled_from(_ENCODINGS)) | st.tuples(
    st.sampled_from(["X-Thing", "Accept", "Pasarela-Receipt", "Authorization", "Content-Type"]),
    st.sampled_from(
        ["application/json", "text/plain; charset=latin-1", "multipart/form-data; boundary=x"]
    )
    | _PRINTABLE
    | st.integers(0, _MAX_HEADER).map(lambda n: "v" * n),
)
_ENVELOPES = st.builds(
    Envelope,
    signatures=st.sampled_from(
        ["one", "one", "one", "none", "twice", "plus-garbage", "lowercase", "two-spellings"]
    ),
    padding=st.sampled_from([0, 0, 1, 40]),
    # Content-Type, Content-Encoding at most once each: aiohttp refuses a repeated one itself.
    extra=st.lists(_EXTRA_HEADERS, max_size=3, unique_by=lambda h: h[0]).map(tuple),
)


def _plans(
    faults: int, bodies: st.SearchStrategy[Body], envelopes: st.SearchStrategy[Envelope]
) -> st.SearchStrategy[MessagePlan]:
    return st.builds(
        MessagePlan,
        sender=st.sampled_from(["AG001", "AG001", *_AGENCIES]),
        receiver=st.sampled_from(["AG002", "AG002", "AG001", "PORTAL", "AG003", "NOPE1"]),
        service=st.sampled_from(["ping", "ping", "ping", "pong"]),
        jti=_JTI,
        body=bodies,
        faults=st.lists(_FAULTS, max_size=faults).map(tuple),
        envelope=envelopes,
    )


@_budget(150)
@given(
    plans=st.lists(_plans(3, _SMALL_BODIES, st.just(Envelope())), min_size=1, max_size=4),
    at_once=st.booleans(),
)
async def test_only_messages_signed_by_the_issuers_current_key_are_accepted(
    plans: list[MessagePlan], at_once: bool
) -> None:
    """Tokens broken in up to three places: 2xx only if genuine, else a logged problem."""
    for outcome in await _exchange(plans, at_once=at_once):
        event(f"outcome: {outcome}")


@_budget(100)
@given(plans=st.lists(_plans(1, _ODD_BODIES, _ENVELOPES), min_size=1, max_size=2))
async def test_odd_bodies_and_headers_never_get_a_5xx_or_a_non_problem_refusal(
    plans: list[MessagePlan],
) -> None:
    """Near-limit, nested, non-UTF-8 bodies and odd headers: 2xx only if genuine, else a problem."""
    for outcome in await _exchange(plans):
        event(f"outcome: {outcome}")


def _case(*faults: Fault, **fields: Any) -> MessagePlan:
    return MessagePlan(faults=faults, **fields)


_F = Fault
_CASES: Final[Sequence[tuple[Sequence[MessagePlan], Sequence[int | str]]]] = [
    ([_case()], [200]),
    (
        [_case(_F("sign", "AG002"), _F("kid", "AG001"), envelope=Envelope(padding=3))],
        ["bad-signature"],
    ),
    ([_case(_F("sign", "AG002"))], ["sender-mismatch"]),
    ([_case(_F("sign", "@revoked"), sender="AG002")], ["revoked-key"]),
    ([_case(_F("sign", "@gen1"))], ["superseded-key"]),
    ([_case(_F("kid", "PORTAL@gen1"), sender="PORTAL")], ["superseded-key"]),
    ([_case(_F("sign", "@expired"))], ["key-expired"]),
    ([_case(_F("sign", "stranger"))], ["unknown-key"]),
    ([_case(_F("sign", "gateway"), sender="PASARELA")], ["agency-disconnected"]),
    ([_case(_F("header", "alg", "none"), _F("signature", "empty", 0))], ["algorithm-not-allowed"]),
    ([_case(_F("header", "alg", "HS256"), _F("signature", "hmac", 0))], ["algorithm-not-allowed"]),
    (
        [_case(_F("header", "jwk", JwkOf("stranger")), _F("sign", "stranger"), _F("kid", "AG001"))],
        ["forbidden-header"],
    ),
    ([_case(_F("header", "typ", "JWT"))], ["malformed"]),
    ([_case(_F("window", value=(-120, 89)))], ["expired"]),
    ([_case(_F("window", value=(31, 60)))], ["clock-skew"]),
    ([_case(_F("window", value=(0, 301)))], ["malformed"]),
    ([_case(_F("claim-late", "iss", "AG002"))], ["bad-signature"]),
    ([_case(_F("header-late", "kid", "x"))], ["unknown-key"]),
    ([_case(_F("duplicate", "claims", ("iss", "AG002")))], ["malformed"]),
    ([_case(_F("body", "append", 0))], ["body-digest-mismatch"]),
    ([_case(_F("signature", "flip", 7))], ["bad-signature"]),
    ([_case(_F("serialization", "noncanonical", (2, 0)))], ["malformed"]),
    ([_case(_F("serialization", "deep", (1, 0)))], ["malformed"]),
    ([_case(envelope=Envelope(signatures="two-spellings"))], ["malformed"]),
    ([_case(receiver="NOPE1")], ["unknown-receiver"]),
    ([_case(sender="AG003")], ["agency-disconnected"]),
    ([_case(service="pong")], ["not-authorized"]),
    ([_case(body=Body(pad_to=_MAX_BODY + 1))], ["payload-too-large"]),
    ([_case(), _case()], [200, 200]),  # an idempotent retry
    ([_case(), _case(body=Body(b"[]"))], [200, "replay"]),
    ([_case(jti=j) for j in "abcd"], [200, "rate-limited", "rate-limited", "agency-disconnected"]),
    (
        [_case(_F("sign", "AG002"), jti=j) for j in "abc"] + [_case(sender="AG002")],
        ["sender-mismatch"] * 3 + ["agency-disconnected"],
    ),
]


@pytest.mark.parametrize(
    ("plans", "outcomes"), _CASES, ids=["/".join(map(str, outcomes)) for _, outcomes in _CASES]
)
async def test_each_fault_trips_the_check_it_aims_at(
    plans: Sequence[MessagePlan], outcomes: Sequence[int | str]
) -> None:
    """The plans reach deep into the pipeline: each fault trips its own check, not the first."""
    assert await _exchange(plans) == list(outcomes)


# -- the admin API ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorToken:
    """A bearer token built part by part; the defaults make a genuine one."""

    signer: str = "operator"
    scheme: str = "Bearer "
    header: tuple[tuple[str, object], ...] = ()
    claims: tuple[tuple[str, object], ...] = ()
    late_claims: tuple[tuple[str, object], ...] = ()  # changed after signing
    signature: str = "sign"  # sign | flip | empty | hmac | noncanonical
    minted: int = 0  # seconds from now
    ttl: int = 600


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminPlan:
    method: str
    path: str  # "<kid:ROLE>" and "<enrolment>" stand for values of the lab
    routed: bool  # a route and its method: anything but a genuine token must get 401
    authorization: OperatorToken | str | None
    body: Body


def _operator_token(spec: OperatorToken, lab: _Lab) -> str:
    now = int(lab.world.clock.now())
    header: dict[str, object] = {"alg": "EdDSA", "typ": TYP_ADMIN, "kid": "ops"}
    claims: dict[str, object] = {"sub": "ops", "aud": _ADMIN_AUDIENCE, "jti": "op-1"}
    claims.update(iat=now + spec.minted, exp=now + spec.minted + spec.ttl)
    for members, changes in ((header, spec.header), (claims, spec.claims)):
        for name, value in changes:
            _set(members, name, value, lab, now)
    signing_input = f"{_segment(header)}.{_segment(claims)}"
    secret = lab.world.operator_key.public_key().public_bytes_raw()
    signature = lab.keys[spec.signer].sign(signing_input.encode())
    signature = _signature(spec.signature, 5, signature, signing_input.encode(), secret)
    for name, value in spec.late_claims:
        _set(claims, name, value, lab, now)
    token = f"{_segment(header)}.{_segment(claims)}.{b64url_encode(signature)}"
    if spec.signature == "noncanonical":
        token = _reserialize(token, "noncanonical", 2, 0)
    return spec.scheme + token


_ROUTES: Final = (
    ("POST", "/v1/admin/disconnect-all"),
    *(
        ("POST", f"/v1/admin/agencies/{{code}}/{verb}")
        for verb in ("connect", "disconnect", "quarantine", "release", "transitions", "endpoint")
    ),
    ("GET", "/v1/admin/agencies/{code}"),
    ("POST", "/v1/admin/certificates/{kid}/revoke"),
    ("POST", "/v1/admin/generations"),
    ("GET", "/v1/admin/enrolments"),
    ("GET", "/v1/admin/alerts"),
    ("POST", "/v1/admin/enrolments/{enrolment}/approve"),
)
_SEGMENT = st.text(alphabet=string.ascii_letters + string.digits + "-_~", min_size=1, max_size=20)
_METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "PROPFIND"])
_MEMBERS = st.tuples(
    st.sampled_from(["alg", "typ", "kid", "jwk", "crit", "sub", "aud", "iat", "exp", "jti"]),
    st.sampled_from(
        ["none", "HS256", "JWT", "mallory", "OTHER/admin", [_ADMIN_AUDIENCE], 0, ABSENT]
    )
    | st.builds(JwkOf, st.just("stranger"))
    | st.builds(Now, _OFFSETS)
    | _JSON,
)
_TOKEN_PARTS: Final[Mapping[str, st.SearchStrategy[Any]]] = {
    "signer": st.sampled_from(["AG001", "stranger"]),
    "scheme": st.sampled_from(["bearer ", "Bearer  ", "Basic ", "", "Bearer\t"]),
    "header": st.lists(_MEMBERS, min_size=1, max_size=2).map(tuple),
    "claims": st.lists(_MEMBERS, min_size=1, max_size=2).map(tuple),
    "late_claims": st.lists(_MEMBERS, min_size=1, max_size=1).map(tuple),
    "signature": st.sampled_from(["flip", "empty", "hmac", "noncanonical"]),
    "minted": st.sampled_from([-700, -631, -629, 29, 31, 3600]),
    "ttl": st.sampled_from([1, 60, -5, 10**6]),
}
_AUTHORIZATIONS: st.SearchStrategy[OperatorToken | str | None] = st.one_of(
    st.none() | _PRINTABLE | _PRINTABLE.map(lambda text: "Bearer " + text),
    st.just(OperatorToken()),  # genuine
    st.sampled_from(sorted(_TOKEN_PARTS)).flatmap(  # genuine but for one part
        lambda part: _TOKEN_PARTS[part].map(lambda value: OperatorToken(**{part: value}))
    ),
    st.fixed_dictionaries({}, optional=_TOKEN_PARTS).map(lambda parts: OperatorToken(**parts)),
)
_ADMIN_BODIES = st.just(Body()) | st.builds(
    Body,
    st.sampled_from([b"", b"[]", b"null", b'{"reason": 7}', b"\xff"])
    | st.fixed_dictionaries(
        {},
        optional={
            "reason": st.text(max_size=10) | st.integers(),
            "event": st.sampled_from(["connect", "release", "enrol", "fallback", "x"]) | _JSON,
            "endpoint": st.sampled_from(
                ["http://agencies.test/x", "ftp://x", "http://" + "h" * 600]
            ),
        },
    ).map(lambda doc: json.dumps(doc).encode()),
    st.sampled_from([0, 0, 3, 5000]),
    st.sampled_from([0, 0, 70_000]),
)


@st.composite
def _admin_plans(draw: st.DrawFn) -> AdminPlan:
    authorization, body = draw(_AUTHORIZATIONS), draw(_ADMIN_BODIES)
    route_method, template = draw(st.sampled_from(_ROUTES))
    if draw(st.integers(0, 9)) == 0:  # anything under /v1/admin/
        tail = draw(st.text(string.ascii_letters + "-._~!$&'()*+,;=:@/", max_size=40))
        route_method, template = "", f"/v1/admin/{tail}"
    mostly = st.integers(0, 4).map(bool)  # mostly a real value, sometimes anything
    path = template.format(
        code=draw(st.sampled_from(_AGENCIES)) if draw(mostly) else draw(_SEGMENT),
        kid=f"<kid:{draw(st.sampled_from(_KIDS))}>" if draw(mostly) else draw(_SEGMENT),
        enrolment="<enrolment>" if draw(mostly) else draw(_SEGMENT),
    )
    if template.endswith("alerts"):
        path += draw(st.sampled_from(["", "?after=1&limit=5", "?after=x", "?limit=" + "9" * 5000]))
    method = route_method if route_method and draw(mostly) else draw(_METHODS)
    routed = method == route_method or (method, route_method) == ("HEAD", "GET")
    return AdminPlan(
        method=method, path=path, routed=routed, authorization=authorization, body=body
    )


def _admin_state(world: GatewayWorld) -> object:
    trust = world.trust
    return (
        sorted((a.code, a.state.value, a.endpoint) for a in world.registry.agencies()),
        (trust.revision, trust.generation, world.gateway.key_record.kid),
        sorted((e.id, e.status) for e in trust.enrolments()),
        [r.fields for r in world.store.rows if r.kind == "admin"],
    )


@_budget(150)
@given(plan=_admin_plans())
async def test_admin_api_changes_nothing_without_a_genuine_operator_token(plan: AdminPlan) -> None:
    """Forged, expired, alg-confused tokens: 401 (404/405 off-route), no effect, never 2xx."""
    lab = _make_lab()
    csr = build_csr("AG003", generate_key(lab.world.randomness)).decode()
    enrolment = await Admin(lab.world.gateway).submit_enrolment(csr)
    lab = _Lab(
        world=lab.world, kids=lab.kids, keys=lab.keys, current=lab.current, enrolment=enrolment.id
    )
    spec = plan.authorization
    authorization = _operator_token(spec, lab) if isinstance(spec, OperatorToken) else spec
    genuine = _genuine_operator_token(authorization, lab)
    headers = {} if authorization is None else {"Authorization": authorization}
    path = plan.path.replace("<enrolment>", lab.enrolment)
    for role in _KIDS:
        path = path.replace(f"<kid:{role}>", lab.kids[lab.role(role, "AG001")])
    async with _serve(lab.world) as client:
        before = _admin_state(lab.world)
        resp = await client.request(plan.method, path, data=plan.body.bytes(), headers=headers)
        payload = await resp.read()
        event(f"{resp.status} genuine={genuine}")
        if resp.status < 400:
            assert genuine, (resp.status, authorization, payload[:200])
            assert 200 <= resp.status < 300
        elif plan.method == "HEAD":
            assert resp.content_type == PROBLEM_CONTENT_TYPE
        else:
            code = _problem_code(resp.status, resp.content_type, payload)
            assert genuine or code is ProblemCode.UNAUTHENTICATED or not plan.routed, (code, plan)
            assert genuine or code.status in {401, 404, 405}, code
        await lab.world.gateway.log.sync()
        assert genuine or _admin_state(lab.world) == before
        await _assert_alive(client, keys_may_fail=genuine)


# -- enrolment -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CsrPlan:
    key: str  # a role of the lab, or "p256" for an ECDSA key
    common_name: str
    damage: str = "none"  # see _csr_text
    arg: int = 0


@functools.cache
def _p256_csr(common_name: str) -> tuple[bytes, bytes]:
    """An ECDSA CSR (DER) and its SubjectPublicKeyInfo, made once: ECDSA signs randomly."""
    key = ec.derive_private_key(0xC0FFEE, ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(DER), key.public_key().public_bytes(DER, SPKI)


def _ed25519_csr(common_name: str, key: Ed25519PrivateKey) -> bytes:
    return x509.load_pem_x509_csr(build_csr(common_name, key)).public_bytes(DER)


def _pem_csr(der: bytes, label: str = "CERTIFICATE REQUEST") -> str:
    return f"-----BEGIN {label}-----\n{base64.encodebytes(der).decode()}-----END {label}-----\n"


def _csr_text(plan: CsrPlan, lab: _Lab) -> str:
    if plan.key == "p256":
        der = _p256_csr(plan.common_name)[0]
    else:
        der = _ed25519_csr(plan.common_name, lab.keys[plan.key])
    at = plan.arg % len(der)
    if plan.damage == "flip":
        der = der[:at] + bytes([der[at] ^ (1 + plan.arg % 255)]) + der[at + 1 :]
    elif plan.damage == "x25519" and plan.key != "p256":  # the key's OID says X25519
        at = der.index(_ED25519_OID) + 4
        der = der[:at] + b"\x6e" + der[at + 1 :]
    der = {"truncate": der[:at], "append": der + bytes([plan.arg % 256])}.get(plan.damage, der)
    text = _pem_csr(
        der, "NEW CERTIFICATE REQUEST" if plan.damage == "label" else "CERTIFICATE REQUEST"
    )
    return {
        "no-footer": text.split("-----END", maxsplit=1)[0],
        "crlf": text.replace("\n", "\r\n"),
        "two-blocks": text + text,
        "indented": text.replace("\n", "\n  "),
        "non-ascii": text.replace("-----\n", "-----\né", 1),
        "bare": base64.encodebytes(der).decode(),
    }.get(plan.damage, text)


_CSR_DAMAGE = "flip truncate append x25519 label no-footer crlf two-blocks indented non-ascii bare"
_CSR_KEYS = st.sampled_from(["AG003", "AG001", "stranger", "AG001@gen1", "AG002@revoked", "p256"])
_CSRS = st.one_of(
    st.builds(CsrPlan, key=_CSR_KEYS, common_name=st.sampled_from(["AG003", "AG001"])),
    st.builds(
        CsrPlan,
        key=_CSR_KEYS,
        common_name=st.sampled_from(["AG003", "NOPE1", "PASARELA", "ag001", "A", "x" * 64]),
        damage=st.sampled_from(_CSR_DAMAGE.split()),
        arg=st.integers(0, 10_000),
    ),
    _PRINTABLE | st.text(max_size=200),
)
_WRAPS = st.sampled_from(["json"] * 4 + ["raw", "list", "number", "extra", "deep"])


@_budget(100)
@given(csr=_CSRS, wrap=_WRAPS)
async def test_enrolment_of_any_csr_text_is_202_or_a_problem_and_certifies_nothing(
    csr: CsrPlan | str, wrap: str
) -> None:
    """Any CSR text: 202 pending (no certificate, no trust change) or a 4xx problem+json."""
    lab = _make_lab()
    text = _csr_text(csr, lab) if isinstance(csr, CsrPlan) else csr
    body = {
        "raw": text.encode(),
        "list": json.dumps([text]).encode(),
        "number": b"7",
        "extra": json.dumps({"csr": text, "kid": "x", "status": "approved"}).encode(),
        "deep": b'{"csr":' + b"[" * 5000 + b"]" * 5000 + b"}",
    }.get(wrap, json.dumps({"csr": text}).encode())
    async with _serve(lab.world) as client:
        trust_before = (lab.world.trust.revision, lab.world.trust.generation)
        resp = await client.post("/v1/enrolments", data=body)
        payload = await resp.read()
        event(str(resp.status))
        if resp.status < 400:
            assert resp.status == 202
            enrolment = json.loads(payload)
            status = await client.get(f"/v1/enrolments/{enrolment['id']}")
            assert (await status.json()) == {**enrolment, "status": "pending"}
        else:
            _problem_code(resp.status, resp.content_type, payload)
        assert (lab.world.trust.revision, lab.world.trust.generation) == trust_before
        await _assert_alive(client)


# -- regressions: bugs the fuzzer found, as minimal reproducers ------------------------------


def _broken_csr(case: str) -> str:
    """A CSR with one DER byte changed, as named by ``case``."""
    der = _ed25519_csr("AG001", generate_key(SeededRandomness(1)))
    at, value = {
        "version-1": (7, 1),
        "key-oid-1.3.101.127": (der.index(_ED25519_OID) + 4, 0x7F),
        "ed448-oid-on-a-32-byte-key": (der.index(_ED25519_OID) + 4, 0x71),
    }.get(case, (0, 0))
    if case == "p256-point-off-the-curve":
        der, spki = _p256_csr("AG001")
        at = der.index(spki) + len(spki) - 10
        value = der[at] ^ 1
    return _pem_csr(der[:at] + bytes([value]) + der[at + 1 :])


@pytest.mark.parametrize(
    "case",
    [
        "version-1",
        "key-oid-1.3.101.127",
        "ed448-oid-on-a-32-byte-key",
        "p256-point-off-the-curve",
    ],
)
async def test_a_csr_the_x509_library_cannot_read_is_a_400(case: str) -> None:
    """A CSR whose version, key algorithm OID or EC point cryptography refuses: 400, not 500."""
    async with _serve(make_gateway()) as client:
        resp = await client.post("/v1/enrolments", json={"csr": _broken_csr(case)})
        code = _problem_code(resp.status, resp.content_type, await resp.read())
        assert code is ProblemCode.INVALID_REQUEST


@pytest.mark.parametrize(
    "headers",
    [
        [("Content-Encoding", "br")],
        [("Content-Encoding", "zstd")],
        [("Content-Encoding", "deflate")],
        [("Content-Type", "application/json"), ("Content-Type", "text/plain")],
        [(HEADER_SIGNATURE, "a" * 8191)],
    ],
    ids=["br", "zstd", "deflate", "two-content-types", "8191-char-signature"],
)
async def test_refusals_by_aiohttp_itself_are_problem_json(headers: list[tuple[str, str]]) -> None:
    """POST /v1/messages with body {} and these headers gets a problem+json refusal."""
    async with _serve(make_gateway()) as client:
        resp = await client.post("/v1/messages", data=b"{}", headers=headers)
        _problem_code(resp.status, resp.content_type, await resp.read())


async def test_a_genuine_token_at_the_documented_size_limit_is_relayed() -> None:
    """A genuine Pasarela-Signature at the documented limit (8192 characters; base64 skips
    some lengths, so the longest one up to it) is relayed over HTTP too."""
    world = make_gateway()
    party, now = world.parties["AG001"], world.clock.now()
    tokens = (
        sign_message(party, to="AG002", jti="big", now=now, claims={"p": "p" * n})
        for n in range(5800, 5900)
    )
    token = max((t for t in tokens if len(t) <= 8192), key=len)
    assert len(token) > 8190  # longer than aiohttp's default header field limit
    assert (await world.send("AG001", to="AG002", jti="big", signature=token)).status == 200
    world = make_gateway()  # a fresh one: the same jti again would be a retry
    async with _serve(world) as client:
        resp = await client.post("/v1/messages", data=b"{}", headers={HEADER_SIGNATURE: token})
        assert resp.status == 200, await resp.text()


async def test_a_refused_gzip_message_leaves_the_client_usable() -> None:
    """The same client is answered after a Content-Encoding: gzip message with body {} (the
    refusal closes that connection, saying so: the body was never read)."""
    async with _serve(make_gateway()) as client:
        resp = await client.post("/v1/messages", data=b"{}", headers={"Content-Encoding": "gzip"})
        code = _problem_code(resp.status, resp.content_type, await resp.read())
        assert code is ProblemCode.MALFORMED
        await _assert_alive(client)


async def test_the_echo_receiver_answers_a_128_character_jti() -> None:
    """make_gateway's echo receiver answers every valid jti: one of 128 characters gets 200."""
    response = await make_gateway().send("AG001", to="AG002", jti="j" * 128)
    assert response.status == 200, response.body
