"""`pasarela conformance` from the command line: exit codes 0/1/2/3 and the reports."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from pasarela.cli import main
from pasarela.conformance import CHECKS
from pasarela.processes import free_ports
from tests.conformance.conftest import RefusingConnector

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "connectors"


def _argv(connector: str, state: Path, port: int, *extra: str) -> list[str]:
    return [
        "conformance",
        "--connector", connector,
        "--agency", "AG001",
        "--state", str(state),
        "--listen", f"127.0.0.1:{port}",
        "--seed", "5",
        *extra,
    ]  # fmt: skip


@pytest.fixture
def agency_host(kit_state: Path, tmp_path: Path) -> Iterator[str]:
    """`pasarela agents serve`: a provider-only connector, as a process of its own."""
    import asyncio

    from pasarela.processes import child_process, pasarela_argv, wait_healthy

    (port,) = free_ports(1)
    argv = pasarela_argv("agents", "serve", "--state", str(kit_state), "--port", str(port))
    with child_process("agents", argv, port=port, log=tmp_path / "agents.log") as child:
        asyncio.run(wait_healthy(child))
        yield child.url


def test_exit_0_when_every_selected_check_passes(
    agency_host: str, kit_state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (port,) = free_ports(1)
    report = tmp_path / "report.json"
    code = main(
        _argv(agency_host, kit_state, port, "--checks", "provider.*", "--json", str(report))
    )
    out = capsys.readouterr().out
    assert code == 0, out
    document = json.loads(report.read_text())
    provider = [c.id for c in CHECKS if c.side == "provider"]
    assert [c["id"] for c in document["checks"]] == provider
    assert {c["outcome"] for c in document["checks"]} == {"passed"}
    assert document["conformant"] is True
    assert document["successful_exchanges"] > 0
    assert f"conformant: {len(provider)} of {len(provider)} checks passed" in out


def test_exit_0_for_the_reference_connector_as_a_black_box(
    kit_state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reference connector in a process of its own, every check, the kit waiting for it."""
    kit, port = free_ports(2)
    folder = kit_state / "agencies" / "AG001"
    env = {
        **os.environ,
        "PASARELA_GATEWAY_URL": f"http://127.0.0.1:{kit}",
        "PASARELA_AGENCY": "AG001",
        "PASARELA_KEY": str(folder / "key.pem"),
        "PASARELA_CERT": str(folder / "cert.pem"),
        "PASARELA_CA": str(kit_state / "ca" / "cert.pem"),
        "PORT": str(port),
    }
    argv = [sys.executable, str(EXAMPLES / "python" / "connector.py")]
    junit = tmp_path / "conformance.xml"
    with (tmp_path / "connector.log").open("wb") as log:
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            code = main(
                _argv(f"http://127.0.0.1:{port}", kit_state, kit, "--wait", "30",
                      "--junit-xml", str(junit))
            )  # fmt: skip
        finally:
            process.terminate()
            process.wait(timeout=10)
    out = capsys.readouterr().out
    assert code == 0, out + (tmp_path / "connector.log").read_text()
    suite = ET.parse(junit).getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == (
        str(len(CHECKS)), "0", "0"
    )  # fmt: skip
    # The connector logged the kit's test cases (its log names them).
    assert "consumer.retry-503#1" in (tmp_path / "connector.log").read_text()


