"""Batches of fare quotes checked for a server that must stay responsive, and quotes as the model's columns.

:func:`check_batch` validates a decoded ``{"quotes": [...]}`` body length first, lists at most
:data:`MAX_LISTED_ERRORS` errors, and checks a batch of plain quotes a column at a time (:class:`QuoteColumns`);
:func:`check_services` refuses quotes for a service the served model was not trained on; :func:`quotes_to_columns`
turns validated quotes into the model's dict-of-arrays input.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from pydantic import ValidationError

from taxi_platform.fare_model.features import SERVICES
from taxi_platform.serving.quote_limits import (
    EARLIEST_PICKUP,
    KNOWN_ZONES,
    MAX_BATCH_SIZE,
    MAX_PASSENGERS,
    MAX_ZONE,
    latest_pickup_cached,
)
from taxi_platform.serving.quotes import EXAMPLE_QUOTE, Quote, QuoteBatch

_EPOCH = datetime(1970, 1, 1)
_ONE_US = timedelta(microseconds=1)

MAX_LISTED_ERRORS = 20
_CHECK_CHUNK = (
    256  # quotes validated per call; checking stops at the chunk that brings MAX_LISTED_ERRORS errors
)


def _line_errors(errors: Sequence[dict[str, Any]], offset: int = 0) -> list[dict[str, Any]]:
    """``ValidationError.errors()`` entries, back in the form ``from_exception_data`` takes (index shifted)."""
    out = []
    for err in errors:
        loc = tuple(err["loc"])
        if offset and len(loc) >= 2 and loc[0] == "quotes" and isinstance(loc[1], int):
            loc = ("quotes", loc[1] + offset, *loc[2:])
        line: dict[str, Any] = {"type": err["type"], "loc": loc, "input": err.get("input")}
        if err.get("ctx"):
            line["ctx"] = err["ctx"]
        out.append(line)
    return out


def _batch_error(errors: list[dict[str, Any]]) -> ValidationError:
    return ValidationError.from_exception_data("QuoteBatch", errors)  # type: ignore[arg-type]


_FAST_MIN_QUOTES = 32  # below this, pydantic per quote is as quick as the column checks' fixed cost
_QUOTE_KEYS = frozenset(EXAMPLE_QUOTE)
_ZONE_OK = np.zeros(MAX_ZONE + 1, dtype=bool)
_ZONE_OK[list(KNOWN_ZONES)] = True
# "YYYY-MM-DDTHH:MM:SS" (or a space for the T): the one pickup_datetime form numpy parses exactly like
# datetime.fromisoformat (numpy refuses out-of-range fields too); anything else goes through parse_pickup.
_DIGIT_AT = np.array([i not in (4, 7, 10, 13, 16) for i in range(19)])
_SEPARATORS = {4: "-", 7: "-", 13: ":", 16: ":"}


class QuoteColumns(Sequence[Quote]):
    """A validated batch held as the model's columns (see :func:`quotes_to_columns`); indexing builds the
    :class:`Quote`, so code that walks ``batch.quotes`` still sees quote objects."""

    def __init__(self, columns: dict[str, np.ndarray]) -> None:
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns["pickup_zone"])

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        c = self.columns
        return Quote.model_construct(
            pickup_datetime=c["pickup_datetime"][index].astype(datetime),
            pickup_zone=int(c["pickup_zone"][index]),
            dropoff_zone=int(c["dropoff_zone"][index]),
            passenger_count=int(c["passenger_count"][index]),
            service=str(c["service"][index]),
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and len(other) == len(self) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]


def _int_column(values: list[Any]) -> np.ndarray | None:
    if set(map(type, values)) != {int}:  # Strict(): no bool, float or str
        return None
    try:
        return np.array(values, dtype=np.int64)
    except OverflowError:
        return None


def _fast_pickups(times: list[Any]) -> np.ndarray | None:
    """Pickup times all written ``YYYY-MM-DDTHH:MM:SS`` (or a space for the T) and in range, as
    ``datetime64[us]``; ``None`` if any is not."""
    if set(map(type, times)) != {str} or set(map(len, times)) != {19}:
        return None
    try:
        text = np.array(times, dtype="U19")
    except ValueError:
        return None
    chars = text.view(np.uint32).reshape(len(times), 19)  # UCS-4 code points; shorter strings end in 0
    digits = (chars >= 48) & (chars <= 57)
    if not (digits[:, _DIGIT_AT].all() and np.isin(chars[:, 10], (ord("T"), ord(" "))).all()):
        return None
    for pos, sep in _SEPARATORS.items():
        if not (chars[:, pos] == ord(sep)).all():
            return None
    try:
        pickup = text.astype("datetime64[us]")
    except ValueError:
        return None
    if pickup.min() < np.datetime64(EARLIEST_PICKUP) or pickup.max() > np.datetime64(latest_pickup_cached()):
        return None
    return pickup


def _fast_columns(items: list[Any]) -> dict[str, np.ndarray] | None:
    """The columns of a batch of plain, valid quotes, checked a column at a time; ``None`` as soon as anything
    is unusual (then the quotes go through pydantic, which words every error)."""
    for item in items:
        if type(item) is not dict or len(item) != 5:
            return None
    try:
        got = {name: [q[name] for q in items] for name in _QUOTE_KEYS}
    except KeyError:
        return None
    zones = {name: _int_column(got[name]) for name in ("pickup_zone", "dropoff_zone")}
    passengers = _int_column(got["passenger_count"])
    for zone in zones.values():
        if zone is None or zone.min() < 0 or zone.max() > MAX_ZONE or not _ZONE_OK[zone].all():
            return None
    if passengers is None or passengers.min() < 0 or passengers.max() > MAX_PASSENGERS:
        return None
    services = got["service"]
    if set(map(type, services)) != {str} or not set(services) <= set(SERVICES):
        return None
    pickup = _fast_pickups(got["pickup_datetime"])
    if pickup is None:
        return None
    return {
        "pickup_datetime": pickup,
        "pickup_zone": zones["pickup_zone"].astype(np.int32),  # type: ignore[union-attr]
        "dropoff_zone": zones["dropoff_zone"].astype(np.int32),  # type: ignore[union-attr]
        "passenger_count": passengers.astype(np.int8),
        "service": np.array(services, dtype=object),
    }


def _check_shape(data: Any) -> QuoteBatch:
    """A body that is not ``{"quotes": [...]}``: pydantic's own (short) error list, at most 20 errors."""
    try:
        return QuoteBatch.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if len(errors) <= MAX_LISTED_ERRORS:
            raise
        raise _batch_error(_line_errors(errors[:MAX_LISTED_ERRORS])) from None


