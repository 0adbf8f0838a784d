"""Batch scoring: price a file (or a lake partition) of quote requests with one registered model version.

The input is read in chunks (Parquet row groups or CSV blocks), so memory follows the chunk size, not the file.
Each chunk is checked with the fare service's own rules (:mod:`taxi_platform.serving.score_checks`: plain rows a
column at a time, every other row by :func:`~taxi_platform.serving.quotes.parse_quote` itself); a row the service
would refuse lands in the rejects with the service's message, and a bad row never stops the job. Worker threads
check and price whole chunks side by side (one per core); the chunks are read and written in input order.

Priced rows keep their ``row_number`` (0-based, in input order), the validated quote, any extra input columns
unchanged (a caller's ids), and get ``fare_amount``, ``fare_low``, ``fare_high`` (in dollars and cents, as the
service returns them; null for a version without fare ranges) and ``model_version``. Rejected rows keep their
``row_number``, their five quote fields as text, the ``field`` at fault and the ``reason``.

CSV columns are read as text: whole numbers become integers (a CSV has no types), anything else stays text and
is judged by the service's rules like a JSON string would be.
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from taxi_platform.fare_model.features import QUOTE_COLUMNS, SERVICES
from taxi_platform.serving.score_checks import CheckedChunk, check_chunk

DEFAULT_CHUNK_ROWS = 262_144
PRICE_BLOCK_ROWS = 32_768  # rows priced at once: a 32k-row design matrix stays in the cache
MIN_BLOCK_ROWS = 256  # far above the rows a model prices on its small-batch path
MAX_WORKERS = 4  # chunks priced at once, one per core; each chunk in flight holds ~150 MB
ROW_COLUMN = "row_number"
PRICE_COLUMNS = ("fare_amount", "fare_low", "fare_high", "model_version")
REJECT_COLUMNS = (ROW_COLUMN, *QUOTE_COLUMNS, "field", "reason")
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


def rejects_path_for(output: str | Path) -> Path:
    """``out.parquet`` -> ``out.rejects.parquet``: where a run's rejected rows go by default."""
    out = Path(output)
    return out.with_name(f"{out.stem}.rejects{out.suffix}")


# -- reading ---------------------------------------------------------------------------------------------
@dataclass
class InputFile:
    """An opened input: its batches, and how far through the file a batch has got (for a progress bar)."""

    batches: Iterator[pa.RecordBatch]
    schema: pa.Schema
    text_numbers: bool  # CSV: numbers arrive as text
    total: int  # rows (Parquet) or bytes (CSV)
    unit: str  # "rows" or "bytes"
    position: Callable[[], int]


def open_input(path: str | Path, chunk_rows: int = DEFAULT_CHUNK_ROWS, filesystem=None) -> InputFile:
    """Open ``path`` for streaming; a missing quote column is a :class:`ScoreInputError` naming it."""
    fmt = file_format(path)
    opener = filesystem.open if filesystem is not None else open
    try:
        handle = opener(str(path), "rb")
    except OSError as exc:
        raise ScoreInputError(f"cannot open {path}: {exc}") from exc
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            reader = pq.ParquetFile(handle)
            schema = reader.schema_arrow
            done = [0]

            def parquet_batches() -> Iterator[pa.RecordBatch]:
                for batch in reader.iter_batches(batch_size=chunk_rows):
                    done[0] += batch.num_rows
                    yield batch

            opened = InputFile(
                parquet_batches(), schema, False, reader.metadata.num_rows, "rows", lambda: done[0]
            )
        else:
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
            opened = InputFile(iter(stream), stream.schema, True, size, "bytes", handle.tell)
    except pa.ArrowInvalid as exc:
        handle.close()
        raise ScoreInputError(f"cannot read {path} as {fmt}: {exc}") from exc
    missing = [c for c in QUOTE_COLUMNS if c not in opened.schema.names]
    if missing:
        handle.close()
        raise ScoreInputError(
            f"{path} has no column {', '.join(missing)}: a quote needs {', '.join(QUOTE_COLUMNS)} "
            f"(the file has {', '.join(opened.schema.names) or 'no columns'})"
        )
    return opened


