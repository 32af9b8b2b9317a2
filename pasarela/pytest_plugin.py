"""The connector conformance kit for pytest: a real gateway on loopback, agencies, the portal.

Installed with pasarela (entry point ``pytest11``, name ``pasarela``). The fixtures, all
function-scoped::

    pasarela_pki       a fresh platform CA and trust store
    pasarela_gateway   the gateway over real HTTP on 127.0.0.1, or the external one
                       named by --pasarela-gateway-url (agency keys from --pasarela-state)
    pasarela_agency    a factory: an agency with key, certificate, registry entry, grants
    pasarela_portal    the Transparency Portal (PORTAL): sends ati.request, records ati.answer

The fixtures are synchronous. The servers they start run on an event loop in a thread of
their own, so sync tests, async tests in any pytest-asyncio loop scope and connectors in
other processes reach them alike. ``docs/conformance.md`` is the user's guide.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Collection, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agents.connector import Connector, Reply
from agents.host import AgencyHost, ping
from agents.verification import Directory, Identity, encode_json, verify_conf
from gateway.clock import Clock, Randomness, SystemClock, SystemRandomness
from gateway.detection import DetectionPolicy
from gateway.guard import GuardedAppRunner, GuardEventKind, GuardPolicy
from gateway.http import create_app
from gateway.log import MessageLog
from gateway.operators import mint_operator_token
from gateway.pipeline import Limits
from gateway.protocol import HEADER_SIGNATURE, MessageClaims
from gateway.registry import Agency, AgencyKind, ConnectionState, Grant, Registry
from gateway.service import Gateway, GatewayConfig
from gateway.state import DEFAULT_GATEWAY_CODE, OPERATOR_NAME, PORTAL_CODE
from gateway.store import SqliteLogStore
from gateway.transport import HttpTransport, Transport, WireRequest, WireResponse
from gateway.trust import (
    CertificateAuthority,
    TrustStore,
    generate_key,
    load_private_key,
    private_key_pem,
)
from pasarela.runtime import directory_from_trust, guard_alerts

__all__ = [
    "AgencyFactory",
    "PasarelaAgency",
    "PasarelaGateway",
    "PasarelaPKI",
    "PasarelaPortal",
    "Received",
    "connect_gateway",
    "serve_gateway",
]

_T = TypeVar("_T")

#: What every agency may call on every other, as ``pasarela init`` sets it up.
BASELINE_GRANTS: Final = (Grant(client="*", provider="*", service="ping"),)
#: The portal's registration, as ``pasarela init`` grants it (gateway/state.py).
PORTAL_SERVICES: Final = frozenset({"ati.answer", "ping"})
PORTAL_GRANTS: Final = (
    Grant(client="*", provider=PORTAL_CODE, service="*"),
    Grant(client=PORTAL_CODE, provider="*", service="*"),
)
_FIXTURES: Final = frozenset({"pasarela_gateway", "pasarela_agency", "pasarela_portal"})
_SHUTDOWN_SECONDS: Final = 2.0
_CONF_MAX_AGE: Final = 1.0

GrantLike = Grant | tuple[str, str, str]


class _LoopThread:
    """An event loop running in a daemon thread: where the servers of one gateway live."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    @property
    def current(self) -> bool:
        """True when called from this thread (where waiting on the loop would deadlock)."""
        return threading.current_thread() is self._thread

    def run(self, coroutine: Coroutine[Any, Any, _T], *, timeout: float = 60.0) -> _T:
        """Run ``coroutine`` on the thread's loop; block the calling thread until it is done."""
        if self.current:
            coroutine.close()
            raise RuntimeError("a pasarela server cannot wait for its own thread")
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call(self, function: Callable[[], _T]) -> _T:
        """Run a plain function on the thread (where the gateway's state is changed)."""

        async def call() -> _T:
            return function()

        return self.run(call())

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.run(self._drain())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10.0)
        self.loop.close()

    async def _drain(self) -> None:
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.loop.shutdown_asyncgens()
        await self.loop.shutdown_default_executor()


class _SessionPerRequest(Transport):
    """HTTP with a new aiohttp session per request: no pool tied to one event loop.

    A connector built on it may be used from any loop (function- or module-scoped) and
    leaves nothing to close.
    """

    async def send(self, request: WireRequest, *, timeout: float = 30.0) -> WireResponse:
        transport = HttpTransport(limit=1)
        try:
            return await transport.send(request, timeout=timeout)
        finally:
            await transport.aclose()


