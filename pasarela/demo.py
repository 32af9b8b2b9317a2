"""``pasarela demo``: a live gateway and agency host on loopback, a few exchanges, a forgery.

Starts both servers as child processes (the same ``pasarela serve`` and ``pasarela agents
serve`` an operator would run), sends signed messages through real HTTP, shows one
forged message being refused, stops the servers with SIGTERM, and verifies the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import tempfile
import time
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.table import Table

from agents.connector import Connector
from agents.verification import Identity, Refused
from gateway.clock import SystemClock, SystemRandomness
from gateway.log import verify
from gateway.protocol import HEADER_SIGNATURE
from gateway.state import init_state
from gateway.store import SqliteLogStore
from pasarela.client import load_identity
from pasarela.processes import (
    StartupError,
    child_process,
    free_ports,
    pasarela_argv,
    wait_healthy,
)

__all__ = ["run_demo"]


async def _exchanges(state: Path, gateway_url: str, agencies: int, console: Console) -> bool:
    ca = x509.load_pem_x509_certificate((state / "ca" / "cert.pem").read_bytes())
    clock, randomness = SystemClock(), SystemRandomness()
    table = Table(title="Signed exchanges through the gateway")
    for column in ("from", "to", "service", "status", "answer", "receipt seq", "ms"):
        table.add_column(column)
    ok = True
    last, pilot = f"AG{agencies:03d}", f"AG{min(17, agencies):03d}"
    pairs = [("AG001", "AG002"), ("PORTAL", pilot), (last, "PORTAL"), ("AG002", "AG001")]
    for sender, receiver in pairs:
        connector = Connector(
            identity=load_identity(state, sender),
            gateway_url=gateway_url,
            clock=clock,
            randomness=randomness,
            ca_certificate=ca,
        )
        started = time.perf_counter()
        try:
            reply = await connector.send(
                to=receiver, service="ping", body={"hello": receiver, "from": sender}
            )
            elapsed = (time.perf_counter() - started) * 1000
            table.add_row(
                sender,
                receiver,
                "ping",
                str(reply.status),
                json.dumps(reply.json()),
                str(reply.receipt.seq),
                f"{elapsed:.1f}",
            )
        except Refused as exc:
            ok = False
            table.add_row(sender, receiver, "ping", str(exc.status), exc.code, "-", "-")
        finally:
            await connector.aclose()
    console.print(table)
    return ok


async def _forgery(state: Path, gateway_url: str, console: Console) -> bool:
    """An attacker knows AG001's certificate (it is public) but not its key."""
    genuine = load_identity(state, "AG001")
    attacker = Identity(
        code="AG001", key=Ed25519PrivateKey.generate(), certificate=genuine.certificate
    )
    connector = Connector(
        identity=attacker,
        gateway_url=gateway_url,
        clock=SystemClock(),
        randomness=SystemRandomness(),
    )
    body = json.dumps({"transfer": "all citizen records"}).encode()
    token = connector.sign(to="AG002", service="ping", body=body, jti="forged-1")
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gateway_url}/v1/messages", data=body, headers={HEADER_SIGNATURE: token}
        ) as response,
    ):
        problem = await response.json(content_type=None)
    console.print(
        f"Forged message as AG001 (right kid, wrong key): HTTP {response.status} "
        f"[bold]{problem['type']}[/bold] - {problem['detail']}"
    )
    return response.status == 401 and problem["type"].endswith(":bad-signature")


def run_demo(*, agencies: int, keep: Path | None, console: Console) -> int:
    """Run the demo; 0 when every exchange was verified, the forgery refused, the log intact."""
    if agencies < 2:
        console.print("[red]the demo needs at least 2 agencies[/red]")
        return 2
    with contextlib.ExitStack() as stack:
        if keep is None:
            state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pasarela-")))
        else:
            state = keep.resolve()
        gateway_port, agents_port = free_ports(2)
        agents_url = f"http://127.0.0.1:{agents_port}"
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        init_state(
            state / "state",
            agencies=agencies,
            agents_url=agents_url,
            randomness=SystemRandomness(),
            now=SystemClock().now(),
        )
        root = state / "state"
        console.print(f"State with {agencies} agencies and the portal in {root}")
        state_args = ["--state", str(root)]
        host = stack.enter_context(
            child_process(
                "agency host",
                pasarela_argv("agents", "serve", *state_args, "--port", str(agents_port)),
                port=agents_port,
                log=state / "agents.log",
            )
        )
        gateway = stack.enter_context(
            child_process(
                "gateway",
                pasarela_argv("serve", *state_args, "--port", str(gateway_port)),
                port=gateway_port,
                log=state / "gateway.log",
            )
        )
        try:
            asyncio.run(wait_healthy(host))
            asyncio.run(wait_healthy(gateway))
        except StartupError as exc:
            console.print(f"[red]could not start the servers: {exc}[/red]")
            for child in (gateway, host):
                console.print(f"--- {child.name} ({child.log}) ---")
                console.print("\n".join(child.tail()), markup=False)
            return 3
        console.print(f"Gateway on {gateway_url}, agency host on {agents_url}")
        exchanged = asyncio.run(_exchanges(root, gateway_url, agencies, console))
        refused = asyncio.run(_forgery(root, gateway_url, console))
        for child in (gateway, host):
            child.process.send_signal(signal.SIGTERM)
            child.process.wait(timeout=10)
        codes = (gateway.process.returncode, host.process.returncode)
        console.print(f"Servers stopped with SIGTERM (exit codes {codes[0]} and {codes[1]}).")
        store = SqliteLogStore(root / "state.db")
        try:
            records = list(store.records())
            result = verify(records)
        finally:
            store.close()
        rejected = [r for r in records if r.kind == "rejection"]
        console.print(
            f"Message log: {result.records} records, "
            f"{'hash chain intact' if result.ok else f'BROKEN at {result.first_bad_seq}'}; "
            f"{len(rejected)} rejection(s) recorded"
            + (
                f", e.g. seq {rejected[0].seq}: {rejected[0].fields.get('reason')}"
                if rejected
                else ""
            )
        )
        clean_stop = codes == (0, 0)
        held = exchanged and refused and result.ok and bool(rejected) and clean_stop
        console.print("[green]demo OK[/green]" if held else "[red]demo FAILED[/red]")
        return 0 if held else 1
