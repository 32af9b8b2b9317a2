"""Replicas as real processes: two `pasarela serve` sharing Redis (each its own log), on
separate ports and on one port with SO_REUSEPORT."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import aiohttp
import pytest

from agents.verification import Identity, encode_json, sign_message
from gateway.clock import SeededRandomness
from gateway.protocol import HEADER_SIGNATURE
from gateway.state import init_state
from pasarela.logcheck import check_log
from pasarela.processes import Child, child_process, free_ports, pasarela_argv, wait_healthy


def _message(state: Path, jti: str, body: object) -> tuple[dict[str, str], bytes]:
    folder = state / "agencies" / "AG001"
    identity = Identity.from_files(folder / "key.pem", folder / "cert.pem")
    payload = encode_json(body)
    token = sign_message(
        identity, to="AG002", service="ping", body=payload, jti=jti, now=time.time(), lifetime=60
    )
    return {HEADER_SIGNATURE: token, "Content-Type": "application/json"}, payload


async def _post(
    url: str, headers: dict[str, str], body: bytes
) -> tuple[int, dict[str, str], bytes]:
    # A new connection per message, so that SO_REUSEPORT spreads them.
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(f"{url}/v1/messages", headers=headers, data=body) as response,
    ):
        return response.status, dict(response.headers), await response.read()


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[tuple[Path, Child]]:
    """A state whose agencies are served by an agency host process."""
    (agents_port,) = free_ports(1)
    state = tmp_path / "state"
    init_state(state, agencies=2, randomness=SeededRandomness(5), now=time.time(),
               agents_url=f"http://127.0.0.1:{agents_port}")  # fmt: skip
    argv = pasarela_argv("agents", "serve", "--state", str(state), "--port", str(agents_port))
    with child_process("agents", argv, port=agents_port, log=tmp_path / "agents.log") as host:
        asyncio.run(wait_healthy(host))
        yield state, host


def _replica(stack: ExitStack, state: Path, name: str, port: int, cache: str,
             *extra: str) -> Child:  # fmt: skip
    log = state.parent / f"{name}.db"
    argv = pasarela_argv(
        "serve", "--state", str(state), "--port", str(port), "--store", f"sqlite://{log}",
        "--cache", cache, "--replica", name, *extra,
    )  # fmt: skip
    child = stack.enter_context(
        child_process(name, argv, port=port, log=state.parent / f"{name}.out")
    )
    asyncio.run(wait_healthy(child))
    asyncio.run(_until_answering(child, name))
    return child


async def _until_answering(child: Child, name: str, timeout: float = 30.0) -> None:
    """Until a health answer comes from replica ``name`` (on a shared port another replica
    may answer first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert child.process.poll() is None, f"{name} exited"
        connector = aiohttp.TCPConnector(force_close=True)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(f"{child.url}/v1/health") as response,
        ):
            if (await response.json())["checks"]["cache"].get("replica") == name:
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"replica {name} never answered on {child.url}")


