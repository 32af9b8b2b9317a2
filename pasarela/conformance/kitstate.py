"""What the kit reads from a state directory (never writing it), and how it sets it up."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agents.verification import Identity
from gateway.registry import ConnectionState, Grant, Registry, RegistryError
from gateway.state import DEFAULT_GATEWAY_CODE
from gateway.store import read_documents
from gateway.trust import CertificateAuthority, TrustStore, load_private_key
from pasarela.conformance.model import KitSettings, UsageError

__all__ = ["Loaded", "load_state", "prepare_registry"]


@dataclass(slots=True)
class Loaded:
    gateway_code: str
    gateway_key: Ed25519PrivateKey
    trust: TrustStore
    registry: Registry
    peer: Identity


def load_state(settings: KitSettings) -> Loaded:
    """Read what the kit needs from the state directory, without writing anything."""
    root = settings.state
    database = root / "state.db"
    if not database.is_file():
        raise UsageError(f"--state {root}: not a pasarela state (no state.db; run `pasarela init`)")
    try:
        docs = read_documents(database, "config", "trust", "registry")
        config = json.loads(docs["config"])
        ca = CertificateAuthority(
            load_private_key((root / "ca" / "key.pem").read_bytes()),
            x509.load_pem_x509_certificate((root / "ca" / "cert.pem").read_bytes()),
        )
        trust = TrustStore.restore(ca, json.loads(docs["trust"]))
        registry = Registry.restore(json.loads(docs["registry"]))
        gateway_key = load_private_key((root / "gateway" / "key.pem").read_bytes())
    except KeyError as exc:
        raise UsageError(f"--state {root}: state.db has no {exc.args[0]!r} document") from exc
    except (OSError, ValueError) as exc:
        raise UsageError(f"--state {root}: cannot read the state: {exc}") from exc
    code = str(config.get("gateway_code", DEFAULT_GATEWAY_CODE))
    for who in (settings.agency, settings.peer):
        if registry.get(who) is None:
            raise UsageError(f"--state {root}: no agency {who} in its registry")
    if settings.agency == settings.peer:
        raise UsageError(f"--peer must be another agency than --agency ({settings.agency})")
    if not trust.current_keys(settings.agency):
        raise UsageError(f"--state {root}: agency {settings.agency} holds no current certificate")
    folder = root / "agencies" / settings.peer
    try:
        peer = Identity.from_files(folder / "key.pem", folder / "cert.pem")
    except (OSError, ValueError) as exc:
        detail = f"cannot read the key of the peer {settings.peer}: {exc}"
        raise UsageError(f"--state {root}: {detail}") from exc
    if peer.kid not in {record.kid for record in trust.current_keys(settings.peer)}:
        raise UsageError(
            f"--state {root}: the key in agencies/{settings.peer} is not {settings.peer}'s "
            "current certificate (pick another --peer)"
        )
    return Loaded(code, gateway_key, trust, registry, peer)


def prepare_registry(registry: Registry, settings: KitSettings, *, peer_endpoint: str) -> None:
    """Both parties connected, the service offered, calls allowed both ways."""
    for code, endpoint in (
        (settings.agency, settings.endpoint),
        (settings.peer, peer_endpoint),
    ):
        agency = registry.require(code)
        try:
            registry.add(
                dataclasses.replace(
                    agency,
                    endpoint=endpoint,
                    services=agency.services | {settings.service},
                    state=ConnectionState.CONNECTED,
                )
            )
        except RegistryError as exc:
            raise UsageError(f"--service {settings.service}: {exc}") from exc
    registry.grant(Grant(client=settings.peer, provider=settings.agency, service=settings.service))
    registry.grant(Grant(client=settings.agency, provider=settings.peer, service=settings.service))
