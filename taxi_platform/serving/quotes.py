"""Fare-quote requests: what a caller may ask the fare model, validated in one place.

The serving endpoints, the benchmark and any other caller share these pydantic models, so a bad quote gets
the same clear message everywhere and the OpenAPI schema shows the real constraints.

Rules (each violation names the field and says what a good value looks like):

* ``pickup_datetime`` — an ISO-8601 string (``2024-03-05T08:15:00``; a space instead of ``T`` is fine).
  Naive times are New York local time, like the TLC's own timestamps; times with an offset (``…Z``,
  ``…-05:00``) are converted to New York local time. It must lie between 2009-01-01 (the first TLC trip
  records) and one year from now. Numbers (epoch seconds) are rejected: their time zone is ambiguous.
* ``pickup_zone`` / ``dropoff_zone`` — an integer TLC LocationID known to the zone lookup (1..263).
  264 ("Unknown") and 265 ("Outside of NYC") are rejected: the model cannot price a trip it cannot place.
* ``passenger_count`` — an integer 0..9 (booleans, floats and strings are rejected).
* ``service`` — one of the services the model was trained on (``yellow``, ``green``).
* Unknown fields are **rejected**, so a misspelt field name (``passengers``) is an error rather than a
  silently ignored value.
* A batch holds at most :data:`MAX_BATCH_SIZE` quotes; an empty batch is valid and yields no predictions.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
    ValidationError,
    WithJsonSchema,
)

from taxi_platform.fare_model.features import SERVICES, UNKNOWN_ZONES, QuoteError
from taxi_platform.ingest.zones import load_zone_records

EARLIEST_PICKUP = datetime(2009, 1, 1)
MAX_DAYS_AHEAD = 365
MAX_PASSENGERS = 9
MAX_BATCH_SIZE = 10_000
CURRENCY = "USD"
NYC = ZoneInfo("America/New_York")
_EPOCH = datetime(1970, 1, 1)
_ONE_US = timedelta(microseconds=1)

EXAMPLE_QUOTE: dict[str, Any] = {
    "pickup_datetime": "2024-03-05T08:15:00",
    "pickup_zone": 132,
    "dropoff_zone": 230,
    "passenger_count": 1,
    "service": "yellow",
}

_ZONE_RECORDS = {r.location_id: r for r in load_zone_records()}
KNOWN_ZONES: frozenset[int] = frozenset(z for z in _ZONE_RECORDS if z not in UNKNOWN_ZONES)
MIN_ZONE, MAX_ZONE = min(KNOWN_ZONES), max(KNOWN_ZONES)


def latest_pickup(now: datetime | None = None) -> datetime:
    """The latest pickup time a quote may ask about: one year from now (New York local time)."""
    now = now or datetime.now(NYC).replace(tzinfo=None)
    return now + timedelta(days=MAX_DAYS_AHEAD)


_latest_cache: list[float | datetime] = [0.0, EARLIEST_PICKUP]


def _latest_cached() -> datetime:
    """:func:`latest_pickup`, recomputed at most once a minute (validation runs per quote on the hot path)."""
    now = time.monotonic()
    if now - _latest_cache[0] > 60.0:  # type: ignore[operator]
        _latest_cache[:] = [now, latest_pickup()]
    return _latest_cache[1]  # type: ignore[return-value]


def _out_of_range(text: str) -> ValueError:
    return ValueError(
        f"pickup_datetime {text} is out of range: expected a time between {EARLIEST_PICKUP:%Y-%m-%d} and one "
        "year from now"
    )


def parse_pickup(value: Any) -> datetime:
    """An ISO-8601 pickup time as naive New York local time, range-checked; ``ValueError`` says why not."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        text = value.strip()
        try:
            parsed = datetime.fromisoformat(text) if len(text) > 10 else None
        except ValueError:
            parsed = None
        if parsed is None:
            raise ValueError(
                f"pickup_datetime {value!r:.60} is not an ISO-8601 date and time: expected e.g. "
                f"{EXAMPLE_QUOTE['pickup_datetime']!r} (New York local time) or '2024-03-05T13:15:00Z'"
            )
    else:
        raise ValueError(
            f"pickup_datetime must be an ISO-8601 string such as {EXAMPLE_QUOTE['pickup_datetime']!r} "
            f"(New York local time), not {type(value).__name__}"
        )
    if parsed.tzinfo is not None:
        try:
            parsed = parsed.astimezone(NYC).replace(tzinfo=None)
        except (OverflowError, ValueError):
            raise _out_of_range(parsed.isoformat()) from None
    if parsed < EARLIEST_PICKUP:
        raise ValueError(
            f"pickup_datetime {parsed.isoformat()} is before {EARLIEST_PICKUP:%Y-%m-%d}, when TLC trip records "
            "start: expected a recent or upcoming pickup time"
        )
    if parsed > _latest_cached():
        latest = latest_pickup()
        if parsed > latest:
            raise ValueError(
                f"pickup_datetime {parsed.isoformat()} is more than {MAX_DAYS_AHEAD} days ahead (latest accepted: "
                f"{latest:%Y-%m-%dT%H:%M}): expected a pickup time within the next year"
            )
    return parsed


