"""Trust: the platform CA, agency certificates, key generations, revocation, enrolment.

A certificate binds an Ed25519 key to an agency code (subject CN) and belongs to a key
*generation* (subject OU ``generation-N``). After an incident the operator opens a new
generation: every key of an earlier one is refused as ``superseded-key``. Agencies come
back by submitting a CSR, which an operator approves.

All randomness (keys, serial numbers) comes from the injected :class:`Randomness`, all
times from the caller, so virtual runs are reproducible.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from gateway.clock import Randomness
from gateway.protocol import AGENCY_CODE, ProblemCode, kid_for_certificate

__all__ = [
    "CertificateAuthority",
    "DistrustedKeyError",
    "Enrolment",
    "KeyRecord",
    "TrustError",
    "TrustStore",
    "build_csr",
    "csr_agency",
    "generate_key",
    "load_private_key",
    "private_key_pem",
]

CERT_LIFETIME = dt.timedelta(days=730)


class TrustError(Exception):
    """A trust operation that cannot be done (bad CSR, unknown enrolment, ...)."""


class DistrustedKeyError(TrustError):
    """A CSR for a public key that was certified before and is now distrusted.

    A key from an earlier generation (``superseded``) or a revoked one must never be
    certified again: whoever holds it may be the attacker who stole it.
    """

    def __init__(self, message: str, *, revoked: bool, agency: str) -> None:
        super().__init__(message)
        self.revoked = revoked
        self.agency = agency

    @property
    def problem(self) -> ProblemCode:
        """What the enrolment endpoint answers (the same code a message with it gets)."""
        return ProblemCode.REVOKED_KEY if self.revoked else ProblemCode.SUPERSEDED_KEY


def generate_key(randomness: Randomness) -> Ed25519PrivateKey:
    """A new Ed25519 key from the injected randomness."""
    return Ed25519PrivateKey.from_private_bytes(randomness.token_bytes(32))


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise TrustError("key is not Ed25519")
    return key


def _utc(when: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(when), tz=dt.UTC)


def _serial(randomness: Randomness) -> int:
    return int.from_bytes(randomness.token_bytes(16), "big") >> 1 or 1


def build_csr(agency: str, key: Ed25519PrivateKey) -> bytes:
    """A PEM certificate signing request with subject CN = the agency code."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, agency)]))
        .sign(key, None)
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def csr_agency(csr_pem: str) -> str:
    """The agency a PEM CSR asks for, once its signature, key type and subject check out."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode("ascii"))
        key = csr.public_key()
        signed = csr.is_signature_valid
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm, x509.InvalidVersion) as exc:
        # Whatever the x509 library cannot read is the sender's mistake, never a 5xx.
        raise TrustError(f"not a PEM CSR: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise TrustError("CSR key is not Ed25519")
    if not signed:
        raise TrustError("CSR signature does not verify")
    cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    agency = str(cn[0].value) if cn else ""
    if not AGENCY_CODE.fullmatch(agency):
        raise TrustError(f"CSR subject CN {agency!r} is not an agency code")
    return agency


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyRecord:
    """A certified key: who owns it, which generation, whether it is revoked."""

    kid: str
    agency: str
    generation: int
    serial: int
    certificate: x509.Certificate
    #: Read once from the certificate: the relay checks them twice per message.
    public_key: Ed25519PublicKey
    not_before: float
    not_after: float
    revoked: bool = False

    @property
    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def valid_at(self, now: float) -> bool:
        return self.not_before <= now <= self.not_after


@dataclass(frozen=True, slots=True, kw_only=True)
class Enrolment:
    """A CSR waiting for an operator's decision."""

    id: str
    agency: str
    csr_pem: str
    submitted_at: float
    status: str = "pending"  # pending | approved | rejected
    kid: str | None = None