def _too_long(length: int) -> ValidationError:
    return _batch_error(
        [
            {
                "type": "too_long",
                "loc": ("quotes",),
                "input": None,
                "ctx": {"field_type": "List", "max_length": MAX_BATCH_SIZE, "actual_length": length},
            }
        ]
    )


def _check_in_chunks(items: list[Any]) -> tuple[list[Quote], list[dict[str, Any]], int, int]:
    """``(quotes, errors, errors found, quotes checked)``: the quotes validated a chunk at a time, stopping at the
    chunk that brings the :data:`MAX_LISTED_ERRORS`-th error."""
    quotes: list[Quote] = []
    errors: list[dict[str, Any]] = []
    found, checked = 0, 0
    for start in range(0, len(items), _CHECK_CHUNK):
        chunk = items[start : start + _CHECK_CHUNK]
        try:
            quotes.extend(QuoteBatch.model_validate({"quotes": chunk}).quotes)
        except ValidationError as exc:
            found += exc.error_count()
            if len(errors) < MAX_LISTED_ERRORS:
                errors += _line_errors(exc.errors(include_url=False), start)
        checked = start + len(chunk)
        if found >= MAX_LISTED_ERRORS:
            break
    return quotes, errors, found, checked


def _too_many_errors(errors: list[dict[str, Any]], found: int, checked: int, total: int) -> ValidationError:
    """The first :data:`MAX_LISTED_ERRORS` errors and one ``loc=["quotes"]`` entry counting the rest."""
    summary = (
        f"{found:,} errors in quotes 0..{checked - 1}, the first {MAX_LISTED_ERRORS} listed"
        + (f"; the other {total - checked:,} quotes were not checked" if checked < total else "")
        + ": fix these and send the batch again"
    )
    listed = _line_errors(errors[:MAX_LISTED_ERRORS])
    listed.append(
        {"type": "value_error", "loc": ("quotes",), "input": None, "ctx": {"error": ValueError(summary)}}
    )
    return _batch_error(listed)


