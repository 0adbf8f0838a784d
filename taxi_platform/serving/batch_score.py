"""Batch scoring: price a file (or a lake partition) of quote requests with one registered model version.

The input is read in chunks (Parquet row groups or CSV blocks), so memory follows the chunk size, not the file.
Each chunk is checked with the fare service's own rules (:mod:`taxi_platform.serving.quotes`):

* a column-at-a-time check accepts the plain rows — ``YYYY-MM-DDTHH:MM:SS`` times (or Parquet timestamps:
  naive ones are New York local time, zoned ones are converted to it), integer zones known to the zone lookup,
  integer passenger counts 0..9, a service the model was trained on — and it is never more lenient than the
  service (a property test holds it to :func:`~taxi_platform.serving.quotes.parse_quote`);
* every other row goes through :func:`~taxi_platform.serving.quotes.parse_quote` itself, so a row the service would
  accept (a time with an offset, say) is priced, and a row it would refuse lands in the rejects with the
  service's message. A bad row never stops the job.

Priced rows keep their ``row_number`` (0-based, in input order), the validated quote, any extra input columns
unchanged (a caller's ids), and get ``fare_amount``, ``fare_low``, ``fare_high`` (in dollars and cents, as the
service returns them; null for a version without fare ranges) and ``model_version``. Rejected rows keep their
``row_number``, their five quote fields as text, the ``field`` at fault and the ``reason``.

CSV columns are read as text: whole numbers become integers (a CSV has no types), anything else stays text and
is judged by the service's rules like a JSON string would be.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from taxi_platform.fare_model.features import QUOTE_COLUMNS, SERVICES, QuoteError
from taxi_platform.serving.quotes import (
    EARLIEST_PICKUP,
    KNOWN_ZONES,
    MAX_PASSENGERS,
    MAX_ZONE,
    check_services,
    latest_pickup,
    parse_quote,
)

DEFAULT_CHUNK_ROWS = 262_144
ROW_COLUMN = "row_number"
PRICE_COLUMNS = ("fare_amount", "fare_low", "fare_high", "model_version")
REJECT_COLUMNS = (ROW_COLUMN, *QUOTE_COLUMNS, "field", "reason")
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
NYC_TZ = "America/New_York"

_ZONE_OK = np.zeros(MAX_ZONE + 1, dtype=bool)
_ZONE_OK[sorted(KNOWN_ZONES)] = True
_TIME_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}$"
_INT_PATTERN = r"^-?[0-9]{1,9}$"
_INT_FIELDS = ("pickup_zone", "dropoff_zone", "passenger_count")


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


# -- checking a chunk ------------------------------------------------------------------------------------
@dataclass
class CheckedChunk:
    """One chunk after the service's rules: the model's columns of the rows it may price, and the rest."""

    valid: np.ndarray  # indices into the chunk of the rows to price, ascending
    columns: dict[str, np.ndarray]  # the model's input for those rows
    rejected: np.ndarray  # indices of the rows refused
    fields: list[str]
    reasons: list[str]


def _as_int_array(column: pa.ChunkedArray | pa.Array, text_numbers: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(values, ok)``: int64 values where the column holds a plain integer, ``ok`` False elsewhere."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    kind = column.type
    n = len(column)
    if pa.types.is_integer(kind):
        ok = np.array(column.is_valid())
        values = np.array(column.fill_null(0).cast(pa.int64()))
        return values, ok
    if text_numbers and (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        ok = np.array(pc.match_substring_regex(column, _INT_PATTERN).fill_null(False))
        text = pc.if_else(pa.array(ok), column, pa.scalar("0"))
        return np.array(text.cast(pa.int64())), ok
    return np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)


def _pickup_array(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(datetime64[us] New York local time, ok)`` for the plain pickup times of a column."""
    kind = column.type
    n = len(column)
    if pa.types.is_timestamp(kind):
        if kind.tz is not None:
            column = pc.local_timestamp(column.cast(pa.timestamp(kind.unit, tz=NYC_TZ)))
        column = column.cast(pa.timestamp("us"))
        ok = np.array(column.is_valid())
        values = np.array(column.fill_null(0)).astype("datetime64[us]")
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        ok = np.array(pc.match_substring_regex(column, _TIME_PATTERN).fill_null(False))
        text = pc.replace_substring(pc.if_else(pa.array(ok), column, "2024-01-01T00:00:00"), " ", "T")
        parsed = pc.strptime(text, format="%Y-%m-%dT%H:%M:%S", unit="us", error_is_null=True)
        # strptime rolls impossible dates over (2024-02-30 -> 2024-03-01): only a round trip counts
        ok &= np.array(pc.equal(pc.strftime(parsed, format="%Y-%m-%dT%H:%M:%S"), text).fill_null(False))
        values = np.array(parsed.fill_null(0)).astype("datetime64[us]")
    else:
        return np.zeros(n, dtype="datetime64[us]"), np.zeros(n, dtype=bool)
    ok &= (values >= np.datetime64(EARLIEST_PICKUP)) & (values <= np.datetime64(latest_pickup()))
    return values, ok


