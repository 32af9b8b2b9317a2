"""The pytest plugin (pasarela.pytest_plugin), run the way an agency team runs it: in pytester."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from gateway.clock import SystemClock, SystemRandomness
from gateway.guard import GuardPolicy
from gateway.http import GATEWAY_KEY
from gateway.state import StateDir, init_state
from pasarela.pytest_plugin import (
    AgencyFactory,
    PasarelaGateway,
    PasarelaPortal,
    _LoopThread,
    _serve,
)
from pasarela.runtime import build_gateway_app

pytest_plugins = ["pytester"]

# The suites run in this process, which imported pasarela before their pytest marks the
# plugin's package for assertion rewriting: that one warning is expected here, and only here.
INI = """
[pytest]
addopts = --strict-markers -p no:cacheprovider
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
filterwarnings =
    error
    ignore:Module already imported so cannot be rewritten:pytest.PytestAssertRewriteWarning
"""

# What an agency team's conftest would hold: its connector's endpoint, served in the test.
CONFTEST = '''
import contextlib

from aiohttp import web

from agents.host import AgencyHost
from gateway.clock import SystemClock, SystemRandomness


@contextlib.asynccontextmanager
async def serving(pasarela_gateway, services=None):
    """An AgencyHost on 127.0.0.1 in the test's loop; yields it and its base URL."""
    host = AgencyHost(
        identities={},
        directory=pasarela_gateway.directory,
        clock=SystemClock(),
        randomness=SystemRandomness(),
        **({"services": services} if services else {}),
    )
    runner = web.AppRunner(host.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield host, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
'''

PING = """
import pytest

from conftest import serving


async def exchange(pasarela_gateway, pasarela_agency):
    async with serving(pasarela_gateway) as (host, url):
        receiver = pasarela_agency("AG002", endpoint=f"{url}/agencies/AG002/messages")
        host.set_identity(receiver.identity)
        sender = pasarela_agency("AG001")
        reply = await sender.connector().send(to="AG002", service="ping", body={"hello": 1})
    assert reply.status == 200
    assert reply.json() == {"hello": 1}
    assert reply.claims.iss == "AG002"
    assert reply.receipt.seq > 0
    assert pasarela_gateway.alerts() == []


async def test_ping_in_a_function_loop(pasarela_gateway, pasarela_agency):
    await exchange(pasarela_gateway, pasarela_agency)


@pytest.mark.asyncio(loop_scope="module")
async def test_ping_in_a_module_loop(pasarela_gateway, pasarela_agency):
    await exchange(pasarela_gateway, pasarela_agency)
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester directory set up like an agency team's suite (strict, asyncio auto)."""
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST)
    return pytester


@dataclass(frozen=True, slots=True, kw_only=True)
class ServedState:
    """A gateway over a `pasarela init` state, served from a thread of the outer test."""

    url: str
    state: Path
    thread: _LoopThread
    app: web.Application

    def endpoint(self, code: str) -> str:
        return self.thread.call(lambda: self.app[GATEWAY_KEY].registry.require(code).endpoint)


@pytest.fixture
def served_state(tmp_path: Path) -> Iterator[ServedState]:
    """A `pasarela init` state (AG001, AG002, PORTAL) and its gateway, served in process."""
    root = tmp_path / "state"
    init_state(
        root,
        agencies=2,
        agents_url="http://127.0.0.1:9",
        randomness=SystemRandomness(),
        now=SystemClock().now(),
    )
    thread = _LoopThread("outer-gateway")
    # Built on its thread: the state's SQLite connections are used there only.
    app = thread.call(lambda: build_gateway_app(StateDir(root)))
    runner, url = thread.run(_serve(app, policy=GuardPolicy()))
    try:
        yield ServedState(url=url, state=root, thread=thread, app=app)
    finally:
        thread.run(runner.cleanup())
        thread.close()


def test_a_python_connector_sends_through_the_gateway_to_an_agency_host(
    suite: pytest.Pytester,
) -> None:
    """Over real HTTP, in a function- and a module-scoped loop: signed, relayed, verified."""
    suite.makepyfile(test_ping=PING)
    suite.runpytest().assert_outcomes(passed=2)


def test_a_connector_receives_an_ati_request_from_the_portal_and_answers(
    suite: pytest.Pytester,
) -> None:
    """The portal's request reaches the connector; its later ati.answer is recorded."""
    suite.makepyfile(
        test_ati="""
        import asyncio
        import json

        from conftest import serving


        async def test_answer(pasarela_gateway, pasarela_agency, pasarela_portal):
            answering = set()

            async def on_request(claims, body):
                request = json.loads(body)
                answer = {"NumSolicitud": request["NumSolicitud"], "Respuesta": "adjunta"}
                send = agency.connector().send(to="PORTAL", service="ati.answer", body=answer)
                answering.add(asyncio.get_running_loop().create_task(send))
                return 202, b'{"status": "accepted"}'

            async with serving(pasarela_gateway, {"ati.request": on_request}) as (host, url):
                agency = pasarela_agency(
                    "AG001", endpoint=f"{url}/agencies/AG001/messages", services={"ati.request"}
                )
                host.set_identity(agency.identity)
                reply = await pasarela_portal.send(to="AG001", body={"NumSolicitud": "AT001W-1"})
                (received,) = await pasarela_portal.wait_received(1)
                await asyncio.gather(*answering)
            assert (reply.status, reply.json()) == (202, {"status": "accepted"})
            assert reply.claims.svc == "ati.request"
            assert received.claims.iss == "AG001"
            assert received.claims.svc == "ati.answer"
            assert received.json() == {"NumSolicitud": "AT001W-1", "Respuesta": "adjunta"}
        """
    )
    suite.runpytest().assert_outcomes(passed=1)


def test_a_sync_test_drives_a_connector_in_another_process(suite: pytest.Pytester) -> None:
    """The PEM files and the gateway serve a separate program while the test blocks on it."""
    suite.makepyfile(
        test_other_process="""
        import subprocess
        import sys

        from agents.verification import Identity


        def test_send(pasarela_gateway, pasarela_agency, pasarela_portal):
            agency = pasarela_agency("AG001")
            loaded = Identity.from_files(agency.key_path, agency.certificate_path)
            assert loaded.kid == agency.kid
            ca = pasarela_gateway.ca_certificate_path.read_text()
            assert ca == pasarela_gateway.ca_certificate
            argv = [
                sys.executable, "-m", "pasarela", "send",
                "--state", str(pasarela_gateway.credentials_dir),
                "--from", "AG001", "--to", "PORTAL", "--body", '{"n": 1}',
                "--gateway-url", pasarela_gateway.url,
            ]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
            assert done.returncode == 0, done.stderr
            assert "200 from PORTAL (verified)" in done.stdout
        """
    )
    suite.runpytest().assert_outcomes(passed=1)


def test_the_markers_pass_strict_markers_and_select_tests(suite: pytest.Pytester) -> None:
    """Tests using a fixture carry pasarela_gateway; pasarela_external skips in process."""
    suite.makepyfile(
        test_marks="""
        import pytest


        @pytest.mark.pasarela_gateway
        def test_marked():
            pass


        def test_uses_the_fixture(pasarela_gateway):
            assert pasarela_gateway.gateway is not None and not pasarela_gateway.external


        @pytest.mark.pasarela_external
        def test_external_only(pasarela_gateway):
            raise AssertionError("must not run against an in-process gateway")


        def test_unrelated():
            pass
        """
    )
    result = suite.runpytest("--strict-markers", "-m", "pasarela_gateway", "-rs")
    result.assert_outcomes(passed=2, skipped=1, deselected=1)
    result = suite.runpytest("--strict-markers", "-m", "pasarela_external", "-rs")
    result.assert_outcomes(skipped=1, deselected=3)
    result.stdout.fnmatch_lines(["*needs an external gateway: run with --pasarela-gateway-url*"])


def test_external_mode_uses_the_agencies_of_a_pasarela_init_state(
    suite: pytest.Pytester, served_state: ServedState
) -> None:
    """Keys from the state, endpoints moved and restored, clear skips for what it cannot do."""
    suite.makepyfile(
        test_external="""
        import pytest

        from conftest import serving


        async def test_ping(pasarela_gateway, pasarela_agency):
            assert pasarela_gateway.external and pasarela_gateway.gateway is None
            async with serving(pasarela_gateway) as (host, url):
                receiver = pasarela_agency("AG002", endpoint=f"{url}/agencies/AG002/messages")
                host.set_identity(receiver.identity)
                sender = pasarela_agency("AG001")
                assert sender.key_path.parent.name == "AG001"
                reply = await sender.connector().send(to="AG002", service="ping", body=[1])
            assert reply.json() == [1]
            assert isinstance(pasarela_gateway.alerts(), list)


        @pytest.mark.pasarela_external
        def test_external_only(pasarela_gateway):
            assert pasarela_gateway.code == "PASARELA"


        def test_unknown_agency(pasarela_agency):
            pasarela_agency("AG077")


        def test_portal(pasarela_portal):
            pass


        def test_pki(pasarela_pki):
            pass
        """
    )
    # DIR joined with "=": pytest would take a separate DIR for a test path when it looks
    # for its ini file, before it knows the plugin's options.
    options = ["--pasarela-gateway-url", served_state.url, f"--pasarela-state={served_state.state}"]
    result = suite.runpytest(*options, "-rs")
    result.assert_outcomes(passed=2, skipped=3)
    result.stdout.fnmatch_lines_random(
        [
            "*pasarela: external gateway http://127.0.0.1:*",
            "*'AG077'*holds no key.pem and cert.pem, and agencies cannot be created*",
            "*'PORTAL'*offers ping, not ati.answer (services cannot be added*",
            "*an external gateway keeps its own CA and trust state*",
        ]
    )
    assert served_state.endpoint("AG002") == "http://127.0.0.1:9/agencies/AG002/messages"


def test_external_mode_runs_the_portal_against_a_gateway_that_offers_ati(
    suite: pytest.Pytester,
    pasarela_gateway: PasarelaGateway,
    pasarela_agency: AgencyFactory,
    pasarela_portal: PasarelaPortal,
) -> None:
    """This test's in-process gateway, named by URL and credentials_dir, serves the suite."""
    pasarela_agency("AG001", services={"ati.request"})
    suite.makepyfile(
        test_portal_external="""
        from conftest import serving


        async def test_request(pasarela_gateway, pasarela_agency, pasarela_portal):
            async def on_request(claims, body):
                return 200, body

            async with serving(pasarela_gateway, {"ati.request": on_request}) as (host, url):
                agency = pasarela_agency(
                    "AG001", endpoint=f"{url}/agencies/AG001/messages", services={"ati.request"}
                )
                host.set_identity(agency.identity)
                reply = await pasarela_portal.send(to="AG001", body={"NumSolicitud": "X-1"})
                answer = await agency.connector().send(
                    to="PORTAL", service="ati.answer", body={"NumSolicitud": "X-1"}
                )
            assert reply.json() == {"NumSolicitud": "X-1"}
            assert answer.status == 200
            assert [r.json() for r in pasarela_portal.received] == [{"NumSolicitud": "X-1"}]
        """
    )
    result = suite.runpytest(
        "--pasarela-gateway-url",
        pasarela_gateway.url,
        f"--pasarela-state={pasarela_gateway.credentials_dir}",
    )
    result.assert_outcomes(passed=1)
    assert pasarela_gateway.gateway is not None
    registry = pasarela_gateway.gateway.registry
    assert registry.require("PORTAL").endpoint == pasarela_portal.url
    assert pasarela_portal.received == []


def test_an_unreachable_external_gateway_is_an_error(suite: pytest.Pytester) -> None:
    """A gateway URL nobody answers at errors the tests that need it, saying so."""
    suite.makepyfile(test_down="def test_needs(pasarela_gateway):\n    pass\n")
    result = suite.runpytest("--pasarela-gateway-url", "http://127.0.0.1:9")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*the external gateway at http://127.0.0.1:9 is not usable*"])


def test_a_state_without_a_gateway_url_is_a_usage_error(suite: pytest.Pytester) -> None:
    """--pasarela-state alone is refused before any test runs."""
    result = suite.runpytest("--pasarela-state", "state")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--pasarela-state needs --pasarela-gateway-url*"])


def test_the_ini_file_can_name_the_external_gateway(pytester: pytest.Pytester) -> None:
    """pasarela_gateway_url and pasarela_state (relative to the ini file) stand for options."""
    pytester.makeini(
        INI + "pasarela_gateway_url = http://127.0.0.1:8700/\npasarela_state = state\n"
    )
    result = pytester.runpytest("--collect-only")
    expected = f"pasarela: external gateway http://127.0.0.1:8700, state {pytester.path / 'state'}"
    result.stdout.fnmatch_lines([expected])


def test_help_lists_the_options_and_markers(suite: pytest.Pytester) -> None:
    """`pytest --help` shows the options and ini keys; `--markers` the two markers."""
    result = suite.runpytest("--help")
    result.stdout.fnmatch_lines_random(
        [
            "pasarela connector conformance:",
            "*--pasarela-gateway-url=URL*",
            "*--pasarela-state=DIR*",
            "*pasarela_gateway_url (string):*",
            "*pasarela_state (string):*",
        ]
    )
    result = suite.runpytest("--markers")
    result.stdout.fnmatch_lines_random(
        ["@pytest.mark.pasarela_gateway: needs a gateway*", "@pytest.mark.pasarela_external: *"]
    )


def test_the_exported_names_are_pinned() -> None:
    """pasarela.pytest_plugin exports exactly these names; a change here is an API change."""
    import pasarela.pytest_plugin as plugin

    assert sorted(plugin.__all__) == [
        "AgencyFactory",
        "PasarelaAgency",
        "PasarelaGateway",
        "PasarelaPKI",
        "PasarelaPortal",
        "Received",
        "connect_gateway",
        "serve_gateway",
    ]