class CertificateAuthority:
    """The platform CA: a self-signed Ed25519 root that signs agency certificates."""

    def __init__(self, key: Ed25519PrivateKey, certificate: x509.Certificate) -> None:
        self.key = key
        self.certificate = certificate

    @classmethod
    def create(
        cls, randomness: Randomness, *, now: float, name: str = "pasarela platform CA"
    ) -> CertificateAuthority:
        key = generate_key(randomness)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(_serial(randomness))
            .not_valid_before(_utc(now) - dt.timedelta(days=1))
            .not_valid_after(_utc(now) + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, None)
        )
        return cls(key, cert)

    def issue(
        self,
        agency: str,
        public_key: Ed25519PublicKey,
        *,
        generation: int,
        randomness: Randomness,
        now: float,
    ) -> x509.Certificate:
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, agency),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"generation-{generation}"),
            ]
        )
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(_serial(randomness))
            .not_valid_before(_utc(now) - dt.timedelta(minutes=5))
            .not_valid_after(_utc(now) + CERT_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, None)
        )

    def issued(self, cert: x509.Certificate) -> bool:
        """True when ``cert`` carries a valid signature of this CA."""
        try:
            cert.verify_directly_issued_by(self.certificate)
        except (InvalidSignature, ValueError, TypeError):
            return False
        return True


