"""The fare service's quote rules applied to a chunk of quote requests at once (batch scoring's checks).

* a column-at-a-time check accepts the plain rows — ``YYYY-MM-DDTHH:MM:SS`` times (read straight from their
  bytes, or Parquet timestamps: naive ones are New York local time, zoned ones are converted to it), integer
  zones known to the zone lookup, integer passenger counts 0..9, a service the model was trained on — and it is
  never more lenient than the service (property tests hold it to :func:`~taxi_platform.serving.quotes.parse_quote`
  and to ``datetime.fromisoformat``);
* every other row goes through :func:`~taxi_platform.serving.quotes.parse_quote` itself, so a row the service would
  accept (a time with an offset, say) is priced, and a row it would refuse gets the service's message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from taxi_platform.fare_model.features import QUOTE_COLUMNS, SERVICES, QuoteError
from taxi_platform.serving.quote_batches import check_services
from taxi_platform.serving.quote_limits import (
    EARLIEST_PICKUP,
    KNOWN_ZONES,
    MAX_PASSENGERS,
    MAX_ZONE,
    latest_pickup,
)
from taxi_platform.serving.quotes import parse_quote

NYC_TZ = "America/New_York"
_ZONE_OK = np.zeros(MAX_ZONE + 1, dtype=bool)
_ZONE_OK[sorted(KNOWN_ZONES)] = True
_INT_PATTERN = r"^-?[0-9]{1,9}$"
_INT_FIELDS = ("pickup_zone", "dropoff_zone", "passenger_count")


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
        values, ok = _text_times(column)
    else:
        return np.zeros(n, dtype="datetime64[us]"), np.zeros(n, dtype=bool)
    ok &= (values >= np.datetime64(EARLIEST_PICKUP)) & (values <= np.datetime64(latest_pickup()))
    return values, ok


_TIME_WIDTH = 19  # YYYY-MM-DDTHH:MM:SS
_TIME_DIGITS = np.array([0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18])
_TIME_PUNCTUATION = np.array([4, 7, 13, 16])
_TIME_PUNCTUATION_CHARS = np.frombuffer(b"--::", dtype=np.uint8)


def _text_times(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(datetime64[us], ok)``: ``ok`` where a string is ``YYYY-MM-DDTHH:MM:SS`` (or a space for the ``T``)
    naming a real calendar date and time of day, as ``datetime.fromisoformat`` would read it. Read straight
    from the UTF-8 bytes with numpy: no text is parsed twice and no Python object made per row."""
    n = len(column)
    if n == 0:
        return np.zeros(0, dtype="datetime64[us]"), np.zeros(0, dtype=bool)
    _, offsets_buffer, data_buffer = column.buffers()
    offset_type = np.int64 if pa.types.is_large_string(column.type) else np.int32
    offsets = np.frombuffer(
        offsets_buffer, offset_type, n + 1, column.offset * np.dtype(offset_type).itemsize
    )
    data = np.frombuffer(data_buffer, np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    if len(data) < _TIME_WIDTH:
        data = np.concatenate([data, np.zeros(_TIME_WIDTH, np.uint8)])
    ok = (offsets[1:] - offsets[:-1]) == _TIME_WIDTH
    if column.null_count:
        ok &= np.asarray(column.is_valid())
    chars = data[np.where(ok, offsets[:-1], 0)[:, None] + np.arange(_TIME_WIDTH)]  # (n, 19) bytes
    digits = chars[:, _TIME_DIGITS].astype(np.int32) - ord("0")
    ok &= (digits >= 0).all(axis=1) & (digits <= 9).all(axis=1)
    ok &= (chars[:, _TIME_PUNCTUATION] == _TIME_PUNCTUATION_CHARS).all(axis=1)
    ok &= (chars[:, 10] == ord("T")) | (chars[:, 10] == ord(" "))
    number = digits[:, 0::2] * 10 + digits[:, 1::2]  # century, year, month, day, hour, minute, second
    year = number[:, 0] * 100 + number[:, 1]
    month, day, hour, minute, second = number[:, 2:].T
    ok &= (month >= 1) & (month <= 12) & (day >= 1) & (hour < 24) & (minute < 60) & (second < 60)
    months = (np.where(ok, year, 1970) - 1970).astype("datetime64[Y]").astype("datetime64[M]")
    months += np.where(ok, month - 1, 0)
    first_day = months.astype("datetime64[D]")
    ok &= day <= ((months + 1).astype("datetime64[D]") - first_day).astype(np.int64)
    seconds = np.where(ok, ((day - 1) * 24 + hour) * 3600 + minute * 60 + second, 0)
    values = first_day.astype("datetime64[us]") + seconds.astype("timedelta64[s]")
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
    service = _service_array(col["service"], n, ok, services)
    parsed_columns = {"pickup_datetime": pickup, **zones, "passenger_count": passengers, "service": service}
    rejected, fields, reasons = _recheck_rows(col, ok, parsed_columns, text_numbers, services)
    valid = np.flatnonzero(ok)
    columns = {
        "pickup_datetime": pickup[valid],
        "pickup_zone": zones["pickup_zone"][valid].astype(np.int32),
        "dropoff_zone": zones["dropoff_zone"][valid].astype(np.int32),
        "passenger_count": passengers[valid].astype(np.int8),
        "service": service[valid],
    }
    return CheckedChunk(valid, columns, np.asarray(rejected, dtype=np.int64), fields, reasons)


def _service_array(service_col: pa.Array, n: int, ok: np.ndarray, services: Sequence[str]) -> np.ndarray:
    """The service names as fixed-width text; clears ``ok`` (in place) where the service is unknown or not allowed."""
    if pa.types.is_dictionary(service_col.type):
        service_col = service_col.cast(service_col.type.value_type)
    names = np.asarray(SERVICES)  # fixed-width text: no Python string per row
    if pa.types.is_string(service_col.type) or pa.types.is_large_string(service_col.type):
        code = pc.index_in(service_col, value_set=pa.array(SERVICES, pa.string()))
        allowed = np.isin(names, list(services))
        code = np.asarray(code.fill_null(len(names)))
        ok &= np.append(allowed, False)[code]
        service = names[np.minimum(code, len(names) - 1)]
    else:
        ok[:] = False
        service = np.full(n, names[0])
    return service


def _recheck_rows(
    col: Mapping[str, pa.Array],
    ok: np.ndarray,
    parsed_columns: Mapping[str, np.ndarray],
    text_numbers: bool,
    services: Sequence[str],
) -> tuple[list[int], list[str], list[str]]:
    """Run the service's own rules on every row the vector checks did not pass.

    A row the rules accept is written into ``parsed_columns`` and set in ``ok`` (both in place); the others are
    returned as (row indexes, fields, reasons).
    """
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
        parsed_columns["pickup_datetime"][i] = np.datetime64(parsed.pickup_datetime, "us")
        parsed_columns["pickup_zone"][i] = parsed.pickup_zone
        parsed_columns["dropoff_zone"][i] = parsed.dropoff_zone
        parsed_columns["passenger_count"][i] = parsed.passenger_count
        parsed_columns["service"][i] = parsed.service
        ok[i] = True
    return rejected, fields, reasons


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
