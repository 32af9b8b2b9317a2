"""The external gateway of the pytest plugin: one somebody else runs, reached by URL.

:class:`_ExternalGateway` trusts the CA of its state directory (or the one its conf
document names), reads agency and operator keys from that state directory, and skips a
test, saying why (:func:`_unfit`), when an agency there cannot be used as asked; it moves
an agency's endpoint for a test and moves it back after. :func:`connect_gateway` holds
one open for the length of a ``with`` block.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import pytest
from cryptography import x509

from agents.verification import Directory, Identity, verify_conf
from gateway.operators import mint_operator_token
from gateway.protocol import HEADER_SIGNATURE
from gateway.registry import AgencyKind, ConnectionState, Grant
from gateway.state import OPERATOR_NAME
from gateway.transport import WireRequest
from gateway.trust import load_private_key
from pasarela._plugin.agencies import PasarelaAgency
from pasarela._plugin.base import PasarelaGateway
from pasarela._plugin.loop import _LoopThread, _SessionPerRequest
from pasarela._plugin.pki import _now, _write

_CONF_MAX_AGE: Final = 1.0


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
def connect_gateway(url: str, *, state: Path | None, directory: Path) -> Iterator[PasarelaGateway]:
    """The external gateway at ``url``; ``state`` holds its agencies' and operator's keys."""
    gateway = _ExternalGateway(url.rstrip("/"), state=state, directory=directory)
    try:
        yield gateway
    finally:
        gateway.close()