async def _serve(
    app: web.Application,
    *,
    policy: GuardPolicy,
    on_event: Callable[[GuardEventKind], None] | None = None,
) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on 127.0.0.1, a free port, through the connection guard."""
    runner = GuardedAppRunner(
        app,
        policy=policy,
        on_event=on_event,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=_SHUTDOWN_SECONDS,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def _write(path: Path, data: bytes, *, private: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if private:
        path.chmod(0o600)
    return path


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _grant(value: GrantLike) -> Grant:
    if isinstance(value, Grant):
        return value
    client, provider, service = value
    return Grant(client=client, provider=provider, service=service)


@dataclass(frozen=True, slots=True, kw_only=True)
class PasarelaPKI:
    """A platform CA and the trust state it anchors (wall clock, OS randomness)."""

    ca: CertificateAuthority
    trust: TrustStore
    clock: Clock
    randomness: Randomness

    @classmethod
    def create(cls) -> PasarelaPKI:
        clock, randomness = SystemClock(), SystemRandomness()
        ca = CertificateAuthority.create(randomness, now=clock.now())
        return cls(ca=ca, trust=TrustStore(ca), clock=clock, randomness=randomness)

    @property
    def ca_certificate(self) -> str:
        """The CA certificate, PEM."""
        return _pem(self.ca.certificate).decode("ascii")

    def new_identity(self, code: str) -> Identity:
        """A new Ed25519 key for ``code``, certified in the current generation and trusted."""
        key = generate_key(self.randomness)
        record = self.trust.issue(
            code, key.public_key(), randomness=self.randomness, now=self.clock.now()
        )
        return Identity(code=code, key=key, certificate=record.certificate)


@dataclass(frozen=True, slots=True, kw_only=True)
class PasarelaAgency:
    """An agency registered at the gateway, with its credentials on disk."""

    identity: Identity
    endpoint: str | None
    services: frozenset[str]
    key_path: Path
    certificate_path: Path
    gateway_url: str
    ca: x509.Certificate

    @property
    def code(self) -> str:
        return self.identity.code

    @property
    def key(self) -> Ed25519PrivateKey:
        return self.identity.key

    @property
    def certificate(self) -> x509.Certificate:
        return self.identity.certificate

    @property
    def kid(self) -> str:
        return self.identity.kid

    def connector(self, **overrides: Any) -> Connector:
        """A :class:`Connector` for this agency; keyword arguments override its defaults.

        Its default transport opens an HTTP session per request: the connector works from
        any event loop and needs no closing.
        """
        options: dict[str, Any] = {
            "identity": self.identity,
            "gateway_url": self.gateway_url,
            "clock": SystemClock(),
            "randomness": SystemRandomness(),
            "transport": _SessionPerRequest(),
            "ca_certificate": self.ca,
        }
        options.update(overrides)
        return Connector(**options)


class AgencyFactory(Protocol):
    """The type of the ``pasarela_agency`` fixture."""

    def __call__(
        self,
        code: str,
        *,
        endpoint: str | None = None,
        services: Collection[str] = ("ping",),
        grants: Iterable[GrantLike] = (),
    ) -> PasarelaAgency: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Received:
    """A message the portal received and answered: its verified claims and its body."""

    claims: MessageClaims
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class _Inbox:
    """What the portal's endpoint received, with a condition to wait on from any thread."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        self._changed = threading.Condition()

    async def record(self, claims: MessageClaims, body: bytes) -> tuple[int, bytes]:
        """The portal's ``ati.answer`` service: keep the message, acknowledge it."""
        with self._changed:
            self.messages.append(Received(claims=claims, body=body))
            self._changed.notify_all()
        return 200, encode_json({"status": "received", "jti": claims.jti})

    def wait(self, count: int, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self.messages) >= count, timeout)