def _zone_message(field: str, value: int) -> str:
    record = _ZONE_RECORDS.get(value)
    if record is not None:  # 264 / 265
        what = f"the TLC's {record.zone if record.zone != 'N/A' else record.borough!r} pseudo-zone"
        return (
            f"{field} {value} is {what}, which the model cannot price: "
            f"expected a known TLC LocationID {MIN_ZONE}..{MAX_ZONE}"
        )
    return f"{field} {value} is not a TLC LocationID: expected a known zone {MIN_ZONE}..{MAX_ZONE} (see taxi_zone_lookup.csv)"


def _check_zone(field: str):
    def check(value: int) -> int:
        if value not in KNOWN_ZONES:
            raise ValueError(_zone_message(field, value))
        return value

    return check


def _check_passengers(value: int) -> int:
    if not 0 <= value <= MAX_PASSENGERS:
        raise ValueError(f"passenger_count {value} is out of range: expected an integer 0..{MAX_PASSENGERS}")
    return value


def _zone_field(field: str, role: str):
    return Annotated[
        int,
        Strict(),
        AfterValidator(_check_zone(field)),
        Field(
            description=f"TLC LocationID of the {role} zone ({MIN_ZONE}..{MAX_ZONE}; 264/265 are rejected).",
            json_schema_extra={"minimum": MIN_ZONE, "maximum": MAX_ZONE, "example": EXAMPLE_QUOTE[field]},
        ),
    ]


PickupDatetime = Annotated[
    datetime,
    PlainValidator(parse_pickup, json_schema_input_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
    Field(
        description="Pickup time, ISO-8601. Naive = New York local time; an offset is converted to it. "
        f"Between {EARLIEST_PICKUP:%Y-%m-%d} and one year from now.",
        json_schema_extra={"example": EXAMPLE_QUOTE["pickup_datetime"]},
    ),
]
PassengerCount = Annotated[
    int,
    Strict(),
    AfterValidator(_check_passengers),
    Field(
        description=f"Number of passengers, 0..{MAX_PASSENGERS}.",
        json_schema_extra={"minimum": 0, "maximum": MAX_PASSENGERS, "example": 1},
    ),
]
Service = Annotated[
    Literal[SERVICES],  # type: ignore[valid-type]
    Field(
        description=f"Taxi service the quote is for: one of {list(SERVICES)}.",
        json_schema_extra={"example": "yellow"},
    ),
]


class Quote(BaseModel):
    """One fare quote request of the fare service. Unknown fields are rejected."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, title="Quote", json_schema_extra={"example": EXAMPLE_QUOTE}
    )

    pickup_datetime: PickupDatetime
    pickup_zone: _zone_field("pickup_zone", "pickup")  # type: ignore[valid-type]
    dropoff_zone: _zone_field("dropoff_zone", "drop-off")  # type: ignore[valid-type]
    passenger_count: PassengerCount
    service: Service


class QuoteBatch(BaseModel):
    """Up to ``MAX_BATCH_SIZE`` quotes, priced in one vectorised model call."""

    model_config = ConfigDict(
        extra="forbid", title="QuoteBatch", json_schema_extra={"example": {"quotes": [EXAMPLE_QUOTE]}}
    )

    quotes: list[Quote] = Field(
        max_length=MAX_BATCH_SIZE,
        description=f"The quotes to price (at most {MAX_BATCH_SIZE:,}); predictions come back in the same order.",
    )


class FarePrediction(BaseModel):
    """The model's fare for one quote."""

    model_config = ConfigDict(title="FarePrediction")

    fare_amount: float = Field(
        description="Predicted metered fare (fare_amount, before tips/tolls/surcharges)."
    )
    fare_low: float | None = Field(
        default=None,
        description="Low end of the quoted fare range: the model's calibrated range (by default 80 % of trips of "
        "this kind — service, distance band, airport or not — fall inside fare_low..fare_high). null when the "
        "served model version has no calibrated range (versions trained before ranges existed).",
    )
    fare_high: float | None = Field(
        default=None, description="High end of the quoted fare range (see fare_low); null without a range."
    )
    currency: Literal["USD"] = Field(default=CURRENCY, description="Always USD.")
    model_version: str = Field(description="Registered version of taxi_fare_model that priced the quote.")


class BatchPrediction(BaseModel):
    """Fares for a batch of quotes, in request order."""

    model_config = ConfigDict(title="BatchPrediction")

    predictions: list[float] = Field(
        description="fare_amount per quote, in the order of the request's quotes."
    )
    fare_low: list[float] | None = Field(
        default=None,
        description="Low end of each quote's calibrated fare range, in the order of predictions; null when the "
        "served model version has no calibrated range.",
    )
    fare_high: list[float] | None = Field(
        default=None,
        description="High end of each quote's fare range, in the order of predictions; null without.",
    )
    currency: Literal["USD"] = Field(default=CURRENCY, description="Always USD.")
    model_version: str = Field(description="Registered version of taxi_fare_model that priced the quotes.")


def format_errors(errors: Sequence[dict[str, Any]]) -> str:
    """One line per problem: ``field: message`` (pydantic's "Value error, " prefix removed)."""
    lines = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "body"
        msg = str(err.get("msg", "invalid"))
        msg = msg.removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}")
    return "; ".join(lines)


