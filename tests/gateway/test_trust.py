"""Trust: certificates bind keys to agencies; generations, revocation, CSR enrolment."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from gateway.clock import SeededRandomness
from gateway.protocol import kid_for_certificate
from gateway.trust import CertificateAuthority, TrustError, TrustStore, build_csr, generate_key

NOW = 1_430_000_000.0


@pytest.fixture
def trust() -> TrustStore:
    return TrustStore(CertificateAuthority.create(SeededRandomness(3), now=NOW))


def test_certificate_binds_key_to_agency_and_generation(trust: TrustStore) -> None:
    """Subject CN is the agency code, OU the generation; kid is SHA-256 of the DER."""
    key = generate_key(SeededRandomness(4))
    record = trust.issue("AG001", key.public_key(), randomness=SeededRandomness(5), now=NOW)
    cert = record.certificate
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "AG001"
    ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value
    assert ou == "generation-1"
    assert record.kid == kid_for_certificate(cert.public_bytes(serialization.Encoding.DER))
    assert trust.lookup(record.kid) == record
    cert.verify_directly_issued_by(trust.ca.certificate)


def test_foreign_certificate_is_refused(trust: TrustStore) -> None:
    """A certificate from another CA cannot be added."""
    other = TrustStore(CertificateAuthority.create(SeededRandomness(9), now=NOW))
    rec = other.issue("AG001", generate_key(SeededRandomness(1)).public_key(),
                      randomness=SeededRandomness(2), now=NOW)  # fmt: skip
    with pytest.raises(TrustError, match="not issued"):
        trust.add(rec.certificate)


def test_new_generation_leaves_old_keys_known_but_not_current(trust: TrustStore) -> None:
    """Opening a generation keeps old keys for lookup (to say superseded-key) but not current."""
    key = generate_key(SeededRandomness(4))
    old = trust.issue("AG001", key.public_key(), randomness=SeededRandomness(5), now=NOW)
    assert trust.open_generation() == 2
    assert trust.lookup(old.kid) is not None
    assert trust.current_keys("AG001") == []


def test_csr_enrolment_requires_approval(trust: TrustStore) -> None:
    """A valid CSR waits as pending; approval certifies its key in the current generation."""
    key = generate_key(SeededRandomness(6))
    enrolment = trust.submit(build_csr("AG007", key).decode(), enrolment_id="e1", now=NOW)
    assert enrolment.status == "pending"
    assert trust.current_keys("AG007") == []
    record = trust.approve("e1", randomness=SeededRandomness(7), now=NOW)
    assert record.public_key == key.public_key()
    assert [e.status for e in trust.enrolments()] == ["approved"]
    with pytest.raises(TrustError, match="no pending"):
        trust.approve("e1", randomness=SeededRandomness(7), now=NOW)


def test_csr_with_a_bad_subject_is_refused(trust: TrustStore) -> None:
    """A CSR whose CN is not an agency code is refused at submission."""
    key = generate_key(SeededRandomness(6))
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not an agency")]))
        .sign(key, None)
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    with pytest.raises(TrustError, match="not an agency code"):
        trust.submit(csr, enrolment_id="e2", now=NOW)
    with pytest.raises(TrustError, match="not a PEM CSR"):
        trust.submit("garbage", enrolment_id="e3", now=NOW)


def test_snapshot_round_trips_revocation_and_generation(trust: TrustStore) -> None:
    """restore(snapshot()) keeps revocations, generation and enrolments."""
    rec = trust.issue("AG001", generate_key(SeededRandomness(1)).public_key(),
                      randomness=SeededRandomness(2), now=NOW)  # fmt: skip
    trust.revoke(rec.kid)
    trust.open_generation()
    again = TrustStore.restore(trust.ca, trust.snapshot())
    assert again.generation == 2
    restored = again.lookup(rec.kid)
    assert restored is not None
    assert restored.revoked


def test_keys_are_deterministic_from_the_seed() -> None:
    """Seeded randomness gives the same CA; another seed another CA."""
    a = CertificateAuthority.create(SeededRandomness(1), now=NOW)
    b = CertificateAuthority.create(SeededRandomness(1), now=NOW)
    c = CertificateAuthority.create(SeededRandomness(2), now=NOW)
    assert a.certificate == b.certificate
    assert a.certificate != c.certificate
