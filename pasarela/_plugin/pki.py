"""The PKI and credentials layout of the pytest plugin.

:class:`PasarelaPKI`, a platform CA and the trust state it anchors; writing keys and
certificates to disk the way a state directory holds them (:func:`_write`, :func:`_pem`);
the wall clock's time (:func:`_now`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agents.verification import Identity
from gateway.clock import Clock, Randomness, SystemClock, SystemRandomness
from gateway.trust import CertificateAuthority, TrustStore, generate_key


def _write(path: Path, data: bytes, *, private: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if private:
        path.chmod(0o600)
    return path


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


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


def _now() -> float:
    return SystemClock().now()
