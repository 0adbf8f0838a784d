"""Batch scoring's input: a Parquet or CSV file of quote requests, opened for streaming in chunks.

Parquet is read by row groups, CSV in blocks with every column as text (whole numbers become integers later: a
CSV has no types); memory follows the chunk size, not the file. A file without one of the quote columns cannot be
scored at all (:class:`ScoreInputError`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from taxi_platform.fare_model.features import QUOTE_COLUMNS

DEFAULT_CHUNK_ROWS = 262_144
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


class ScoreInputError(ValueError):
    """The input cannot be scored at all: unknown format, unreadable, or a quote column missing."""


def file_format(path: str | Path) -> str:
    """``parquet`` or ``csv`` from the file name; :class:`ScoreInputError` otherwise."""
    suffix = Path(str(path)).suffix.lower()
    if suffix not in FORMATS:
        raise ScoreInputError(
            f"{path}: unknown file type {suffix or '(none)'!r}: expected one of {sorted(FORMATS)}"
        )
    return FORMATS[suffix]


@dataclass
class InputFile:
    """An opened input: its batches, and how far through the file a batch has got (for a progress bar)."""

    batches: Iterator[pa.RecordBatch]
    schema: pa.Schema
    text_numbers: bool  # CSV: numbers arrive as text
    total: int  # rows (Parquet) or bytes (CSV)
    unit: str  # "rows" or "bytes"
    position: Callable[[], int]


def _open_parquet(handle: Any, chunk_rows: int) -> InputFile:
    import pyarrow.parquet as pq

    reader = pq.ParquetFile(handle)
    schema = reader.schema_arrow
    done = [0]

    def parquet_batches() -> Iterator[pa.RecordBatch]:
        for batch in reader.iter_batches(batch_size=chunk_rows):
            done[0] += batch.num_rows
            yield batch

    return InputFile(parquet_batches(), schema, False, reader.metadata.num_rows, "rows", lambda: done[0])


def _open_csv(handle: Any, chunk_rows: int) -> InputFile:
    import pyarrow.csv as pcsv

    size = os.fstat(handle.fileno()).st_size if hasattr(handle, "fileno") else 0
    header = pcsv.open_csv(handle, read_options=pcsv.ReadOptions(block_size=1 << 16)).schema.names
    handle.seek(0)
    stream = pcsv.open_csv(
        handle,
        read_options=pcsv.ReadOptions(block_size=max(1 << 20, chunk_rows * 48)),
        convert_options=pcsv.ConvertOptions(
            column_types={name: pa.string() for name in header},
            strings_can_be_null=True,
            null_values=[""],
        ),
    )
    return InputFile(iter(stream), stream.schema, True, size, "bytes", handle.tell)


def open_input(path: str | Path, chunk_rows: int = DEFAULT_CHUNK_ROWS, filesystem=None) -> InputFile:
    """Open ``path`` for streaming; a missing quote column is a :class:`ScoreInputError` naming it."""
    fmt = file_format(path)
    opener = filesystem.open if filesystem is not None else open
    try:
        handle = opener(str(path), "rb")
    except OSError as exc:
        raise ScoreInputError(f"cannot open {path}: {exc}") from exc
    try:
        opened = _open_parquet(handle, chunk_rows) if fmt == "parquet" else _open_csv(handle, chunk_rows)
    except pa.ArrowInvalid as exc:
        handle.close()
        raise ScoreInputError(f"cannot read {path} as {fmt}: {exc}") from exc
        raise ScoreInputError(f"cannot read {path} as {fmt}: {exc}") from exc
    missing = [c for c in QUOTE_COLUMNS if c not in opened.schema.names]
    if missing:
        handle.close()
        raise ScoreInputError(
            f"{path} has no column {', '.join(missing)}: a quote needs {', '.join(QUOTE_COLUMNS)} "
            f"(the file has {', '.join(opened.schema.names) or 'no columns'})"
        )
    return opened
