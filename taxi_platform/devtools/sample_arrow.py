"""Synthetic trip columns as an arrow table in a TLC schema era, labelled ``data_source = synthetic``."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from taxi_platform.ingest import tlc_schema

SYNTHETIC_METADATA: dict[bytes, bytes] = {b"data_source": b"synthetic"}


def _arrow_column(values: np.ndarray, typ: pa.DataType, mask: np.ndarray | None = None) -> pa.Array:
    """A fixed-width arrow array over the numpy buffer (no copy; avoids ``pa.array``'s pandas import)."""
    if pa.types.is_boolean(typ):
        data = np.packbits(values.astype(bool), bitorder="little")
    elif pa.types.is_floating(typ):
        data = np.ascontiguousarray(values, dtype=np.float64)
    elif pa.types.is_timestamp(typ):
        data = np.ascontiguousarray(values, dtype=np.int64)
    else:
        signed = "int" if pa.types.is_signed_integer(typ) else "uint"
        data = np.ascontiguousarray(values, dtype=np.dtype(f"{signed}{typ.bit_width}"))
    validity, null_count = None, 0
    if mask is not None and mask.any():
        validity = pa.py_buffer(np.packbits(~mask, bitorder="little"))
        null_count = int(mask.sum())
    return pa.Array.from_buffers(typ, len(values), [validity, pa.py_buffer(data)], null_count=null_count)


def to_arrow(cols: dict[str, np.ndarray], era: tlc_schema.SchemaEra, yellow: bool) -> pa.Table:
    n = len(cols["pickup"])
    null = cols["meta_null"]
    # store_and_fwd_flag: one-character strings "Y"/"N" (null on meta-null rows), built from buffers.
    chars = np.where(cols["store_fwd"], ord("Y"), ord("N")).astype(np.uint8)
    offsets = np.arange(n + 1, dtype=np.int32)
    validity = pa.py_buffer(np.packbits(~null, bitorder="little")) if null.any() else None
    flag = pa.Array.from_buffers(
        pa.string(), n, [validity, pa.py_buffer(offsets), pa.py_buffer(chars)], null_count=int(null.sum())
    )
    prefix = "tpep" if yellow else "lpep"
    source: dict[str, tuple[str, bool]] = {  # TLC column → (our column, nullable on meta-null rows)
        "VendorID": ("vendor", False),
        f"{prefix}_pickup_datetime": ("pickup", False),
        f"{prefix}_dropoff_datetime": ("dropoff", False),
        "passenger_count": ("passengers", True),
        "trip_distance": ("distance", False),
        "RatecodeID": ("ratecode", True),
        "PULocationID": ("pu", False),
        "DOLocationID": ("do", False),
        "payment_type": ("payment", not yellow),
        "fare_amount": ("fare", False),
        "extra": ("extra", False),
        "mta_tax": ("mta_tax", False),
        "tip_amount": ("tip", False),
        "tolls_amount": ("tolls", False),
        "improvement_surcharge": ("improvement", False),
        "total_amount": ("total", False),
        "congestion_surcharge": ("congestion", True),
        "airport_fee": ("airport_fee", True),
        "Airport_fee": ("airport_fee", True),
        "cbd_congestion_fee": ("cbd_fee", False),
        "trip_type": ("trip_type", True),
    }
    arrays = []
    for f in era.schema:
        if f.name == "store_and_fwd_flag":
            arrays.append(flag.cast(f.type))
        elif f.name == "ehail_fee":
            arrays.append(pa.nulls(n, f.type))
        else:
            name, nullable = source[f.name]
            arrays.append(_arrow_column(cols[name], f.type, null if nullable else None))
    return pa.Table.from_arrays(arrays, schema=era.schema.with_metadata(SYNTHETIC_METADATA))