def _row_value(column: pa.Array, i: int, text_numbers: bool) -> Any:
    value = column[i].as_py()
    if text_numbers and isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value):
        return int(value)
    return value


def check_chunk(
    batch: pa.RecordBatch | pa.Table, text_numbers: bool = False, services: Sequence[str] = SERVICES
) -> CheckedChunk:
    """Apply the service's quote rules to every row of ``batch`` (see the module docstring)."""
    n = batch.num_rows
    col = {name: batch.column(name) for name in QUOTE_COLUMNS}
    col = {k: (v.combine_chunks() if isinstance(v, pa.ChunkedArray) else v) for k, v in col.items()}
    pickup, ok = _pickup_array(col["pickup_datetime"])
    zones = {}
    for name in ("pickup_zone", "dropoff_zone"):
        values, good = _as_int_array(col[name], text_numbers)
        good &= (values >= 0) & (values <= MAX_ZONE)
        good[good] = _ZONE_OK[values[good]]
        zones[name] = values
        ok &= good
    passengers, good = _as_int_array(col["passenger_count"], text_numbers)
    ok &= good & (passengers >= 0) & (passengers <= MAX_PASSENGERS)
    service_col = col["service"]
    if pa.types.is_dictionary(service_col.type):
        service_col = service_col.cast(service_col.type.value_type)
    if pa.types.is_string(service_col.type) or pa.types.is_large_string(service_col.type):
        allowed = [s for s in SERVICES if s in services]
        ok &= np.asarray(pc.is_in(service_col, value_set=pa.array(allowed, pa.string())).fill_null(False))
        service = np.array(service_col.fill_null(""), dtype=object)
    else:
        ok[:] = False
        service = np.full(n, "", dtype=object)

    fields: list[str] = []
    reasons: list[str] = []
    rejected: list[int] = []
    for i in np.flatnonzero(~ok).tolist():  # the service's own rules decide every other row
        quote = {
            name: _row_value(col[name], i, text_numbers and name in _INT_FIELDS) for name in QUOTE_COLUMNS
        }
        if isinstance(quote["pickup_datetime"], datetime) and quote["pickup_datetime"].tzinfo is not None:
            quote["pickup_datetime"] = quote["pickup_datetime"].isoformat()
        try:
            parsed = parse_quote(quote)
            check_services([parsed], services)
        except QuoteError as exc:
            errors = exc.errors
            fields.append(_field_of(errors))
            reasons.append(str(exc).removeprefix("invalid quote: "))
            rejected.append(i)
            continue
        except ValueError as exc:  # check_services: pydantic's ValidationError
            fields.append("service")
            reasons.append(_first_message(exc))
            rejected.append(i)
            continue
        pickup[i] = np.datetime64(parsed.pickup_datetime, "us")
        zones["pickup_zone"][i] = parsed.pickup_zone
        zones["dropoff_zone"][i] = parsed.dropoff_zone
        passengers[i] = parsed.passenger_count
        service[i] = parsed.service
        ok[i] = True
    valid = np.flatnonzero(ok)
    columns = {
        "pickup_datetime": pickup[valid],
        "pickup_zone": zones["pickup_zone"][valid].astype(np.int32),
        "dropoff_zone": zones["dropoff_zone"][valid].astype(np.int32),
        "passenger_count": passengers[valid].astype(np.int8),
        "service": service[valid],
    }
    return CheckedChunk(valid, columns, np.asarray(rejected, dtype=np.int64), fields, reasons)