class PasarelaPortal:
    """The Transparency Portal: an agency whose endpoint records the answers it receives."""

    code: Final = PORTAL_CODE

    def __init__(self, *, agency: PasarelaAgency, host: AgencyHost, inbox: _Inbox) -> None:
        self.agency = agency
        self.host = host
        self._inbox = inbox
        self._connector: Connector | None = None

    @property
    def url(self) -> str:
        """The portal's endpoint, where the gateway delivers to it."""
        assert self.agency.endpoint is not None
        return self.agency.endpoint

    @property
    def received(self) -> list[Received]:
        """The ``ati.answer`` messages received (verified and acknowledged), oldest first."""
        return self._inbox.messages

    def connector(self, **overrides: Any) -> Connector:
        return self.agency.connector(**overrides)

    async def send(
        self,
        *,
        to: str,
        body: bytes | Any,
        service: str = "ati.request",
        jti: str | None = None,
    ) -> Reply:
        """Send as the portal (an ``ati.request`` by default); return the verified reply."""
        if self._connector is None:
            self._connector = self.agency.connector()
        return await self._connector.send(to=to, service=service, body=body, jti=jti)

    async def wait_received(self, count: int = 1, *, timeout: float = 10.0) -> list[Received]:
        """Wait until ``count`` answers have arrived; raise TimeoutError after ``timeout``."""
        if not await asyncio.to_thread(self._inbox.wait, count, timeout):
            raise TimeoutError(
                f"the portal received {len(self.received)} answer(s) in {timeout:g} s, "
                f"expected {count}"
            )
        return list(self.received)


class PasarelaGateway(abc.ABC):
    """A gateway under test, in process (``gateway`` is the :class:`Gateway`) or external.

    Its servers and its own HTTP calls run on a thread of their own; the methods here
    block the caller briefly and may be called from sync and async tests alike.
    """

    def __init__(
        self,
        *,
        url: str,
        code: str,
        ca: x509.Certificate,
        ca_certificate_path: Path,
        credentials_dir: Path,
        thread: _LoopThread,
        gateway: Gateway | None,
    ) -> None:
        self.url = url
        self.code = code
        self.ca = ca
        self.ca_certificate_path = ca_certificate_path
        #: Keys laid out like a state directory: ``ca/cert.pem``,
        #: ``agencies/<CODE>/{key,cert}.pem``, ``operator/key.pem``.
        self.credentials_dir = credentials_dir
        self.gateway = gateway
        self._thread = thread
        self._http = _SessionPerRequest()
        self._runners: list[web.AppRunner] = []
        self._portal: PasarelaPortal | None = None

    @property
    def conf_url(self) -> str:
        return f"{self.url}/v1/conf"

    @property
    def ca_certificate(self) -> str:
        """The platform CA certificate, PEM."""
        return _pem(self.ca).decode("ascii")

    @property
    def external(self) -> bool:
        return self.gateway is None

    # -- what the two kinds do differently ----------------------------------------------
    @abc.abstractmethod
    def operator_token(self, *, ttl: int = 600) -> str:
        """A bearer token for the admin API (``Authorization: Bearer <token>``)."""

    @abc.abstractmethod
    def directory(self) -> Directory:
        """The keys the gateway trusts now (what a receiving connector verifies with)."""

    def agency(
        self,
        code: str,
        *,
        endpoint: str | None = None,
        services: Collection[str] = ("ping",),
        grants: Iterable[GrantLike] = (),
    ) -> PasarelaAgency:
        """An agency registered and connected, offering ``services``, with ``grants`` added."""
        return self._agency(
            code, endpoint=endpoint, services=frozenset(services), grants=map(_grant, grants)
        )

    @abc.abstractmethod
    def _agency(
        self,
        code: str,
        *,
        endpoint: str | None,
        services: frozenset[str],
        grants: Iterable[Grant],
        kind: AgencyKind = AgencyKind.CENTRAL,
        name: str = "",
    ) -> PasarelaAgency:
        """Register ``code`` (in process) or take it from the state (external)."""

    # -- the same for both ----------------------------------------------------------------
    def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Call ``/v1/admin/<path>`` as the operator; return the status and the JSON answer."""
        headers = {"Authorization": f"Bearer {self.operator_token()}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = WireRequest(
            method=method,
            url=f"{self.url}/v1/admin/{path.lstrip('/')}",
            headers=headers,
            body=b"" if body is None else encode_json(body),
        )
        response = self._thread.run(self._http.send(request))
        try:
            return response.status, json.loads(response.body) if response.body else None
        except ValueError:  # not JSON: a defect or a proxy's page, shown as text
            return response.status, response.body.decode(errors="replace")

    def alerts(self, *, after: int = 0) -> list[dict[str, Any]]:
        """The gateway's security alerts with an id above ``after``, oldest first."""
        status, document = self.admin("GET", f"alerts?after={after}&limit=1000")
        if status != 200:
            raise RuntimeError(f"GET /v1/admin/alerts answered {status}: {document}")
        return list(document["alerts"])

    def portal(self) -> PasarelaPortal:
        """The Transparency Portal, registered and served (created on first use)."""
        if self._portal is not None:
            return self._portal
        inbox = _Inbox()
        host = AgencyHost(
            identities={},
            directory=self.directory,
            clock=SystemClock(),
            randomness=SystemRandomness(),
            services={"ati.answer": inbox.record, "ping": ping},
        )
        url = self._serve(host.app(), policy=GuardPolicy(max_connections_per_ip=512))
        agency = self._agency(
            PORTAL_CODE,
            endpoint=f"{url}{AgencyHost.endpoint_path(PORTAL_CODE)}",
            services=PORTAL_SERVICES,
            grants=PORTAL_GRANTS,
            kind=AgencyKind.AUTONOMOUS,
            name="Transparency Portal (CPLT)",
        )
        self._thread.call(lambda: host.set_identity(agency.identity))
        portal = PasarelaPortal(agency=agency, host=host, inbox=inbox)
        self._portal = portal
        return portal

    def _serve(self, app: web.Application, *, policy: GuardPolicy) -> str:
        runner, url = self._thread.run(_serve(app, policy=policy))
        self._runners.append(runner)
        return url

    def _agency_record(
        self, identity: Identity, *, endpoint: str | None, services: frozenset[str]
    ) -> PasarelaAgency:
        folder = self.credentials_dir / "agencies" / identity.code
        return PasarelaAgency(
            identity=identity,
            endpoint=endpoint,
            services=services,
            key_path=folder / "key.pem",
            certificate_path=folder / "cert.pem",
            gateway_url=self.url,
            ca=self.ca,
        )

    def close(self) -> None:
        """Stop every server this object started and release its thread."""
        try:
            for runner in reversed(self._runners):
                self._thread.run(runner.cleanup())
        finally:
            self._thread.close()


