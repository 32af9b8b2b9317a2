"""The in-process gateway of the pytest plugin: the production app on a loop thread.

:class:`_InProcessGateway` builds a :class:`~gateway.service.Gateway` over a fresh trust
state, serves it on 127.0.0.1 from a :class:`~pasarela._plugin.loop._LoopThread`, writes
the operator's and agencies' credentials like a state directory, and registers agencies
directly; :func:`serve_gateway` holds one open for the length of a ``with`` block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from agents.host import AgencyHost
from agents.verification import Directory, Identity
from gateway.detection import DetectionPolicy
from gateway.guard import GuardPolicy
from gateway.http import create_app
from gateway.log import MessageLog
from gateway.operators import mint_operator_token
from gateway.pipeline import Limits
from gateway.registry import Agency, AgencyKind, ConnectionState, Grant, Registry
from gateway.service import Gateway, GatewayConfig
from gateway.state import DEFAULT_GATEWAY_CODE, OPERATOR_NAME
from gateway.store import SqliteLogStore
from gateway.transport import HttpTransport
from gateway.trust import generate_key, private_key_pem
from pasarela._plugin.agencies import BASELINE_GRANTS, PasarelaAgency
from pasarela._plugin.base import PasarelaGateway
from pasarela._plugin.loop import _LoopThread, _serve
from pasarela._plugin.pki import PasarelaPKI, _now, _pem, _write
from pasarela.runtime import directory_from_trust, guard_alerts


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