class TrustStore:
    """Keys by ``kid``, the current generation, revocations, pending enrolments."""

    def __init__(self, ca: CertificateAuthority, *, generation: int = 1) -> None:
        self.ca = ca
        self.generation = generation
        #: Refuse CSRs for distrusted keys (only a test of the defence turns this off).
        self.refuse_distrusted = True
        self._keys: dict[str, KeyRecord] = {}
        self._enrolments: dict[str, Enrolment] = {}
        #: Bumped by every change to keys or the generation: a cheap "has trust changed?".
        self.revision = 0

    # -- lookups (used by the pure pipeline) ------------------------------------------
    def lookup(self, kid: str) -> KeyRecord | None:
        return self._keys.get(kid)

    def records(self) -> list[KeyRecord]:
        return list(self._keys.values())

    def current_keys(self, agency: str) -> list[KeyRecord]:
        """Usable keys of ``agency``: current generation and not revoked."""
        return [
            k
            for k in self._keys.values()
            if k.agency == agency and k.generation == self.generation and not k.revoked
        ]

    def enrolments(self) -> list[Enrolment]:
        return list(self._enrolments.values())

    # -- changes ----------------------------------------------------------------------
    def issue(
        self, agency: str, public_key: Ed25519PublicKey, *, randomness: Randomness, now: float
    ) -> KeyRecord:
        """Certify ``public_key`` for ``agency`` in the current generation."""
        if not AGENCY_CODE.fullmatch(agency):
            raise TrustError(f"agency code {agency!r} is not valid")
        cert = self.ca.issue(
            agency, public_key, generation=self.generation, randomness=randomness, now=now
        )
        return self.add(cert)

    def add(self, cert: x509.Certificate, *, revoked: bool = False) -> KeyRecord:
        """Trust an already issued certificate (loading state)."""
        if not self.ca.issued(cert):
            raise TrustError("certificate not issued by the platform CA")
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        if not cn or not ou or not str(ou[0].value).startswith("generation-"):
            raise TrustError("certificate subject lacks CN or generation OU")
        public_key = cert.public_key()
        if not isinstance(public_key, Ed25519PublicKey):
            raise TrustError("certificate key is not Ed25519")
        record = KeyRecord(
            kid=kid_for_certificate(cert.public_bytes(serialization.Encoding.DER)),
            agency=str(cn[0].value),
            generation=int(str(ou[0].value).removeprefix("generation-")),
            serial=cert.serial_number,
            certificate=cert,
            public_key=public_key,
            not_before=cert.not_valid_before_utc.timestamp(),
            not_after=cert.not_valid_after_utc.timestamp(),
            revoked=revoked,
        )
        self._keys[record.kid] = record
        self.revision += 1
        return record

    def revoke(self, kid: str) -> KeyRecord:
        record = self._keys.get(kid)
        if record is None:
            raise TrustError(f"no certificate with kid {kid!r}")
        revoked = replace(record, revoked=True)
        self._keys[kid] = revoked
        self.revision += 1
        return revoked

    def open_generation(self) -> int:
        """Distrust every existing key: they become ``superseded-key``."""
        self.generation += 1
        self.revision += 1
        return self.generation

    def submit(self, csr_pem: str, *, enrolment_id: str, now: float) -> Enrolment:
        """Check a CSR (signature, Ed25519, CN is an agency code) and queue it."""
        agency = csr_agency(csr_pem)
        if self.refuse_distrusted:
            self._refuse_distrusted(csr_pem)
        enrolment = Enrolment(id=enrolment_id, agency=agency, csr_pem=csr_pem, submitted_at=now)
        self._enrolments[enrolment_id] = enrolment
        return enrolment

    def distrusted(self, public_key: Ed25519PublicKey) -> KeyRecord | None:
        """The record of ``public_key`` if it was certified and is now revoked or superseded."""
        raw = public_key.public_bytes_raw()
        for record in self._keys.values():
            if (record.revoked or record.generation < self.generation) and (
                record.public_key.public_bytes_raw() == raw
            ):
                return record
        return None

    def _refuse_distrusted(self, csr_pem: str) -> None:
        key = x509.load_pem_x509_csr(csr_pem.encode("ascii")).public_key()
        if not isinstance(key, Ed25519PublicKey):
            return  # submit's own checks say what is wrong with it
        record = self.distrusted(key)
        if record is not None:
            why = "revoked" if record.revoked else f"of generation {record.generation}, distrusted"
            raise DistrustedKeyError(
                f"this public key was certified before ({record.kid}, {why}); "
                "enrol with a newly generated key",
                revoked=record.revoked,
                agency=record.agency,
            )

    def approve(self, enrolment_id: str, *, randomness: Randomness, now: float) -> KeyRecord:
        enrolment = self._pending(enrolment_id)
        csr = x509.load_pem_x509_csr(enrolment.csr_pem.encode("ascii"))
        key = csr.public_key()
        assert isinstance(key, Ed25519PublicKey)  # checked in submit()
        record = self.issue(enrolment.agency, key, randomness=randomness, now=now)
        self._enrolments[enrolment_id] = replace(enrolment, status="approved", kid=record.kid)
        return record

    def reject(self, enrolment_id: str) -> Enrolment:
        rejected = replace(self._pending(enrolment_id), status="rejected")
        self._enrolments[enrolment_id] = rejected
        return rejected

    def _pending(self, enrolment_id: str) -> Enrolment:
        enrolment = self._enrolments.get(enrolment_id)
        if enrolment is None or enrolment.status != "pending":
            raise TrustError(f"no pending enrolment {enrolment_id!r}")
        return enrolment

    # -- persistence ------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """A JSON-able picture of the store (the CA key is kept apart, in its own file)."""
        return {
            "generation": self.generation,
            "keys": [
                {"certificate": k.certificate_pem, "revoked": k.revoked}
                for k in self._keys.values()
            ],
            "enrolments": [
                {
                    "id": e.id,
                    "agency": e.agency,
                    "csr_pem": e.csr_pem,
                    "submitted_at": e.submitted_at,
                    "status": e.status,
                    "kid": e.kid,
                }
                for e in self._enrolments.values()
            ],
        }

    @classmethod
    def restore(cls, ca: CertificateAuthority, snapshot: dict[str, Any]) -> TrustStore:
        store = cls(ca, generation=int(snapshot["generation"]))
        for item in snapshot["keys"]:
            cert = x509.load_pem_x509_certificate(str(item["certificate"]).encode("ascii"))
            store.add(cert, revoked=bool(item["revoked"]))
        for item in snapshot.get("enrolments", []):
            enrolment = Enrolment(**item)
            store._enrolments[enrolment.id] = enrolment
        return store
