"""The lab: what a technique needs to attack a live gateway, and to see what it noticed.

A :class:`Lab` holds an HTTP session to the gateway, the agencies' keys and the
operator's key from the state directory (the red team plays an insider who has them, as
the techniques say), and helpers to build tokens exactly as wanted (well formed, or
broken in one precise way), to send them, to read the alert feed, and to move agencies
(quarantine, release, move an endpoint) for set-up and cleanup.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agents.adversaries.model import Observation
from agents.host import load_identities
from agents.verification import Identity
from gateway.clock import Clock, Randomness, SystemClock, SystemRandomness
from gateway.operators import mint_operator_token
from gateway.protocol import (
    HEADER_RECEIPT,
    HEADER_SIGNATURE,
    TYP_MESSAGE,
    b64url_encode,
    body_digest,
)
from gateway.state import OPERATOR_NAME
from gateway.trust import build_csr, generate_key, load_private_key

__all__ = ["Lab", "LabError", "Probe", "Token", "answer_of"]


def answer_of(raw: bytes) -> tuple[str | None, Any]:
    """The problem code (if the body is problem+json) and the parsed body (or its text)."""
    try:
        payload: Any = json.loads(raw) if raw else None
    except (ValueError, RecursionError):
        payload = raw[:200].decode("utf-8", "replace")
    code = None
    if isinstance(payload, dict) and isinstance(payload.get("type"), str):
        code = payload["type"].rsplit(":", 1)[-1]
    return code, payload


class LabError(Exception):
    """The lab cannot run (no state, gateway unreachable): an infrastructure error."""


@dataclass(slots=True, kw_only=True)
class Token:
    """A message token under construction: header, claims, and who signs it."""

    header: dict[str, Any]
    claims: dict[str, Any]
    key: Ed25519PrivateKey | None

    def compact(self, *, signature: bytes | None = None) -> str:
        """Sign (with ``key``) unless ``signature`` is given; ``b""`` leaves it empty."""
        head = b64url_encode(json.dumps(self.header, separators=(",", ":")).encode())
        body = b64url_encode(json.dumps(self.claims, separators=(",", ":")).encode())
        signing_input = f"{head}.{body}".encode("ascii")
        if signature is None:
            signature = self.key.sign(signing_input) if self.key is not None else b""
        return f"{head}.{body}.{b64url_encode(signature)}"


@dataclass(slots=True)
class Probe:
    """A local HTTP server that records every request it gets (did the gateway fetch?)."""

    url: str
    hits: list[str] = field(default_factory=list)


class Lab:
    """One attack session against ``gateway_url`` with the keys of ``state_dir``."""

    def __init__(
        self,
        gateway_url: str,
        state_dir: Path,
        *,
        session: aiohttp.ClientSession,
        clock: Clock | None = None,
    ) -> None:
        self.gateway_url = gateway_url.rstrip("/")
        self.state_dir = Path(state_dir)
        self.session = session
        self.clock = clock or SystemClock()
        self.randomness: Randomness = SystemRandomness()
        identities = load_identities(self.state_dir)
        if not identities:
            raise LabError(f"{state_dir}: no agencies' keys (is it a `pasarela init` state?)")
        self.identities: dict[str, Identity] = identities
        operator_key = self.state_dir / "operator" / "key.pem"
        if not operator_key.is_file():
            raise LabError(f"{operator_key} is missing: the lab acts as the operator too")
        self.operator_key = load_private_key(operator_key.read_bytes())
        self.gateway_code = ""
        agencies = sorted(code for code in identities if code.startswith("AG"))
        if len(agencies) < 3:
            raise LabError("the lab needs at least three central agencies in the state")
        #: The agency the attacks impersonate or abuse, a bystander, and the receiver.
        self.sender, self.other, self.third = agencies[0], agencies[1], agencies[2]
        self.receiver = "PORTAL" if "PORTAL" in identities else agencies[-1]

    # -- set-up --------------------------------------------------------------------------
    async def start(self) -> None:
        """Read the gateway's code from ``/v1/conf`` (and prove it answers)."""
        try:
            async with self.session.get(f"{self.gateway_url}/v1/conf") as response:
                document = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise LabError(f"{self.gateway_url}/v1/conf: {exc}") from exc
        self.gateway_code = str(document["gateway"]["code"])
        self.conf = document

    def published_agencies(self) -> set[str]:
        """Agencies /v1/conf names (what anyone may know exists)."""
        return {
            str(entry["code"])
            for entry in self.conf.get("agencies", [])
            if isinstance(entry, dict) and "code" in entry
        }

    def now(self) -> float:
        return self.clock.now()

    # -- tokens ----------------------------------------------------------------------------
    def token(
        self,
        sender: str,
        *,
        to: str | None = None,
        service: str = "ping",
        body: bytes = b"{}",
        jti: str | None = None,
        iat: float | None = None,
        lifetime: int = 60,
        key: Ed25519PrivateKey | None = None,
        kid: str | None = None,
    ) -> Token:
        """A well-formed token of ``sender`` (its key and kid unless overridden)."""
        identity = self.identities[sender]
        issued = int(self.now() if iat is None else iat)
        claims = {
            "iss": sender,
            "aud": to or self.receiver,
            "svc": service,
            "jti": jti or self.random_id(),
            "iat": issued,
            "exp": issued + lifetime,
            "bh": body_digest(body),
        }
        header = {"alg": "EdDSA", "typ": TYP_MESSAGE, "kid": kid or identity.kid}
        return Token(header=header, claims=claims, key=key or identity.key)

    def random_id(self, n: int = 12) -> str:
        """A fresh random identifier (jti, kid) from the lab's randomness."""
        return b64url_encode(self.randomness.token_bytes(n))

    def new_key(self) -> Ed25519PrivateKey:
        """An attacker's key (never certified)."""
        return generate_key(self.randomness)

    # -- traffic -----------------------------------------------------------------------------
    async def post(
        self,
        path: str,
        *,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        method: str = "POST",
    ) -> tuple[int, str | None, Any]:
        """One request; returns (status, problem code or None, parsed JSON or text)."""
        url = path if path.startswith("http") else f"{self.gateway_url}{path}"
        data = io.BytesIO(body) if len(body) > 65_536 else body
        async with self.session.request(method, url, data=data, headers=dict(headers or {})) as r:
            raw = await r.read()
        return r.status, *answer_of(raw)

    async def send(
        self,
        observation: Observation,
        token: str,
        body: bytes = b"{}",
        *,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, str | None]:
        """POST /v1/messages with ``token`` and ``body``; the answer goes into ``observation``."""
        sent = {HEADER_SIGNATURE: token, "Content-Type": "application/json", **(headers or {})}
        status, code, _ = await self.post("/v1/messages", body=body, headers=sent)
        observation.answer(status, code)
        return status, code

    async def deliver_directly(
        self, observation: Observation, code: str, token: str, receipt: str, body: bytes
    ) -> tuple[int, str | None]:
        """Skip the gateway: POST straight to ``code``'s endpoint with a receipt."""
        endpoint = (await self.agency(code))["endpoint"]
        headers = {HEADER_SIGNATURE: token, HEADER_RECEIPT: receipt}
        status, problem, _ = await self.post(endpoint, body=body, headers=headers)
        observation.answer(status, problem)
        return status, problem

    # -- the operator's levers -----------------------------------------------------------------
    def operator_token(self, *, ttl: int = 300) -> str:
        return mint_operator_token(
            self.operator_key,
            name=OPERATOR_NAME,
            gateway_code=self.gateway_code,
            now=self.now(),
            ttl=ttl,
        )

    async def admin(
        self, method: str, path: str, payload: Mapping[str, Any] | None = None
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.operator_token()}"}
        body = json.dumps(payload or {}).encode() if method == "POST" else b""
        if method == "POST":
            headers["Content-Type"] = "application/json"
        status, _, answer = await self.post(
            f"/v1/admin/{path.lstrip('/')}", body=body, headers=headers, method=method
        )
        return status, answer

    async def agency(self, code: str) -> dict[str, Any]:
        status, answer = await self.admin("GET", f"agencies/{code}")
        if status != 200:
            raise LabError(f"GET /v1/admin/agencies/{code}: HTTP {status} {answer}")
        return dict(answer)

    async def state(self, code: str) -> str:
        return str((await self.agency(code))["state"])

    async def set_state(self, code: str, verb: str, reason: str) -> None:
        status, answer = await self.admin("POST", f"agencies/{code}/{verb}", {"reason": reason})
        if status != 200:
            raise LabError(f"{verb} {code}: HTTP {status} {answer}")

    async def ensure_connected(self, code: str) -> None:
        """Cleanup: bring ``code`` back to connected if a technique moved it."""
        state = await self.state(code)
        if state == "quarantined":
            await self.set_state(code, "release", "attack lab cleanup")
        elif state == "disconnected":
            await self.set_state(code, "connect", "attack lab cleanup")

    async def last_alert(self) -> int:
        status, answer = await self.admin("GET", "alerts?limit=1&after=999999999")
        if status != 200:
            raise LabError(f"GET /v1/admin/alerts: HTTP {status} {answer}")
        return int(answer["last"])

    async def alerts_after(self, after: int) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        while True:
            status, answer = await self.admin("GET", f"alerts?after={after}&limit=1000")
            if status != 200:
                raise LabError(f"GET /v1/admin/alerts: HTTP {status} {answer}")
            page = list(answer["alerts"])
            found.extend(page)
            if len(page) < 1000:
                return found
            after = int(page[-1]["id"])

    async def enrol(
        self, code: str, key: Ed25519PrivateKey | None = None
    ) -> tuple[Identity | None, str]:
        """Submit a CSR for ``code`` (a fresh key unless given) and approve it as operator.

        Returns the new identity, or None and the problem code that refused the CSR.
        """
        key = key or self.new_key()
        csr = build_csr(code, key).decode("ascii")
        status, problem, answer = await self.post(
            "/v1/enrolments",
            body=json.dumps({"csr": csr}).encode(),
            headers={"Content-Type": "application/json"},
        )
        if status != 202:
            return None, problem or str(status)
        status, approved = await self.admin(
            "POST", f"enrolments/{answer['id']}/approve", {"reason": "attack lab"}
        )
        if status != 200:
            return None, str(status)
        certificate = x509.load_pem_x509_certificate(str(approved["certificate"]).encode())
        return Identity(code=code, key=key, certificate=certificate), "approved"

    # -- raw sockets and probes ------------------------------------------------------------------
    @property
    def address(self) -> tuple[str, int]:
        parts = urlsplit(self.gateway_url)
        return parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)

    @asynccontextmanager
    async def probe(self) -> AsyncIterator[Probe]:
        """A listening server on 127.0.0.1 that records hits (e.g. a ``jku`` URL)."""
        hits: list[str] = []

        async def record(request: web.Request) -> web.Response:
            hits.append(f"{request.method} {request.path_qs}")
            return web.json_response({"keys": []})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            yield Probe(url=f"http://127.0.0.1:{port}", hits=hits)
        finally:
            await asyncio.sleep(0)
            await runner.cleanup()
