"""`pasarela attack` against a freshly initialised live gateway: the scorecard is all green,
the outputs are written, and the exit codes say what happened."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from agents.adversaries.catalogue import CATALOGUE
from agents.adversaries.profiles import LIBRARY, load_profile, resolve_profile
from pasarela.cli import main
from scenarios.toml_source import ScenarioError
from tests.attack.conftest import LiveGateway, live_gateway


def test_profile_all_blocks_and_detects_every_technique(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every technique of the catalogue, destructive ones included, on a throwaway lab."""
    with live_gateway(tmp_path / "lab") as live:
        code = main(
            [
                "attack",
                "--profile",
                "all",
                "--gateway",
                live.url,
                "--state",
                str(live.state),
                "--out",
                str(tmp_path / "out"),
                "--allow-destructive",
            ]
        )
    out = capsys.readouterr().out
    document = json.loads((tmp_path / "out" / "attack-results.json").read_text())
    holes = [r for r in document["results"] if r["verdict"] != "blocked"]
    assert holes == [], out
    assert code == 0
    assert {r["technique"] for r in document["results"]} == set(CATALOGUE)
    assert "Attack scorecard: all" in out
    assert f"{len(CATALOGUE)} of {len(CATALOGUE)} techniques blocked" in out
    expected_alerts = [r for r in document["results"] if r["expected"]["alert"]]
    assert all(r["observed"]["alerts"] > 0 for r in expected_alerts)
    suite = ET.parse(tmp_path / "out" / "attack-results.xml").getroot()
    assert suite.tag == "testsuite"
    assert suite.get("tests") == str(len(CATALOGUE))
    assert suite.get("failures") == "0"


def test_shipped_profile_runs_and_skips_destructive_steps_without_the_flag(
    live: LiveGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "attack",
            "--profile",
            "insider-stolen-key",
            "--gateway",
            live.url,
            "--state",
            str(live.state),
            "--out",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    document = json.loads((tmp_path / "attack-results.json").read_text())
    assert set(document["skipped"]) == {"superseded-key", "stolen-key-reenrolment"}
    assert "skipped: superseded-key" in out


def test_unreachable_gateway_is_an_infrastructure_error(live: LiveGateway, tmp_path: Path) -> None:
    args = ["attack", "--profile", "outsider", "--gateway", "http://127.0.0.1:9",
            "--state", str(live.state), "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 3


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["attack", "--profile", "no-such-profile", "--state", str(tmp_path)]) == 2
    assert "no profile 'no-such-profile'" in capsys.readouterr().err
    assert main(["attack", "--state", str(tmp_path)]) == 2


def test_every_shipped_profile_loads() -> None:
    names = sorted(p.stem for p in LIBRARY.glob("*.toml"))
    assert len(names) >= 4
    for name in names:
        profile = resolve_profile(name)
        assert profile.steps


def test_profile_mistakes_name_file_key_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'schema = 1\n[profile]\nname = "x"\n\n[[steps]]\ntechnique = "alg-nonee"\n',
        encoding="utf-8",
    )
    with pytest.raises(ScenarioError) as caught:
        load_profile(bad)
    assert (caught.value.key, caught.value.line) == ("steps[0].technique", 6)
    assert "did you mean 'alg-none'" in caught.value.message
    bad.write_text(
        'schema = 1\n[profile]\nname = "x"\n[[steps]]\ntechnique = "request-flood"\n'
        "params = { mesages = 5 }\n",
        encoding="utf-8",
    )
    with pytest.raises(ScenarioError) as caught:
        load_profile(bad)
    assert caught.value.key == "steps[0].params.mesages"
    assert "unknown parameter 'mesages' of request-flood" in caught.value.message