def check_batch(data: Any) -> QuoteBatch:
    """Validate a decoded ``{"quotes": [...]}`` batch cheaply, for a server that must stay responsive.

    Unlike :func:`parse_batch` it raises pydantic's ``ValidationError`` (a 400 in the service), and:

    * the batch length is checked before any quote is looked at (a 60,000-quote batch costs a ``len``);
    * quotes are validated in chunks of 256 and checking stops at the chunk that brings the
      :data:`MAX_LISTED_ERRORS`-th error: at most 20 errors are listed, followed by one ``loc=["quotes"]`` entry
      that counts the errors found and the quotes left unchecked (so a batch of 10,000 bad quotes answers in
      milliseconds with a small body, not 10,000 error objects);
    * a batch of plain quotes (``YYYY-MM-DDTHH:MM:SS`` times, int zones and counts) is checked a column at a
      time and held as the model's columns (:class:`QuoteColumns`): about 0.6 µs a quote instead of pydantic's
      3-4 µs. Anything else in the batch, valid or not, sends it through pydantic, so errors read the same.
    """
    if not isinstance(data, dict) or set(data) != {"quotes"} or not isinstance(data["quotes"], list):
        return _check_shape(data)
    items = data["quotes"]
    if len(items) > MAX_BATCH_SIZE:
        raise _too_long(len(items))
    if len(items) >= _FAST_MIN_QUOTES:
        columns = _fast_columns(items)
        if columns is not None:
            return QuoteBatch.model_construct(quotes=QuoteColumns(columns))
    if len(items) <= _CHECK_CHUNK:
        try:
            return QuoteBatch.model_validate(data)
        except ValidationError as exc:
            if exc.error_count() <= MAX_LISTED_ERRORS:
                raise
            errors, found, checked = exc.errors(include_url=False), exc.error_count(), len(items)
    else:
        quotes, errors, found, checked = _check_in_chunks(items)
        if not found:
            return QuoteBatch.model_construct(quotes=quotes)
        if found <= MAX_LISTED_ERRORS and checked == len(items):
            raise _batch_error(errors)
    raise _too_many_errors(errors, found, checked, len(items))


def check_services(quotes: Sequence[Quote], trained: Sequence[str], batch: bool = False) -> None:
    """Raise a pydantic ``ValidationError`` (a 400 in the service) for quotes whose service the model was not
    trained on; ``loc`` is ``("service",)`` or ``("quotes", i, "service")`` for a batch (first 20 listed)."""
    if set(SERVICES) <= set(trained):
        return
    if isinstance(quotes, QuoteColumns):
        service = quotes.columns["service"]
        bad = np.flatnonzero(~np.isin(service, list(trained)))[:20].tolist()
    else:
        bad = [i for i, q in enumerate(quotes) if q.service not in trained][:20]
    if not bad:
        return
    message = f"the served model was trained on {list(trained)} only: expected one of them"
    errors = [
        {
            "type": "value_error",
            "loc": ("quotes", i, "service") if batch else ("service",),
            "input": quotes[i].service,
            "ctx": {"error": ValueError(f"service {quotes[i].service!r} is unknown to the model: {message}")},
        }
        for i in bad
    ]
    raise ValidationError.from_exception_data("QuoteBatch" if batch else "Quote", errors)


def quotes_to_columns(quotes: Sequence[Quote]) -> dict[str, np.ndarray]:
    """Validated quotes as the model's dict-of-arrays input (pickup_datetime as ``datetime64[us]``)."""
    if isinstance(quotes, QuoteColumns):
        return quotes.columns
    return {
        "pickup_datetime": np.array(
            [(q.pickup_datetime - _EPOCH) // _ONE_US for q in quotes], dtype=np.int64
        ).view("datetime64[us]"),
        "pickup_zone": np.array([q.pickup_zone for q in quotes], dtype=np.int32),
        "dropoff_zone": np.array([q.dropoff_zone for q in quotes], dtype=np.int32),
        "passenger_count": np.array([q.passenger_count for q in quotes], dtype=np.int8),
        "service": np.array([q.service for q in quotes], dtype=object),
    }
