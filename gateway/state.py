"""The state directory: what ``pasarela init`` creates and ``pasarela serve`` loads.

Layout (all PEM files are PKCS#8 keys or X.509 certificates)::

    STATE_DIR/
      ca/cert.pem, ca/key.pem              platform CA
      gateway/cert.pem, gateway/key.pem    the gateway's own certificate and key
      agencies/<CODE>/cert.pem, key.pem    one folder per agency (the portal included)
      operator/key.pem, operator/token.jwt operator credentials for the admin API
      state.db                             SQLite: message log, trust and registry snapshots
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.clock import Randomness
from gateway.operators import mint_operator_token
from gateway.registry import Agency, AgencyKind, ConnectionState, Grant, Registry
from gateway.store import SqliteDocumentStore, SqliteLogStore
from gateway.trust import (
    CertificateAuthority,
    TrustStore,
    generate_key,
    load_private_key,
    private_key_pem,
)

__all__ = [
    "DEFAULT_GATEWAY_CODE",
    "PORTAL_CODE",
    "InitSummary",
    "StateDir",
    "StateError",
    "init_state",
]

DEFAULT_GATEWAY_CODE = "PASARELA"
PORTAL_CODE = "PORTAL"
OPERATOR_NAME = "operator"
OPERATOR_TOKEN_TTL = 30 * 86400


class StateError(Exception):
    """The state directory is missing, incomplete or already initialised."""


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if private:
        path.chmod(0o600)


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True, slots=True, kw_only=True)
class InitSummary:
    state_dir: Path
    agencies: int
    gateway_code: str
    portal_code: str
    agents_url: str
    operator_token: Path
    database: Path


def init_state(
    state_dir: Path,
    *,
    agencies: int = 145,
    agents_url: str = "http://127.0.0.1:8701",
    gateway_code: str = DEFAULT_GATEWAY_CODE,
    randomness: Randomness,
    now: float,
) -> InitSummary:
    """Create a CA, the gateway key, ``agencies`` central agencies plus the portal."""
    if (state_dir / "state.db").exists():
        raise StateError(f"{state_dir} already holds a state (state.db exists)")
    if agencies < 1 or agencies > 9999:
        raise StateError("--agencies must be between 1 and 9999")
    agents_url = agents_url.rstrip("/")
    ca = CertificateAuthority.create(randomness, now=now)
    _write(state_dir / "ca" / "cert.pem", _cert_pem(ca.certificate))
    _write(state_dir / "ca" / "key.pem", private_key_pem(ca.key), private=True)
    trust = TrustStore(ca)
    gateway_key = generate_key(randomness)
    record = trust.issue(gateway_code, gateway_key.public_key(), randomness=randomness, now=now)
    _write(state_dir / "gateway" / "cert.pem", _cert_pem(record.certificate))
    _write(state_dir / "gateway" / "key.pem", private_key_pem(gateway_key), private=True)

    registry = Registry()
    members = [
        (f"AG{n:03d}", f"Central agency {n:03d}", AgencyKind.CENTRAL)
        for n in range(1, agencies + 1)
    ]
    members.append((PORTAL_CODE, "Transparency Portal (CPLT)", AgencyKind.AUTONOMOUS))
    for code, name, kind in members:
        key = generate_key(randomness)
        issued = trust.issue(code, key.public_key(), randomness=randomness, now=now)
        folder = state_dir / "agencies" / code
        _write(folder / "cert.pem", _cert_pem(issued.certificate))
        _write(folder / "key.pem", private_key_pem(key), private=True)
        registry.add(
            Agency(
                code=code,
                name=name,
                kind=kind,
                endpoint=f"{agents_url}/agencies/{code}/messages",
                services=frozenset({"ping"}),
                state=ConnectionState.CONNECTED,
            )
        )
    registry.grant(Grant(client="*", provider="*", service="ping"))
    registry.grant(Grant(client="*", provider=PORTAL_CODE, service="*"))
    registry.grant(Grant(client=PORTAL_CODE, provider="*", service="*"))

    operator_key = generate_key(randomness)
    _write(state_dir / "operator" / "key.pem", private_key_pem(operator_key), private=True)
    token = mint_operator_token(
        operator_key, name=OPERATOR_NAME, gateway_code=gateway_code, now=now, ttl=OPERATOR_TOKEN_TTL
    )
    token_path = state_dir / "operator" / "token.jwt"
    _write(token_path, token.encode("ascii") + b"\n", private=True)

    database = state_dir / "state.db"
    SqliteLogStore(database).close()
    docs = SqliteDocumentStore(database)
    try:
        docs.put("config", json.dumps({"gateway_code": gateway_code}).encode())
        docs.put("trust", json.dumps(trust.snapshot()).encode())
        docs.put("registry", json.dumps(registry.snapshot()).encode())
        operators = {OPERATOR_NAME: _public_pem(operator_key.public_key())}
        docs.put("operators", json.dumps(operators).encode())
    finally:
        docs.close()
    return InitSummary(
        state_dir=state_dir,
        agencies=agencies,
        gateway_code=gateway_code,
        portal_code=PORTAL_CODE,
        agents_url=agents_url,
        operator_token=token_path,
        database=database,
    )


def _public_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


class StateDir:
    """A loaded state directory: keys, trust, registry, operators, stores."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.database = path / "state.db"
        if not self.database.exists():
            raise StateError(f"{path} is not a pasarela state (no state.db; run `pasarela init`)")
        self.documents = SqliteDocumentStore(self.database)
        config = self._document("config")
        self.gateway_code = str(config["gateway_code"])
        ca = CertificateAuthority(
            self._key(path / "ca" / "key.pem"),
            x509.load_pem_x509_certificate(self._read(path / "ca" / "cert.pem")),
        )
        self.trust = TrustStore.restore(ca, self._document("trust"))
        self.registry = Registry.restore(self._document("registry"))
        self.revision = int(self.documents.get("revision") or b"0")
        self.gateway_key = self._key(path / "gateway" / "key.pem")
        self.operators: dict[str, Ed25519PublicKey] = {}
        for name, pem in self._document("operators").items():
            key = serialization.load_pem_public_key(str(pem).encode("ascii"))
            if isinstance(key, Ed25519PublicKey):
                self.operators[name] = key

    def _read(self, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise StateError(f"cannot read {path}: {exc.strerror}") from exc

    def _key(self, path: Path) -> Ed25519PrivateKey:
        return load_private_key(self._read(path))

    def _document(self, name: str) -> dict[str, Any]:
        raw = self.documents.get(name)
        if raw is None:
            raise StateError(f"{self.database} has no {name!r} document")
        value = json.loads(raw)
        if not isinstance(value, dict):
            raise StateError(f"{self.database}: document {name!r} is not an object")
        return value

    def open_log_store(self) -> SqliteLogStore:
        return SqliteLogStore(self.database)

    def persist(self) -> None:
        """Write the trust and registry snapshots back (after an operator action).

        The ``revision`` document counts the writes, so readers in other processes (the
        agency host) can tell cheaply whether anything changed.
        """
        self.revision += 1
        self.documents.put("trust", json.dumps(self.trust.snapshot()).encode())
        self.documents.put("registry", json.dumps(self.registry.snapshot()).encode())
        self.documents.put("revision", str(self.revision).encode())

    def close(self) -> None:
        self.documents.close()


def state_path(value: str | os.PathLike[str]) -> Path:
    return Path(value).expanduser().resolve()
