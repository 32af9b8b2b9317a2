"""Shared fixtures: an in-memory gateway world from gateway.testing."""

from __future__ import annotations

import pytest

from gateway.testing import GatewayWorld, make_gateway


@pytest.fixture
def world() -> GatewayWorld:
    return make_gateway()
