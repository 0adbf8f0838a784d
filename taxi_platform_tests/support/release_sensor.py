"""Ticking the real ``tlc_release_sensor`` against a source, for the release and retry tests."""

from __future__ import annotations

import dagster as dg
import pytest

from taxi_platform.defs.ingest import releases
from taxi_platform.defs.resources import TlcSourceResource


@pytest.fixture
def instance():
    """An ephemeral Dagster instance (in memory): the sensor's runs, materialisations and cursor live here."""
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


def tick(instance: dg.DagsterInstance, base_url: str, cursor: str | None = None) -> dg.SensorResult:
    """One evaluation of the release sensor against ``base_url`` (yellow and green)."""
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={
            "tlc": TlcSourceResource(base_url=base_url, services=["yellow", "green"], connect_timeout=2)
        },
    )
    return releases.tlc_release_sensor(context)