class _InProcessGateway(PasarelaGateway):
    """The production app, served on loopback from this process, over a fresh trust state."""

    def __init__(
        self,
        directory: Path,
        *,
        pki: PasarelaPKI,
        limits: Limits | None,
        detection: DetectionPolicy | None,
    ) -> None:
        thread = _LoopThread("pasarela-gateway")
        self._pki = pki
        self._operator_key = generate_key(pki.randomness)
        self._directory: tuple[int, Directory] | None = None
        gateway_key = generate_key(pki.randomness)
        pki.trust.issue(
            DEFAULT_GATEWAY_CODE, gateway_key.public_key(), randomness=pki.randomness, now=_now()
        )

        def build() -> Gateway:  # on the thread: SQLite connections stay in one thread
            return Gateway(
                config=GatewayConfig(
                    code=DEFAULT_GATEWAY_CODE,
                    limits=limits or Limits(),
                    detection=detection or DetectionPolicy(),
                ),
                key=gateway_key,
                trust=pki.trust,
                registry=Registry(grants=BASELINE_GRANTS),
                log=MessageLog(SqliteLogStore(directory / "log.db")),
                transport=HttpTransport(),
                clock=pki.clock,
                randomness=pki.randomness,
            )

        try:
            gateway = thread.call(build)
            app = create_app(gateway, operators={OPERATOR_NAME: self._operator_key.public_key()})
            runner, url = thread.run(_serve(app, policy=GuardPolicy(), on_event=guard_alerts(app)))
        except BaseException:
            thread.close()
            raise
        ca_path = _write(directory / "ca" / "cert.pem", _pem(pki.ca.certificate))
        super().__init__(
            url=url,
            code=DEFAULT_GATEWAY_CODE,
            ca=pki.ca.certificate,
            ca_certificate_path=ca_path,
            credentials_dir=directory,
            thread=thread,
            gateway=gateway,
        )
        self._runners.append(runner)
        _write(
            directory / "operator" / "key.pem", private_key_pem(self._operator_key), private=True
        )
        token = self.operator_token(ttl=86_400)
        _write(directory / "operator" / "token.jwt", f"{token}\n".encode(), private=True)

    def operator_token(self, *, ttl: int = 600) -> str:
        return mint_operator_token(
            self._operator_key, name=OPERATOR_NAME, gateway_code=self.code, now=_now(), ttl=ttl
        )

    def directory(self) -> Directory:
        trust = self._pki.trust
        revision = trust.revision  # read first: a change while building shows next time
        if self._directory is None or self._directory[0] != revision:
            self._directory = (revision, directory_from_trust(trust, gateway_code=self.code))
        return self._directory[1]

    def _agency(
        self,
        code: str,
        *,
        endpoint: str | None,
        services: frozenset[str],
        grants: Iterable[Grant],
        kind: AgencyKind = AgencyKind.CENTRAL,
        name: str = "",
    ) -> PasarelaAgency:
        assert self.gateway is not None
        registry = self.gateway.registry
        wanted = list(grants)

        def register() -> Identity:
            if registry.get(code) is not None:
                raise ValueError(f"agency {code} is already registered at this gateway")
            registry.add(
                Agency(
                    code=code,
                    name=name or f"Agency {code}",
                    kind=kind,
                    # Port 9 (discard): an agency that only sends refuses deliveries.
                    endpoint=endpoint or f"http://127.0.0.1:9{AgencyHost.endpoint_path(code)}",
                    services=services,
                    state=ConnectionState.CONNECTED,
                )
            )
            for grant in wanted:
                registry.grant(grant)
            return self._pki.new_identity(code)

        identity = self._thread.call(register)
        agency = self._agency_record(identity, endpoint=endpoint, services=services)
        _write(agency.key_path, private_key_pem(identity.key), private=True)
        _write(agency.certificate_path, _pem(identity.certificate))
        return agency


