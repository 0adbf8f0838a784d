"""Rows as Dagster table metadata: typed columns in order, plain scalars, empty cells for missing values."""

from __future__ import annotations

import dagster as dg
import numpy as np

from taxi_platform.defs.metadata import records_table


def test_rows_become_a_typed_table_of_plain_scalars():
    rows = [
        {"band": "yellow/<1mi/city", "trips": np.int64(12), "coverage": np.float64(0.75), "ok": True},
        {"band": "green/1-3mi/city", "trips": 3, "coverage": float("nan"), "extra": "ignored"},
    ]
    value = records_table(rows, {"band": "string", "trips": "int", "coverage": "float", "ok": "bool"})
    assert isinstance(value, dg.TableMetadataValue)
    assert [(c.name, c.type) for c in value.schema.columns] == [
        ("band", "string"),
        ("trips", "int"),
        ("coverage", "float"),
        ("ok", "bool"),
    ]
    first, second = (record.data for record in value.records)
    assert first == {"band": "yellow/<1mi/city", "trips": 12, "coverage": 0.75, "ok": True}
    assert type(first["trips"]) is int and type(first["coverage"]) is float
    assert second == {"band": "green/1-3mi/city", "trips": 3, "coverage": None, "ok": None}


def test_a_table_survives_dagster_serialisation():
    from dagster._serdes import deserialize_value, serialize_value

    value = records_table([{"month": "2024-05", "mae": 3.1}], {"month": "string", "mae": "float"})
    assert deserialize_value(serialize_value(value)) == value
