"""Fixtures for tests against one MirrorServer per module; the module defines ``mirror_root`` (what it serves).

from taxi_platform_tests.support import mirror_fixtures
server = mirror_fixtures.server
mirror = mirror_fixtures.mirror
"""

from __future__ import annotations

import pytest

from taxi_platform.devtools.mirror import MirrorServer


@pytest.fixture(scope="module")
def server(mirror_root):
    """The module's mirror of ``mirror_root`` on a loopback port."""
    with MirrorServer(mirror_root) as srv:
        yield srv


@pytest.fixture()
def mirror(server):
    """The module's server with no faults injected and request counts at zero, for one test."""
    server.clear_faults()
    server.reset_counts()
    yield server
    server.clear_faults()
