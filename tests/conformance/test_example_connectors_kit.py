"""The conformance kit against the example connectors: the reference and the JavaScript
connector pass every check; each defect of the broken connector is reported by the check
meant for it and by no other.

The Python connectors run in the test's event loop (their aiohttp apps on free ports), the
kit too (:func:`run_conformance`), so many runs overlap: most of a run is waiting for
Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aiohttp import web

from pasarela.conformance import CHECKS, KitSettings, RunReport, run_conformance
from pasarela.processes import free_ports

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "connectors"
AGENCY = "AG001"
EVERY_CHECK = [check.id for check in CHECKS]


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


reference = _load("conformance_reference_connector", EXAMPLES / "python" / "connector.py")
broken = _load("conformance_broken_connector", EXAMPLES / "broken" / "connector.py")


def _settings(module: ModuleType, state: Path, *, kit_port: int, port: int) -> Any:
    folder = state / "agencies" / AGENCY
    return module.Settings(
        gateway_url=f"http://127.0.0.1:{kit_port}",
        agency=AGENCY,
        key=folder / "key.pem",
        cert=folder / "cert.pem",
        ca=state / "ca" / "cert.pem",
        port=port,
    )


@contextlib.asynccontextmanager
async def _serving(app: web.Application, port: int) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def _run(
    module: ModuleType, state: Path, *, ports: list[int] | None = None, **app_options: Any
) -> RunReport:
    """Run the kit against ``module``'s connector; ``ports`` (the kit's, the connector's)
    when runs overlap: chosen together, so no two runs get the same free port."""
    kit_port, port = ports or free_ports(2)
    app = module.create_app(_settings(module, state, kit_port=kit_port, port=port), **app_options)
    async with _serving(app, port) as url:
        settings = KitSettings(connector=url, agency=AGENCY, state=state, port=kit_port, seed=3)
        return await run_conformance(settings, CHECKS)


def _failed(report: RunReport) -> list[str]:
    return [result.check.id for result in report.results if not result.passed]


def _explain(report: RunReport) -> str:
    return "\n".join(
        f"{r.check.id}: {r.message} {[d.as_dict() for d in r.differences]}"
        for r in report.results
        if not r.passed
    )


async def test_the_reference_connector_passes_every_check(kit_state: Path) -> None:
    report = await _run(reference, kit_state)
    assert _failed(report) == [], _explain(report)
    assert [r.check.id for r in report.results] == EVERY_CHECK
    assert report.conformant
    assert report.exit_code == 0
    assert report.successes >= 5


async def test_each_defect_fails_its_own_check_and_no_other(kit_state: Path) -> None:
    """One run per defect (and with none, and with all), overlapping in one event loop."""
    defect_sets = [frozenset({name}) for name in broken.DEFECTS]
    defect_sets += [frozenset(), frozenset(broken.DEFECTS)]
    ports = free_ports(2 * len(defect_sets))
    reports = await asyncio.gather(
        *(
            _run(broken, kit_state, ports=ports[2 * i : 2 * i + 2], defects=defects)
            for i, defects in enumerate(defect_sets)
        )
    )
    for defects, report in zip(defect_sets, reports, strict=True):
        wanted = sorted(broken.DEFECTS[name] for name in defects)
        assert sorted(_failed(report)) == wanted, f"{sorted(defects)}:\n{_explain(report)}"
        assert report.exit_code == (1 if defects else 0)
    assert set(broken.DEFECTS.values()) <= set(EVERY_CHECK)
    assert len(set(broken.DEFECTS.values())) == len(broken.DEFECTS)


async def test_the_broken_connectors_failures_say_what_differs(kit_state: Path) -> None:
    """The diffs name the JSON path of what is wrong, with expected and actual values."""
    report = await _run(broken, kit_state, defects=frozenset({"wrong-corr", "answer-typ-jwt"}))
    by_id = {r.check.id: r for r in report.results}
    claims = by_id["provider.answer-claims"]
    assert [d.path for d in claims.differences] == ["$.claims.corr"]
    (corr,) = claims.differences
    assert corr.expected != corr.actual
    assert claims.exchange is not None
    assert claims.exchange.request_header("Pasarela-Test-Case") == "provider.answer-claims#1"
    header = by_id["provider.answer-signature"].differences
    assert [(d.path, d.expected, d.actual) for d in header] == [
        ("$.header.typ", "pasarela-msg+jwt", "JWT")
    ]


NODE = shutil.which("node")
JS = EXAMPLES / "javascript"


@pytest.fixture
def js_connector(kit_state: Path, tmp_path: Path) -> Iterator[tuple[str, int]]:
    if NODE is None or not (JS / "node_modules").is_dir():
        pytest.skip("node or the JavaScript connector's node_modules is missing (make unit)")
    kit_port, port = free_ports(2)
    folder = kit_state / "agencies" / AGENCY
    env = {
        **os.environ,
        "PASARELA_GATEWAY_URL": f"http://127.0.0.1:{kit_port}",
        "PASARELA_AGENCY": AGENCY,
        "PASARELA_KEY": str(folder / "key.pem"),
        "PASARELA_CERT": str(folder / "cert.pem"),
        "PASARELA_CA": str(kit_state / "ca" / "cert.pem"),
        "PORT": str(port),
    }
    with (tmp_path / "node.log").open("wb") as log:
        process = subprocess.Popen(
            [NODE, str(JS / "connector.mjs")], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            yield f"http://127.0.0.1:{port}", kit_port
        finally:
            process.terminate()
            process.wait(timeout=10)


async def test_the_javascript_connector_passes_every_check(
    js_connector: tuple[str, int], kit_state: Path
) -> None:
    url, kit_port = js_connector
    settings = KitSettings(
        connector=url, agency=AGENCY, state=kit_state, port=kit_port, seed=4, wait=20
    )
    report = await run_conformance(settings, CHECKS)
    assert _failed(report) == [], _explain(report)
    assert report.exit_code == 0