def test_exit_1_with_json_path_differences_reproduce_line_and_raw_request(
    refusing_connector: RefusingConnector,
    kit_state: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (port,) = free_ports(1)
    outputs = {name: tmp_path / name for name in ("r.json", "r.xml", "t.jsonl")}
    extra = ["--checks", "provider.accepts-valid,provider.expired"]
    extra += ["--json", str(outputs["r.json"]), "--junit-xml", str(outputs["r.xml"])]
    extra += ["--transcript", str(outputs["t.jsonl"])]
    code = main(_argv(refusing_connector.url, kit_state, port, *extra))
    out = capsys.readouterr().out
    assert code == 1, out
    document = json.loads(outputs["r.json"].read_text())
    accepts, expired = document["checks"]
    assert (accepts["outcome"], expired["outcome"]) == ("failed", "passed")
    assert {"path": "$.status", "expected": "2xx", "actual": 401} in accepts["differences"]
    assert "--checks provider.accepts-valid --seed 5" in accepts["reproduce"]
    assert accepts["reproduce"].endswith("# case provider.accepts-valid#1")
    headers = accepts["request"]["headers"]
    assert headers["Pasarela-Test-Case"] == "provider.accepts-valid#1"
    assert headers["Pasarela-Signature"].count(".") == 2
    assert "Pasarela-Receipt" in headers
    # Every request the kit made named its case.
    posts = refusing_connector.seen
    assert [h["Pasarela-Test-Case"] for h in posts] == [
        "provider.accepts-valid#1",
        "provider.expired#1",
    ]
    suite = ET.parse(outputs["r.xml"]).getroot()
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert set(cases) == {"provider.accepts-valid", "provider.expired"}
    failure = cases["provider.accepts-valid"].find("failure")
    assert failure is not None
    assert "$.status: 2xx / 401" in (failure.text or "")
    assert cases["provider.expired"].find("failure") is None
    transcript = [json.loads(line) for line in outputs["t.jsonl"].read_text().splitlines()]
    assert [t["case"] for t in transcript] == [
        "provider.accepts-valid#1",
        "provider.expired#1",
    ]
    assert transcript[0]["response"]["status"] == 401
    assert "differences (path: expected / actual)" not in out  # the terminal shows a table
    assert "$.status" in out
    assert "reproduce:" in out


def test_a_run_without_a_successful_exchange_cannot_pass(
    refusing_connector: RefusingConnector,
    kit_state: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Refusing everything passes a refusal check, but the run still fails."""
    (port,) = free_ports(1)
    report = tmp_path / "r.json"
    code = main(
        _argv(refusing_connector.url, kit_state, port, "--checks", "provider.expired",
              "--json", str(report))
    )  # fmt: skip
    out = capsys.readouterr().out
    document = json.loads(report.read_text())
    assert [c["outcome"] for c in document["checks"]] == ["passed"]
    assert code == 1, out
    assert document["conformant"] is False
    assert document["successful_exchanges"] == 0
    assert "no message was exchanged successfully" in document["blocker"]
    assert "not conformant" in out


def test_exit_2_for_usage_errors(kit_state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (port,) = free_ports(1)
    url = "http://127.0.0.1:9"
    assert main(_argv(url, kit_state, port, "--checks", "provider.nonsense")) == 2
    assert "no check matches 'provider.nonsense'" in capsys.readouterr().err
    assert main(["conformance", "--connector", url, "--agency", "AG001"]) == 2
    assert "needs --state" in capsys.readouterr().err
    unknown = ["conformance", "--connector", url, "--agency", "AG404", "--state", str(kit_state)]
    assert main(unknown) == 2
    assert "no agency AG404" in capsys.readouterr().err
    assert main(_argv("ftp://example.org", kit_state, port)) == 2
    assert "not an http(s) URL" in capsys.readouterr().err
    assert main(_argv(url, kit_state.parent / "nowhere", port)) == 2
    assert "not a pasarela state" in capsys.readouterr().err
    assert main(_argv(url, kit_state, port, "--listen", "nonsense")) == 2
    assert "not HOST:PORT" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(_argv(url, kit_state, port, "--timeout", "soon"))
    assert exited.value.code == 2


def test_exit_3_when_the_connector_is_unreachable(
    kit_state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kit, nobody = free_ports(2)
    code = main(_argv(f"http://127.0.0.1:{nobody}", kit_state, kit))
    err = capsys.readouterr().err
    assert code == 3
    assert f"the connector at http://127.0.0.1:{nobody} is unreachable" in err


def test_exit_3_when_the_kit_cannot_listen(
    refusing_connector: RefusingConnector, kit_state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(_argv(refusing_connector.url, kit_state, port))
    assert code == 3
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_list_checks_names_every_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["conformance", "--list-checks"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()] == [c.id for c in CHECKS]


def test_the_state_directory_is_not_written(
    refusing_connector: RefusingConnector, kit_state: Path
) -> None:
    """Read-only: SQLite's shared-memory index (-shm) aside, no file changes."""

    def contents() -> dict[Path, bytes]:
        files = (p for p in kit_state.rglob("*") if p.is_file())
        return {p: p.read_bytes() for p in files if not p.name.endswith("-shm")}

    before = contents()
    (port,) = free_ports(1)
    main(_argv(refusing_connector.url, kit_state, port, "--checks", "provider.expired"))
    assert contents() == before
