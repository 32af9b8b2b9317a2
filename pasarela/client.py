"""``pasarela send``: one message through a running gateway, answer verified."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography import x509
from rich.console import Console

from agents.connector import Connector
from agents.verification import ConnectorError, Identity, Refused, Unreachable
from gateway.clock import SystemClock, SystemRandomness
from gateway.state import StateError

__all__ = ["load_identity", "send_one"]


def load_identity(state_dir: Path, code: str) -> Identity:
    folder = state_dir / "agencies" / code
    if not folder.is_dir():
        raise StateError(f"no agency {code} in {state_dir / 'agencies'}")
    return Identity.from_files(folder / "key.pem", folder / "cert.pem")


async def send_one(
    state_dir: Path,
    *,
    sender: str,
    receiver: str,
    service: str,
    body: Any,
    gateway_url: str,
    jti: str | None,
    console: Console,
    errors: Console,
) -> int:
    """Send, verify, print; exit code 0 on a verified answer, 1 refused, 3 unreachable."""
    identity = load_identity(state_dir, sender)
    ca = x509.load_pem_x509_certificate((state_dir / "ca" / "cert.pem").read_bytes())
    connector = Connector(
        identity=identity,
        gateway_url=gateway_url,
        clock=SystemClock(),
        randomness=SystemRandomness(),
        ca_certificate=ca,
    )
    try:
        reply = await connector.send(to=receiver, service=service, body=body, jti=jti)
    except Refused as exc:
        errors.print(f"refused: {exc.status} {exc.code}: {exc.detail}")
        return 1
    except Unreachable as exc:
        errors.print(f"gateway unreachable at {gateway_url}: {exc}")
        return 3
    except ConnectorError as exc:
        errors.print(f"verification failed: {exc}")
        return 1
    finally:
        await connector.aclose()
    try:
        shown = json.dumps(reply.json(), ensure_ascii=False)
    except ValueError:
        shown = reply.body.decode("utf-8", errors="replace")
    console.print(f"{reply.status} from {reply.claims.iss} (verified): {shown}")
    console.print(
        f"  jti {reply.jti} answered by {reply.claims.jti}; gateway receipt seq "
        f"{reply.receipt.seq}, log hash {reply.receipt.lh}"
    )
    return 0