# -- pricing ---------------------------------------------------------------------------------------------
class Pricer:
    """Prices checked columns with a loaded model version (``unwrap_python_model().predict_ranges``)."""

    def __init__(self, python_model: Any, version: str, block_rows: int = PRICE_BLOCK_ROWS) -> None:
        self.model = python_model
        self.block_rows = block_rows
        self.version = str(version)
        info = getattr(python_model, "info", None) or {}
        self.services = tuple(info.get("services") or SERVICES)

    def price(self, columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray | None]:
        """Fares and ranges in dollars and cents. A chunk is priced in equal blocks of at least ``block_rows``
        rows (the tree walk goes over a block's matrix once per tree: one that fits the cache walks faster);
        each price depends on its own row only, so the numbers are those of the chunk priced at once."""
        n = len(columns["pickup_zone"])
        if n == 0:
            empty = np.zeros(0)
            return {"fare_amount": empty, "fare_low": empty, "fare_high": empty}
        edges = np.linspace(0, n, max(1, n // max(self.block_rows, MIN_BLOCK_ROWS)) + 1).astype(np.int64)
        parts = [
            self.model.predict_ranges({k: v[a:b] for k, v in columns.items()})
            for a, b in zip(edges[:-1], edges[1:], strict=True)
        ]
        fares, low, high = (
            None if parts[0][j] is None else np.concatenate([p[j] for p in parts]) for j in range(3)
        )
        return {
            "fare_amount": np.round(fares, 2),
            "fare_low": None if low is None else np.round(low, 2),
            "fare_high": None if high is None else np.round(high, 2),
        }


# -- writing ---------------------------------------------------------------------------------------------
def output_schema(input_schema: pa.Schema) -> pa.Schema:
    """Row number, the validated quote, the input's other columns as they are, then the price."""
    extras = [
        f for f in input_schema if f.name not in QUOTE_COLUMNS and f.name not in (ROW_COLUMN, *PRICE_COLUMNS)
    ]
    return pa.schema(
        [
            pa.field(ROW_COLUMN, pa.int64()),
            pa.field("pickup_datetime", pa.timestamp("us")),
            pa.field("pickup_zone", pa.int32()),
            pa.field("dropoff_zone", pa.int32()),
            pa.field("passenger_count", pa.int8()),
            pa.field("service", pa.string()),
            *extras,
            pa.field("fare_amount", pa.float64()),
            pa.field("fare_low", pa.float64()),
            pa.field("fare_high", pa.float64()),
            pa.field("model_version", pa.string()),
        ]
    )


REJECT_SCHEMA = pa.schema(
    [pa.field(ROW_COLUMN, pa.int64())]
    + [pa.field(c, pa.string()) for c in (*QUOTE_COLUMNS, "field", "reason")]
)


class TableWriter:
    """Streams record batches to one Parquet or CSV file (the format from the file name)."""

    def __init__(self, path: str | Path, schema: pa.Schema, fmt: str | None = None) -> None:
        self.path = str(path)
        self.schema = schema
        fmt = fmt or file_format(path)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            self._writer = pq.ParquetWriter(self.path, schema, compression="zstd")
        else:
            import pyarrow.csv as pcsv

            self._writer = pcsv.CSVWriter(self.path, schema)
        self.rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)
        self.rows += batch.num_rows

    def close(self) -> None:
        self._writer.close()


def priced_batch(
    schema: pa.Schema,
    batch: pa.RecordBatch,
    first_row: int,
    checked: CheckedChunk,
    prices: Mapping[str, Any],
    version: str,
) -> pa.RecordBatch:
    valid = checked.valid
    n = len(valid)
    take = pa.array(valid, pa.int64())
    cols = checked.columns
    arrays: list[pa.Array] = []
    for f in schema:
        name = f.name
        if name == ROW_COLUMN:
            arrays.append(pa.array(valid + first_row, pa.int64()))
        elif name == "pickup_datetime":
            arrays.append(pa.array(cols[name], pa.timestamp("us")))
        elif name in ("pickup_zone", "dropoff_zone", "passenger_count"):
            arrays.append(pa.array(cols[name], f.type))
        elif name == "service":
            arrays.append(pa.array(cols[name], pa.string()))
        elif name in ("fare_amount", "fare_low", "fare_high"):
            values = prices[name]
            arrays.append(pa.nulls(n, pa.float64()) if values is None else pa.array(values, pa.float64()))
        elif name == "model_version":
            arrays.append(pa.array(np.full(n, version, dtype=object), pa.string()))
        else:
            arrays.append(batch.column(name).take(take).cast(f.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def rejects_batch(batch: pa.RecordBatch, first_row: int, checked: CheckedChunk) -> pa.RecordBatch:
    take = pa.array(checked.rejected, pa.int64())
    arrays: list[pa.Array] = [pa.array(checked.rejected + first_row, pa.int64())]
    for name in QUOTE_COLUMNS:
        column = batch.column(name).take(take)
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        try:
            arrays.append(column.cast(pa.string()))
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
            arrays.append(pa.array([None if v is None else str(v) for v in column.to_pylist()], pa.string()))
    arrays.append(pa.array(checked.fields, pa.string()))
    arrays.append(pa.array(checked.reasons, pa.string()))
    return pa.RecordBatch.from_arrays(arrays, schema=REJECT_SCHEMA)


# -- the whole job ---------------------------------------------------------------------------------------
@dataclass
class ScoreSummary:
    rows: int = 0
    priced: int = 0
    rejected: int = 0
    rejected_by_field: dict[str, int] = field(default_factory=dict)
    first_rejects: list[dict[str, Any]] = field(default_factory=list)  # up to 10: row, field, reason
    model_version: str = ""
    seconds: float = 0.0

    @property
    def quotes_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "priced": self.priced,
            "rejected": self.rejected,
            "rejected_by_field": dict(self.rejected_by_field),
            "first_rejects": list(self.first_rejects),
            "model_version": self.model_version,
            "seconds": round(self.seconds, 3),
            "quotes_per_second": round(self.quotes_per_second, 1),
        }


def _one_openmp_thread() -> None:
    """Limit this (worker) thread's OpenMP to one thread: scikit-learn's tree walk then runs on the caller."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="openmp")


def score_batches(
    batches: Iterable[pa.RecordBatch],
    input_schema: pa.Schema,
    pricer: Pricer,
    output: TableWriter | Callable[[pa.Schema], TableWriter],
    rejects: TableWriter | Callable[[pa.Schema], TableWriter],
    text_numbers: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ScoreSummary:
    """Check, price and write every batch; the writers may be given as factories of a schema (then built
    before the first batch, so an empty input still gets both files with their columns)."""
    started = time.perf_counter()
    schema = output_schema(input_schema)
    out = output(schema) if callable(output) else output
    bad = rejects(REJECT_SCHEMA) if callable(rejects) else rejects
    summary = ScoreSummary(model_version=pricer.version)
    by_field: Counter[str] = Counter()
    workers = max(1, min(MAX_WORKERS, os.cpu_count() or 1))

    def work(batch: pa.RecordBatch, first: int) -> tuple[pa.RecordBatch, pa.RecordBatch | None, CheckedChunk]:
        checked = check_chunk(batch, text_numbers, pricer.services)
        priced = priced_batch(schema, batch, first, checked, pricer.price(checked.columns), pricer.version)
        return priced, (rejects_batch(batch, first, checked) if len(checked.rejected) else None), checked

    def finish(done: Future, first: int, rows: int) -> None:
        priced, rejected, checked = done.result()
        out.write(priced)
        if rejected is not None:
            bad.write(rejected)
        by_field.update(checked.fields)
        for i, f, r in zip(checked.rejected.tolist(), checked.fields, checked.reasons, strict=True):
            if len(summary.first_rejects) >= 10:
                break
            summary.first_rejects.append({"row": i + first, "field": f, "reason": r})
        summary.priced += len(checked.valid)
        summary.rejected += len(checked.rejected)
        if progress is not None:
            progress(rows)

    # Each worker thread checks, prices and lays out whole chunks (Arrow, numpy and the tree walk release the
    # GIL), one OpenMP thread each so the workers do not fight over the cores; this thread reads the chunks in
    # order and writes the results in input order. At most workers + 1 chunks are in flight.
    first_row = 0
    pending: deque[tuple[Future, int, int]] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="score", initializer=_one_openmp_thread) as pool:
        for batch in batches:
            pending.append((pool.submit(work, batch, first_row), first_row, batch.num_rows))
            first_row += batch.num_rows
            while len(pending) > workers or (pending and pending[0][0].done()):
                finish(*pending.popleft())
        while pending:
            finish(*pending.popleft())
    summary.rows = first_row
    summary.rejected_by_field = dict(sorted(by_field.items()))
    summary.seconds = time.perf_counter() - started
    return summary


def load_pricer(tracking_uri: str, version: str | None = None, model_name: str | None = None) -> Pricer:
    """The registered version ``version`` (default: the champion) loaded with its own code, as a :class:`Pricer`."""
    from taxi_platform.core.settings import MODEL_NAME
    from taxi_platform.model.champion_lookup import champion_version
    from taxi_platform.model.model_loading import load_version
    from taxi_platform.model.registered_predictors import _use_registry

    name = model_name or MODEL_NAME
    if version is None:
        version = champion_version(tracking_uri, name).version
    _use_registry(tracking_uri)
    model = load_version(f"models:/{name}/{version}")
    return Pricer(model.unwrap_python_model(), str(version))


def score_file(
    source: str | Path,
    output: str | Path,
    pricer: Pricer,
    rejects: str | Path | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Callable[[int, int, str], None] | None = None,
) -> ScoreSummary:
    """Price the quotes in ``source`` into ``output`` (rejected rows into ``rejects``, default
    :func:`rejects_path_for`). Both files appear whole or not at all: they are written beside their
    destination under a hidden name and renamed into place when every chunk is done.

    ``progress(done, total, unit)`` is called after each chunk (rows for Parquet, bytes for CSV).
    """
    output = Path(output)
    rejects = Path(rejects) if rejects is not None else rejects_path_for(output)
    file_format(output), file_format(rejects)  # refuse an unknown output type before reading anything
    if output.resolve() == Path(source).resolve():
        raise ScoreInputError(f"--output {output} is the input file: choose another path")
    opened = open_input(source, chunk_rows)
    temps = [p.with_name(f".{p.name}.{os.getpid()}.tmp") for p in (output, rejects)]
    for p in (output, rejects):
        p.parent.mkdir(parents=True, exist_ok=True)
    writers: list[TableWriter] = []

    def writer(index: int, dest: Path) -> Callable[[pa.Schema], TableWriter]:
        def make(schema: pa.Schema) -> TableWriter:
            w = TableWriter(temps[index], schema, file_format(dest))
            writers.append(w)
            return w

        return make

    def step(rows: int) -> None:
        if progress is not None:
            progress(opened.position(), opened.total, opened.unit)

    try:
        summary = score_batches(
            opened.batches,
            opened.schema,
            pricer,
            writer(0, output),
            writer(1, rejects),
            text_numbers=opened.text_numbers,
            progress=step,
        )
        for w in writers:
            w.close()
        os.replace(temps[0], output)
        os.replace(temps[1], rejects)
    except pa.ArrowInvalid as exc:
        raise ScoreInputError(f"cannot read {source}: {exc}") from exc
    finally:
        for w in writers:
            try:
                w.close()
            except Exception:  # already closed
                pass
        for t in temps:
            t.unlink(missing_ok=True)
    return summary