def _parse(model: type[BaseModel], data: Any, what: str) -> Any:
    try:
        if isinstance(data, str | bytes | bytearray):
            return model.model_validate_json(data)
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        raise QuoteError(f"invalid {what}: {format_errors(errors)}", errors) from None


def parse_quote(data: Any) -> Quote:
    """Validate one quote (a mapping, or JSON text/bytes); raises :class:`QuoteError` with every problem."""
    return _parse(Quote, data, "quote")


def parse_batch(data: Any) -> QuoteBatch:
    """Validate a ``{"quotes": [...]}`` batch; raises :class:`QuoteError` with every problem."""
    return _parse(QuoteBatch, data, "quote batch")


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
    times = got["pickup_datetime"]
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
    if pickup.min() < np.datetime64(EARLIEST_PICKUP) or pickup.max() > np.datetime64(_latest_cached()):
        return None
    return {
        "pickup_datetime": pickup,
        "pickup_zone": zones["pickup_zone"].astype(np.int32),  # type: ignore[union-attr]
        "dropoff_zone": zones["dropoff_zone"].astype(np.int32),  # type: ignore[union-attr]
        "passenger_count": passengers.astype(np.int8),
        "service": np.array(services, dtype=object),
    }


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
        try:
            return QuoteBatch.model_validate(data)  # the wrong shape: pydantic's own (short) error list
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            if len(errors) <= MAX_LISTED_ERRORS:
                raise
            raise _batch_error(_line_errors(errors[:MAX_LISTED_ERRORS])) from None
    items = data["quotes"]
    if len(items) > MAX_BATCH_SIZE:
        raise _batch_error(
            [
                {
                    "type": "too_long",
                    "loc": ("quotes",),
                    "input": None,
                    "ctx": {"field_type": "List", "max_length": MAX_BATCH_SIZE, "actual_length": len(items)},
                }
            ]
        )
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
        quotes: list[Quote] = []
        errors, found, checked = [], 0, 0
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
        if not found:
            return QuoteBatch.model_construct(quotes=quotes)
        if found <= MAX_LISTED_ERRORS and checked == len(items):
            raise _batch_error(errors)
    summary = (
        f"{found:,} errors in quotes 0..{checked - 1}, the first {MAX_LISTED_ERRORS} listed"
        + (f"; the other {len(items) - checked:,} quotes were not checked" if checked < len(items) else "")
        + ": fix these and send the batch again"
    )
    listed = _line_errors(errors[:MAX_LISTED_ERRORS])
    listed.append(
        {"type": "value_error", "loc": ("quotes",), "input": None, "ctx": {"error": ValueError(summary)}}
    )
    raise _batch_error(listed)


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


def round_fares(fares: np.ndarray) -> list[float]:
    """Fares in dollars and cents, as plain floats (what the endpoints return)."""
    return np.round(np.asarray(fares, dtype=np.float64), 2).tolist()