class _ExternalGateway(PasarelaGateway):
    """A gateway somebody else runs; agency keys come from its state directory."""

    def __init__(self, url: str, *, state: Path | None, directory: Path) -> None:
        thread = _LoopThread("pasarela-external")
        self._state = state
        try:
            body, signature = thread.run(_fetch_conf(url))
        except BaseException:
            thread.close()
            raise
        document = json.loads(body)
        ca_path = state / "ca" / "cert.pem" if state is not None else None
        if ca_path is None or not ca_path.is_file():
            # No CA of our own: trust the one the gateway names (first use), keep a copy.
            ca_path = _write(directory / "ca" / "cert.pem", str(document["ca"]).encode())
        ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
        self._conf = (time.monotonic(), document, self._verify(body, signature, ca))
        super().__init__(
            url=url,
            code=str(document["gateway"]["code"]),
            ca=ca,
            ca_certificate_path=ca_path,
            credentials_dir=state if state is not None else directory,
            thread=thread,
            gateway=None,
        )
        self._restore: list[tuple[str, str]] = []

    @staticmethod
    def _verify(body: bytes, signature: str | None, ca: x509.Certificate) -> Directory:
        return verify_conf(body=body, signature=signature, now=_now(), ca_certificate=ca)

    def _refresh(self) -> tuple[dict[str, Any], Directory]:
        """The gateway's conf document and directory, fetched again when a second old."""
        fetched, document, directory = self._conf
        if not self._thread.current and time.monotonic() - fetched > _CONF_MAX_AGE:
            body, signature = self._thread.run(_fetch_conf(self.url))
            document, directory = json.loads(body), self._verify(body, signature, self.ca)
            self._conf = (time.monotonic(), document, directory)
        return document, directory

    def directory(self) -> Directory:
        return self._refresh()[1]

    def operator_token(self, *, ttl: int = 600) -> str:
        operator = self._state / "operator" if self._state is not None else None
        if operator is not None and (operator / "key.pem").is_file():
            key = load_private_key((operator / "key.pem").read_bytes())
            return mint_operator_token(
                key, name=OPERATOR_NAME, gateway_code=self.code, now=_now(), ttl=ttl
            )
        if operator is not None and (operator / "token.jwt").is_file():
            return (operator / "token.jwt").read_text(encoding="ascii").strip()
        pytest.skip(
            "the external gateway's operator credentials are needed: pass --pasarela-state "
            "DIR holding operator/key.pem (as `pasarela init` writes it)"
        )

    def _agency(
        self,
        code: str,
        *,
        endpoint: str | None,
        services: frozenset[str],
        grants: Iterable[Grant],
        kind: AgencyKind = AgencyKind.CENTRAL,
        name: str = "",
    ) -> PasarelaAgency:
        what = f"pasarela_agency({code!r}) on the external gateway {self.url}"
        if self._state is None:
            pytest.skip(f"{what}: its agencies' keys are needed, pass --pasarela-state DIR")
        folder = self._state / "agencies" / code
        if not (folder / "key.pem").is_file() or not (folder / "cert.pem").is_file():
            pytest.skip(
                f"{what}: {folder} holds no key.pem and cert.pem, and agencies cannot be "
                "created on an external gateway"
            )
        identity = Identity.from_files(folder / "key.pem", folder / "cert.pem")
        document, _ = self._refresh()
        problem = _unfit(document, identity, services, list(grants))
        if problem:
            pytest.skip(f"{what}: {problem}")
        if endpoint is not None:
            status, before = self.admin("GET", f"agencies/{code}")
            moved, answer = self.admin(
                "POST",
                f"agencies/{code}/endpoint",
                {"endpoint": endpoint, "reason": "pytest: pasarela_agency"},
            )
            if status != 200 or moved != 200:
                raise RuntimeError(f"{what}: moving its endpoint answered {moved}: {answer}")
            self._restore.append((code, str(before["endpoint"])))
        return self._agency_record(identity, endpoint=endpoint, services=services)

    def close(self) -> None:
        """Point the agencies moved by this object back where they were, then stop."""
        try:
            for code, endpoint in reversed(self._restore):
                self.admin(
                    "POST",
                    f"agencies/{code}/endpoint",
                    {"endpoint": endpoint, "reason": "pytest: test over, endpoint restored"},
                )
        finally:
            super().close()