def test_replicas_on_two_ports_share_replays_retries_and_the_rate_limit(
    platform: tuple[Path, Child], redis_url: str
) -> None:
    state, _ = platform
    p1, p2 = free_ports(2)
    with ExitStack() as stack:
        one = _replica(stack, state, "r1", p1, redis_url, "--rate", "0.01", "--burst", "3")
        two = _replica(stack, state, "r2", p2, redis_url, "--rate", "0.01", "--burst", "3")
        headers, body = _message(state, "AG001-x-1", {"n": 1})
        first = asyncio.run(_post(one.url, headers, body))
        assert first[0] == 200, first
        retry = asyncio.run(_post(two.url, headers, body))
        assert (retry[0], retry[2], retry[1].get("Pasarela-Receipt")) == (
            first[0], first[2], first[1].get("Pasarela-Receipt")
        )  # fmt: skip
        headers2, body2 = _message(state, "AG001-x-1", {"n": 2})
        replay = asyncio.run(_post(two.url, headers2, body2))
        assert replay[0] == 409
        assert json.loads(replay[2])["type"] == "urn:pasarela:problem:replay"
        statuses = [
            asyncio.run(_post(url, *_message(state, f"AG001-y-{n}", {"n": n})))[0]
            for n, url in enumerate([one.url, two.url, one.url])
        ]
        assert statuses == [200, 200, 429]  # burst 3 across both replicas
    verified = [check_log(state.parent / f"{name}.db")[0] for name in ("r1", "r2")]
    assert all(check.result.ok for check in verified)
    assert [check.result.records > 0 for check in verified] == [True, True]
    both = subprocess.run(
        pasarela_argv("log", "verify", "--log", str(state.parent / "r1.db"),
                      "--log", str(state.parent / "r2.db"), "--json"),
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert both.returncode == 0, both.stderr
    assert json.loads(both.stdout)["ok"] is True


def test_replicas_on_one_port_with_so_reuseport_share_the_load(
    platform: tuple[Path, Child], redis_url: str
) -> None:
    state, _ = platform
    (port,) = free_ports(1)
    with ExitStack() as stack:
        one = _replica(stack, state, "s1", port, redis_url, "--reuse-port")
        _replica(stack, state, "s2", port, redis_url, "--reuse-port")

        async def send_all() -> list[int]:
            messages = [_message(state, f"AG001-z-{n}", {"n": n}) for n in range(40)]
            answers = await asyncio.gather(*(_post(one.url, h, b) for h, b in messages))
            return [status for status, _, _ in answers]

        assert asyncio.run(send_all()) == [200] * 40
    counts = [check_log(state.parent / f"{name}.db")[0].result.records for name in ("s1", "s2")]
    assert sum(counts) == 80  # a request and a response record per message
    assert min(counts) > 0, counts  # the kernel gave both replicas connections


def test_replicas_on_one_postgres_schema_follow_each_others_operator_actions(
    platform: tuple[Path, Child], redis_url: str, postgres_url: str
) -> None:
    """Two replicas, one schema (a chain each), one cache: an agency disconnected at one
    replica is refused at the other a moment later, and both chains verify."""
    state, _ = platform
    p1, p2 = free_ports(2)
    token = (state / "operator" / "token.jwt").read_text().strip()
    with ExitStack() as stack:
        for name, port in (("r1", p1), ("r2", p2)):
            argv = pasarela_argv(
                "serve", "--state", str(state), "--port", str(port), "--store", postgres_url,
                "--cache", redis_url, "--replica", name,
            )  # fmt: skip
            child = stack.enter_context(
                child_process(name, argv, port=port, log=state.parent / f"{name}.out")
            )
            asyncio.run(wait_healthy(child))
        one, two = f"http://127.0.0.1:{p1}", f"http://127.0.0.1:{p2}"
        assert asyncio.run(_post(two, *_message(state, "AG001-p-1", {"n": 1})))[0] == 200

        async def disconnect() -> int:
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"{one}/v1/admin/agencies/AG002/transitions",
                    json={"event": "disconnect", "reason": "rehearsal"},
                    headers={"Authorization": f"Bearer {token}"},
                ) as response,
            ):
                return response.status

        assert asyncio.run(disconnect()) == 200
        deadline, status, attempt = time.monotonic() + 10, 0, 0
        while time.monotonic() < deadline:
            attempt += 1
            message = _message(state, f"AG001-q-{attempt}", {})
            status, _, body = asyncio.run(_post(two, *message))
            if status == 403:
                break
            time.sleep(0.2)
        assert status == 403
        assert json.loads(body)["type"] == "urn:pasarela:problem:agency-disconnected"
    verified = subprocess.run(
        pasarela_argv("log", "verify", "--log", postgres_url, "--json"),
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
    logs = json.loads(verified.stdout)["logs"]
    assert [log["log"].rsplit("#", 1)[1] for log in logs] == ["r1", "r2"]
    assert all(log["ok"] for log in logs)
