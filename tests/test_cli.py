"""The command line: init, log verify against a real SQLite file, the live demo."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.log import LogEntry, MessageLog
from gateway.state import StateDir
from pasarela.cli import main


@pytest.fixture
def state(tmp_path: Path) -> Path:
    root = tmp_path / "state"
    assert main(["init", str(root), "--agencies", "3", "--agents-url", "http://127.0.0.1:1"]) == 0
    return root


async def _fill_log(root: Path, count: int) -> None:
    state = StateDir(root)
    log = MessageLog(state.open_log_store())
    for n in range(count):
        log.append(LogEntry(kind="request", at=1.0 + n, fields={"jti": f"m{n}"}))
    await log.aclose()
    state.close()


def test_init_writes_keys_certificates_and_registry(state: Path) -> None:
    """init creates the CA, the gateway, each agency's PEM files and a connected registry."""
    for path in ("ca/cert.pem", "gateway/key.pem", "operator/token.jwt", "state.db"):
        assert (state / path).is_file(), path
    for code in ("AG001", "AG002", "AG003", "PORTAL"):
        assert (state / "agencies" / code / "key.pem").read_bytes().startswith(b"-----BEGIN")
        assert (state / "agencies" / code / "cert.pem").read_bytes().startswith(b"-----BEGIN")
    loaded = StateDir(state)
    try:
        assert {a.code for a in loaded.registry.agencies()} == {"AG001", "AG002", "AG003", "PORTAL"}
        assert all(a.state.value == "connected" for a in loaded.registry.agencies())
        assert loaded.registry.may_call("AG001", "AG003", "ping")
        assert loaded.registry.may_call("PORTAL", "AG002", "ping")
        assert (state / "agencies" / "AG001" / "key.pem").stat().st_mode & 0o077 == 0
    finally:
        loaded.close()


def test_init_refuses_an_existing_state(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A second init on the same directory is a usage error and changes nothing."""
    before = (state / "ca" / "cert.pem").read_bytes()
    assert main(["init", str(state)]) == 2
    assert "already" in capsys.readouterr().err
    assert (state / "ca" / "cert.pem").read_bytes() == before


async def test_log_verify_passes_on_an_intact_log(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """log verify exits 0 on an untouched chain."""
    await _fill_log(state, 5)
    assert main(["log", "verify", "--state", str(state)]) == 0
    assert "5 records" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("tamper", "first_bad"),
    [
        ('UPDATE log SET fields = \'{"jti":"evil"}\' WHERE seq = 3', 3),
        ("DELETE FROM log WHERE seq = 2", 2),
        ("UPDATE log SET at = 99 WHERE seq = 5", 5),
    ],
)
async def test_log_verify_names_the_first_bad_record(
    state: Path, capsys: pytest.CaptureFixture[str], tamper: str, first_bad: int
) -> None:
    """log verify exits 1 and names the first bad sequence number after raw SQL tampering."""
    await _fill_log(state, 6)
    with sqlite3.connect(state / "state.db") as conn:
        conn.execute(tamper)
    assert main(["log", "verify", "--state", str(state)]) == 1
    assert f"sequence number {first_bad}" in capsys.readouterr().out


def test_log_verify_on_a_missing_state_is_a_usage_error(tmp_path: Path) -> None:
    """Pointing at a directory without state.db exits 2."""
    assert main(["log", "verify", "--state", str(tmp_path)]) == 2


def test_send_with_bad_json_body_is_a_usage_error(state: Path) -> None:
    """--body must be JSON."""
    assert (
        main(["send", "--state", str(state), "--from", "AG001", "--to", "AG002", "--body", "{"])
        == 2
    )


def test_send_to_a_gateway_that_is_down_is_an_infrastructure_error(state: Path) -> None:
    """Nothing listening at --gateway-url: exit 3."""
    args = ["send", "--state", str(state), "--from", "AG001", "--to", "AG002"]
    assert main([*args, "--gateway-url", "http://127.0.0.1:9"]) == 3


def test_demo_runs_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    """The demo starts real servers, exchanges, refuses a forgery, verifies the log: exit 0."""
    assert main(["demo", "--agencies", "3"]) == 0
    out = capsys.readouterr().out
    assert "bad-signature" in out
    assert "hash chain intact" in out
