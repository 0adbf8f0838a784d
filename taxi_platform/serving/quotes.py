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

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

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

from taxi_platform.fare_model.features import SERVICES, QuoteError
from taxi_platform.serving.quote_limits import (
    EARLIEST_PICKUP,
    KNOWN_ZONES,
    MAX_BATCH_SIZE,
    MAX_DAYS_AHEAD,
    MAX_PASSENGERS,
    MAX_ZONE,
    MIN_ZONE,
    NYC,
    ZONE_RECORDS,
    latest_pickup,
    latest_pickup_cached,
)

CURRENCY = "USD"

EXAMPLE_QUOTE: dict[str, Any] = {
    "pickup_datetime": "2024-03-05T08:15:00",
    "pickup_zone": 132,
    "dropoff_zone": 230,
    "passenger_count": 1,
    "service": "yellow",
}


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
    if parsed > latest_pickup_cached():
        latest = latest_pickup()
        if parsed > latest:
            raise ValueError(
                f"pickup_datetime {parsed.isoformat()} is more than {MAX_DAYS_AHEAD} days ahead (latest accepted: "
                f"{latest:%Y-%m-%dT%H:%M}): expected a pickup time within the next year"
            )
    return parsed


def _zone_message(field: str, value: int) -> str:
    record = ZONE_RECORDS.get(value)
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


_ITEM_DESCRIPTIONS = {
    "extra": "Weekday peak (16:00-20:00) and overnight (20:00-06:00) surcharges; on a JFK-Manhattan flat fare only "
    "its peak surcharge.",
    "mta_tax": "MTA tax (every trip except drop-offs at Newark).",
    "improvement_surcharge": "Taxi improvement surcharge.",
    "congestion_surcharge": "New York State congestion surcharge: trips starting or ending in Manhattan south of "
    "96th Street.",
    "airport_fee": "Airport fee: yellow-taxi pickups at JFK and LaGuardia.",
    "cbd_congestion_fee": "MTA congestion relief zone fee: trips starting or ending in Manhattan at or below 60th "
    "Street (from 2025-01-05).",
    "tolls": "Expected bridge and tunnel tolls: the share of the zone pair's trips that paid one, times the toll "
    "in force (the route decides; not a rate-card rule).",
}
ITEM_NAMES = tuple(_ITEM_DESCRIPTIONS)  # the items of a quote, in the order the model returns them


class FareItems(BaseModel):
    """What a rider pays before the tip besides the fare, item by item (dollars): each rule of the dated TLC rate
    card in force at the pickup, and the expected tolls. fare_amount plus every item is total_before_tip."""

    model_config = ConfigDict(title="FareItems")

    extra: float = Field(description=_ITEM_DESCRIPTIONS["extra"])
    mta_tax: float = Field(description=_ITEM_DESCRIPTIONS["mta_tax"])
    improvement_surcharge: float = Field(description=_ITEM_DESCRIPTIONS["improvement_surcharge"])
    congestion_surcharge: float = Field(description=_ITEM_DESCRIPTIONS["congestion_surcharge"])
    airport_fee: float = Field(description=_ITEM_DESCRIPTIONS["airport_fee"])
    cbd_congestion_fee: float = Field(description=_ITEM_DESCRIPTIONS["cbd_congestion_fee"])
    tolls: float = Field(description=_ITEM_DESCRIPTIONS["tolls"])


class BatchFareItems(BaseModel):
    """Each item of :class:`FareItems` per quote, in the order of predictions."""

    model_config = ConfigDict(title="BatchFareItems")

    extra: list[float] = Field(description=_ITEM_DESCRIPTIONS["extra"])
    mta_tax: list[float] = Field(description=_ITEM_DESCRIPTIONS["mta_tax"])
    improvement_surcharge: list[float] = Field(description=_ITEM_DESCRIPTIONS["improvement_surcharge"])
    congestion_surcharge: list[float] = Field(description=_ITEM_DESCRIPTIONS["congestion_surcharge"])
    airport_fee: list[float] = Field(description=_ITEM_DESCRIPTIONS["airport_fee"])
    cbd_congestion_fee: list[float] = Field(description=_ITEM_DESCRIPTIONS["cbd_congestion_fee"])
    tolls: list[float] = Field(description=_ITEM_DESCRIPTIONS["tolls"])


_TOTAL = (
    "What the rider pays before the tip: fare_amount plus every item, to the cent. null when the served model "
    "version does not itemise (versions trained before itemised quotes)."
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
    items: FareItems | None = Field(
        default=None,
        description="The charges besides the fare; null when the served version does not itemise.",
    )
    total_before_tip: float | None = Field(default=None, description=_TOTAL)
    total_low: float | None = Field(
        default=None, description="fare_low plus every item: the low end of the total's range (null without)."
    )
    total_high: float | None = Field(
        default=None,
        description="fare_high plus every item: the high end of the total's range (null without).",
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
    items: BatchFareItems | None = Field(
        default=None,
        description="Each quote's charges besides the fare, per item in the order of predictions; null when the "
        "served version does not itemise.",
    )
    total_before_tip: list[float] | None = Field(
        default=None, description=_TOTAL + " In the order of predictions."
    )
    total_low: list[float] | None = Field(default=None, description="fare_low plus every item, per quote.")
    total_high: list[float] | None = Field(default=None, description="fare_high plus every item, per quote.")
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


def round_fares(fares: np.ndarray) -> list[float]:
    """Fares in dollars and cents, as plain floats (what the endpoints return)."""
    return np.round(np.asarray(fares, dtype=np.float64), 2).tolist()
