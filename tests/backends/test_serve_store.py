"""`pasarela serve --store postgresql://...`: a live gateway logging to PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import pytest

from gateway.clock import SeededRandomness
from gateway.state import init_state
from pasarela.cli import main
from pasarela.processes import child_process, free_ports, pasarela_argv, wait_healthy


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    """``pasarela serve`` in a process of its own (it configures logging globally)."""
    argv = pasarela_argv("serve", *args)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_serve_exits_3_when_postgres_is_unreachable(tmp_path: Path) -> None:
    init_state(tmp_path / "state", agencies=2, randomness=SeededRandomness(1), now=1.7e9)
    url = "postgresql://gw:s3cret@127.0.0.1:1/test?schema=nowhere"
    served = _serve("--state", str(tmp_path / "state"), "--store", url)
    assert served.returncode == 3, served.stderr
    shown = "PostgreSQL at postgresql://gw@127.0.0.1:1/test?schema=nowhere is unavailable"
    assert shown in served.stderr
    assert "s3cret" not in served.stderr


def test_serve_exits_3_when_redis_is_unreachable(tmp_path: Path) -> None:
    init_state(tmp_path / "state", agencies=2, randomness=SeededRandomness(1), now=1.7e9)
    url = "redis://:s3cret@127.0.0.1:1/0?prefix=nowhere"
    served = _serve("--state", str(tmp_path / "state"), "--cache", url)
    assert served.returncode == 3, served.stderr
    assert "Redis at redis://127.0.0.1:1/0?prefix=nowhere" in served.stderr
    assert "s3cret" not in served.stderr


def test_serve_rejects_a_cache_url_it_cannot_use(tmp_path: Path) -> None:
    init_state(tmp_path / "state", agencies=2, randomness=SeededRandomness(1), now=1.7e9)
    served = _serve("--state", str(tmp_path / "state"), "--cache", "memcached://x/0")
    assert served.returncode == 2, served.stderr
    assert "not a Redis URL" in served.stderr


def test_serve_rejects_a_store_url_it_cannot_use(tmp_path: Path) -> None:
    init_state(tmp_path / "state", agencies=2, randomness=SeededRandomness(1), now=1.7e9)
    served = _serve("--state", str(tmp_path / "state"), "--store", "mysql://db/x")
    assert served.returncode == 2, served.stderr
    assert "unsupported log store scheme 'mysql'" in served.stderr


def test_a_gateway_on_postgres_logs_what_it_relays_and_the_log_verifies(
    tmp_path: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway_port, agents_port = free_ports(2)
    state = tmp_path / "state"
    init_state(
        state,
        agencies=2,
        randomness=SeededRandomness(2),
        now=time.time(),
        agents_url=f"http://127.0.0.1:{agents_port}",
    )
    gateway_argv = pasarela_argv(
        "serve", "--state", str(state), "--port", str(gateway_port), "--store", postgres_url
    )
    agents_argv = pasarela_argv(
        "agents", "serve", "--state", str(state), "--port", str(agents_port)
    )
    with (
        child_process("gateway", gateway_argv, port=gateway_port, log=tmp_path / "gw.log") as gw,
        child_process("agents", agents_argv, port=agents_port, log=tmp_path / "ag.log") as ag,
    ):
        asyncio.run(wait_healthy(gw))
        asyncio.run(wait_healthy(ag))
        for n in range(3):
            sent = subprocess.run(
                pasarela_argv(
                    "send", "--state", str(state), "--from", "AG001", "--to", "AG002",
                    "--gateway-url", gw.url, "--body", json.dumps({"n": n}),
                ),
                capture_output=True,
                text=True,
                check=False,
            )  # fmt: skip
            assert sent.returncode == 0, sent.stdout + sent.stderr
    assert main(["log", "verify", "--log", postgres_url, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is True
    assert result["records"] >= 6  # a request and a response record per message
    # The state's SQLite file holds no log records: the log went to PostgreSQL.
    assert main(["log", "verify", "--state", str(state), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 0