def _field_of(errors: Sequence[Mapping[str, Any]]) -> str:
    for err in errors:
        loc = err.get("loc") or ()
        if loc:
            return str(loc[0])
    return "quote"


def _first_message(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        found = errors(include_url=False)
        if found:
            return f"{found[0]['loc'][0]}: {str(found[0]['msg']).removeprefix('Value error, ')}"
    return str(exc)


# -- pricing ---------------------------------------------------------------------------------------------
class Pricer:
    """Prices checked columns with a loaded model version (``unwrap_python_model().predict_ranges``)."""

    def __init__(self, python_model: Any, version: str) -> None:
        self.model = python_model
        self.version = str(version)
        info = getattr(python_model, "info", None) or {}
        self.services = tuple(info.get("services") or SERVICES)

    def price(self, columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray | None]:
        if len(columns["pickup_zone"]) == 0:
            empty = np.zeros(0)
            return {"fare_amount": empty, "fare_low": empty, "fare_high": empty}
        fares, low, high, _bands = self.model.predict_ranges(columns)
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
    source = iter(batches)

    def read_next() -> tuple[pa.RecordBatch, CheckedChunk] | None:
        batch = next(source, None)
        return None if batch is None else (batch, check_chunk(batch, text_numbers, pricer.services))

    def write(batch: pa.RecordBatch, first: int, checked: CheckedChunk, prices: Mapping[str, Any]) -> None:
        out.write(priced_batch(schema, batch, first, checked, prices, pricer.version))
        if len(checked.rejected):
            bad.write(rejects_batch(batch, first, checked))

    # Three stages on their own threads, one chunk each: reading and checking chunk i+1, pricing chunk i,
    # writing chunk i-1 (Arrow, Parquet and the tree walk release the GIL). At most three chunks in memory.
    first_row = 0
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="score") as pool:
        pending = pool.submit(read_next)
        written: Future[None] | None = None
        while (item := pending.result()) is not None:
            pending = pool.submit(read_next)
            batch, checked = item
            prices = pricer.price(checked.columns)
            if written is not None:
                written.result()
            written = pool.submit(write, batch, first_row, checked, prices)
            by_field.update(checked.fields)
            for i, f, r in zip(checked.rejected.tolist(), checked.fields, checked.reasons, strict=True):
                if len(summary.first_rejects) >= 10:
                    break
                summary.first_rejects.append({"row": i + first_row, "field": f, "reason": r})
            summary.priced += len(checked.valid)
            summary.rejected += len(checked.rejected)
            first_row += batch.num_rows
            if progress is not None:
                progress(batch.num_rows)
        if written is not None:
            written.result()
    summary.rows = first_row
    summary.rejected_by_field = dict(sorted(by_field.items()))
    summary.seconds = time.perf_counter() - started
    return summary


def load_pricer(tracking_uri: str, version: str | None = None, model_name: str | None = None) -> Pricer:
    """The registered version ``version`` (default: the champion) loaded with its own code, as a :class:`Pricer`."""
    from taxi_platform.core.settings import MODEL_NAME
    from taxi_platform.model.model_loading import load_version
    from taxi_platform.model.registry import _use_registry, champion_version

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