def _now() -> float:
    return SystemClock().now()


async def _fetch_conf(url: str) -> tuple[bytes, str | None]:
    """The conf document of the gateway at ``url`` and its signature, unverified."""
    response = await _SessionPerRequest().send(WireRequest(method="GET", url=f"{url}/v1/conf"))
    if response.status != 200:
        raise RuntimeError(f"GET {url}/v1/conf answered {response.status}")
    return response.body, response.header(HEADER_SIGNATURE)


def _covers(have: Mapping[str, Any], want: Grant) -> bool:
    return all(
        have.get(part) in ("*", getattr(want, part)) for part in ("client", "provider", "service")
    )


def _unfit(
    document: Mapping[str, Any], identity: Identity, services: frozenset[str], grants: list[Grant]
) -> str:
    """Why an external gateway's agency cannot be used as asked ("" when it can)."""
    entry = next((a for a in document.get("agencies", []) if a.get("code") == identity.code), None)
    if entry is None:
        return "it is not registered there"
    if entry.get("state") != ConnectionState.CONNECTED.value:
        return f"its state there is {entry.get('state')}, not connected"
    current = {
        item.get("kid")
        for item in entry.get("certificates", [])
        if not item.get("revoked") and item.get("generation") == document.get("generation")
    }
    if identity.kid not in current:
        return "the certificate in the state directory is not a current one there"
    missing = services - set(entry.get("services", []))
    if missing:
        offered = ", ".join(sorted(entry.get("services", []))) or "nothing"
        return (
            f"it offers {offered}, not {', '.join(sorted(missing))} "
            "(services cannot be added to an external gateway)"
        )
    for grant in grants:
        if not any(_covers(have, grant) for have in document.get("grants", [])):
            return f"no grant there lets {grant.client} call {grant.service} of {grant.provider}"
    return ""


@contextlib.contextmanager
def serve_gateway(
    directory: Path,
    *,
    pki: PasarelaPKI | None = None,
    limits: Limits | None = None,
    detection: DetectionPolicy | None = None,
) -> Iterator[PasarelaGateway]:
    """An in-process gateway for as long as the block runs (for fixtures of wider scope).

    ``directory`` receives its message log and the credentials it writes.
    """
    gateway = _InProcessGateway(
        directory, pki=pki or PasarelaPKI.create(), limits=limits, detection=detection
    )
    try:
        yield gateway
    finally:
        gateway.close()


