"""The connector conformance kit for pytest: a real gateway on loopback, agencies, the portal.

Installed with pasarela (entry point ``pytest11``, name ``pasarela``). The fixtures, all
function-scoped::

    pasarela_pki       a fresh platform CA and trust store
    pasarela_gateway   the gateway over real HTTP on 127.0.0.1, or the external one
                       named by --pasarela-gateway-url (agency keys from --pasarela-state)
    pasarela_agency    a factory: an agency with key, certificate, registry entry, grants
    pasarela_portal    the Transparency Portal (PORTAL): sends ati.request, records ati.answer

The fixtures are synchronous. The servers they start run on an event loop in a thread of
their own, so sync tests, async tests in any pytest-asyncio loop scope and connectors in
other processes reach them alike. ``docs/conformance.md`` is the user's guide.

The hooks and fixtures are here; what they build lives in the private package
:mod:`pasarela._plugin` (the loop thread, the PKI, agencies and the portal, the in-process
and the external gateway), whose public names this module exports.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

# `name as name` re-exports (explicit for mypy, hence PLC0414 silenced) names outside
# __all__ that were defined in this module before it was split; the tests use the loop.
from pasarela._plugin.agencies import BASELINE_GRANTS as BASELINE_GRANTS  # noqa: PLC0414
from pasarela._plugin.agencies import PORTAL_GRANTS as PORTAL_GRANTS  # noqa: PLC0414
from pasarela._plugin.agencies import PORTAL_SERVICES as PORTAL_SERVICES  # noqa: PLC0414
from pasarela._plugin.agencies import (
    AgencyFactory,
    PasarelaAgency,
    PasarelaPortal,
    Received,
)
from pasarela._plugin.agencies import GrantLike as GrantLike  # noqa: PLC0414
from pasarela._plugin.base import PasarelaGateway
from pasarela._plugin.external import _ExternalGateway, connect_gateway
from pasarela._plugin.in_process import _InProcessGateway, serve_gateway
from pasarela._plugin.loop import _LoopThread as _LoopThread  # noqa: PLC0414
from pasarela._plugin.loop import _serve as _serve  # noqa: PLC0414
from pasarela._plugin.pki import PasarelaPKI

__all__ = [
    "AgencyFactory",
    "PasarelaAgency",
    "PasarelaGateway",
    "PasarelaPKI",
    "PasarelaPortal",
    "Received",
    "connect_gateway",
    "serve_gateway",
]

_FIXTURES: Final = frozenset({"pasarela_gateway", "pasarela_agency", "pasarela_portal"})


@dataclass(frozen=True, slots=True, kw_only=True)
class _Settings:
    url: str | None
    state: Path | None


def _settings(config: pytest.Config) -> _Settings:
    """The external gateway named by the options, else by the ini file; url None: in process."""
    url = config.getoption("pasarela_gateway_url") or config.getini("pasarela_gateway_url")
    url = str(url).rstrip("/") or None
    state: Path | None = None
    if option := config.getoption("pasarela_state"):
        state = config.invocation_params.dir / Path(option).expanduser()
    elif (ini := config.getini("pasarela_state")) and url is not None:
        base = config.inipath.parent if config.inipath is not None else config.rootpath
        state = base / Path(ini).expanduser()
    return _Settings(url=url, state=state)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pasarela", "pasarela connector conformance")
    group.addoption(
        "--pasarela-gateway-url",
        metavar="URL",
        help="run the pasarela fixtures against the gateway at URL instead of one in process",
    )
    group.addoption(
        "--pasarela-state",
        metavar="DIR",
        help="that gateway's state directory, for agency and operator keys "
        "(agencies/<CODE>/{key,cert}.pem, operator/key.pem, as `pasarela init` writes them)",
    )
    parser.addini(
        "pasarela_gateway_url", "default for --pasarela-gateway-url", type="string", default=""
    )
    parser.addini(
        "pasarela_state",
        "default for --pasarela-state (relative to the ini file)",
        type="string",
        default="",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "pasarela_gateway: needs a gateway (set on every test using a pasarela fixture)"
    )
    config.addinivalue_line(
        "markers",
        "pasarela_external: runs only against an external gateway (--pasarela-gateway-url)",
    )
    settings = _settings(config)
    if settings.state is not None and settings.url is None:
        raise pytest.UsageError("--pasarela-state needs --pasarela-gateway-url")


def pytest_report_header(config: pytest.Config) -> str | None:
    settings = _settings(config)
    if settings.url is None:
        return None
    return f"pasarela: external gateway {settings.url}, state {settings.state or '(none)'}"


@pytest.hookimpl(tryfirst=True)  # before -m selects on the markers set here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    external = _settings(config).url is not None
    for item in items:
        uses_gateway = _FIXTURES & set(getattr(item, "fixturenames", ()))
        if uses_gateway and item.get_closest_marker("pasarela_gateway") is None:
            item.add_marker(pytest.mark.pasarela_gateway)
        if not external and item.get_closest_marker("pasarela_external") is not None:
            reason = "needs an external gateway: run with --pasarela-gateway-url URL"
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def pasarela_pki(request: pytest.FixtureRequest) -> PasarelaPKI:
    """A fresh platform CA and trust state (in-process mode only)."""
    if _settings(request.config).url is not None:
        pytest.skip("pasarela_pki: an external gateway keeps its own CA and trust state")
    return PasarelaPKI.create()


@pytest.fixture
def pasarela_gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PasarelaGateway]:
    """A gateway on loopback over real HTTP, or the external one the options name."""
    settings = _settings(request.config)
    directory = tmp_path_factory.mktemp("pasarela")
    gateway: PasarelaGateway
    if settings.url is None:
        pki: PasarelaPKI = request.getfixturevalue("pasarela_pki")
        gateway = _InProcessGateway(directory, pki=pki, limits=None, detection=None)
    else:
        try:
            gateway = _ExternalGateway(settings.url, state=settings.state, directory=directory)
        except Exception as exc:  # whatever it is, the gateway named cannot be used
            pytest.fail(f"the external gateway at {settings.url} is not usable: {exc!r}")
    try:
        yield gateway
    finally:
        gateway.close()


@pytest.fixture
def pasarela_agency(pasarela_gateway: PasarelaGateway) -> AgencyFactory:
    """``pasarela_agency(code, endpoint=..., services=..., grants=...)`` -> PasarelaAgency."""
    return pasarela_gateway.agency


@pytest.fixture
def pasarela_portal(pasarela_gateway: PasarelaGateway) -> PasarelaPortal:
    """The Transparency Portal (PORTAL), registered, its endpoint served and recording."""
    return pasarela_gateway.portal()