@contextlib.contextmanager
def connect_gateway(url: str, *, state: Path | None, directory: Path) -> Iterator[PasarelaGateway]:
    """The external gateway at ``url``; ``state`` holds its agencies' and operator's keys."""
    gateway = _ExternalGateway(url.rstrip("/"), state=state, directory=directory)
    try:
        yield gateway
    finally:
        gateway.close()


# -- pytest hooks and fixtures ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Settings:
    url: str | None
    state: Path | None


def _settings(config: pytest.Config) -> _Settings:
    """The external gateway named by the options, else by the ini file; url None: in process."""
    url = config.getoption("pasarela_gateway_url") or config.getini("pasarela_gateway_url")
    url = str(url).rstrip("/") or None
    state: Path | None = None
    if option := config.getoption("pasarela_state"):
        state = config.invocation_params.dir / Path(option).expanduser()
    elif (ini := config.getini("pasarela_state")) and url is not None:
        base = config.inipath.parent if config.inipath is not None else config.rootpath
        state = base / Path(ini).expanduser()
    return _Settings(url=url, state=state)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pasarela", "pasarela connector conformance")
    group.addoption(
        "--pasarela-gateway-url",
        metavar="URL",
        help="run the pasarela fixtures against the gateway at URL instead of one in process",
    )
    group.addoption(
        "--pasarela-state",
        metavar="DIR",
        help="that gateway's state directory, for agency and operator keys "
        "(agencies/<CODE>/{key,cert}.pem, operator/key.pem, as `pasarela init` writes them)",
    )
    parser.addini(
        "pasarela_gateway_url", "default for --pasarela-gateway-url", type="string", default=""
    )
    parser.addini(
        "pasarela_state",
        "default for --pasarela-state (relative to the ini file)",
        type="string",
        default="",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "pasarela_gateway: needs a gateway (set on every test using a pasarela fixture)"
    )
    config.addinivalue_line(
        "markers",
        "pasarela_external: runs only against an external gateway (--pasarela-gateway-url)",
    )
    settings = _settings(config)
    if settings.state is not None and settings.url is None:
        raise pytest.UsageError("--pasarela-state needs --pasarela-gateway-url")


def pytest_report_header(config: pytest.Config) -> str | None:
    settings = _settings(config)
    if settings.url is None:
        return None
    return f"pasarela: external gateway {settings.url}, state {settings.state or '(none)'}"


@pytest.hookimpl(tryfirst=True)  # before -m selects on the markers set here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    external = _settings(config).url is not None
    for item in items:
        uses_gateway = _FIXTURES & set(getattr(item, "fixturenames", ()))
        if uses_gateway and item.get_closest_marker("pasarela_gateway") is None:
            item.add_marker(pytest.mark.pasarela_gateway)
        if not external and item.get_closest_marker("pasarela_external") is not None:
            reason = "needs an external gateway: run with --pasarela-gateway-url URL"
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def pasarela_pki(request: pytest.FixtureRequest) -> PasarelaPKI:
    """A fresh platform CA and trust state (in-process mode only)."""
    if _settings(request.config).url is not None:
        pytest.skip("pasarela_pki: an external gateway keeps its own CA and trust state")
    return PasarelaPKI.create()


@pytest.fixture
def pasarela_gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PasarelaGateway]:
    """A gateway on loopback over real HTTP, or the external one the options name."""
    settings = _settings(request.config)
    directory = tmp_path_factory.mktemp("pasarela")
    gateway: PasarelaGateway
    if settings.url is None:
        pki: PasarelaPKI = request.getfixturevalue("pasarela_pki")
        gateway = _InProcessGateway(directory, pki=pki, limits=None, detection=None)
    else:
        try:
            gateway = _ExternalGateway(settings.url, state=settings.state, directory=directory)
        except Exception as exc:  # whatever it is, the gateway named cannot be used
            pytest.fail(f"the external gateway at {settings.url} is not usable: {exc!r}")
    try:
        yield gateway
    finally:
        gateway.close()


@pytest.fixture
def pasarela_agency(pasarela_gateway: PasarelaGateway) -> AgencyFactory:
    """``pasarela_agency(code, endpoint=..., services=..., grants=...)`` -> PasarelaAgency."""
    return pasarela_gateway.agency


@pytest.fixture
def pasarela_portal(pasarela_gateway: PasarelaGateway) -> PasarelaPortal:
    """The Transparency Portal (PORTAL), registered, its endpoint served and recording."""
    return pasarela_gateway.portal()
