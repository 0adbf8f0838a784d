"""Quote validation (serving/quotes.py): every rule accepts the good and rejects the bad with a message that says why."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from taxi_platform.fare_model.features import QuoteError
from taxi_platform.serving import quote_batches as QB
from taxi_platform.serving import quotes as Q
from taxi_platform.serving.quote_limits import KNOWN_ZONES, MAX_BATCH_SIZE
from taxi_platform.serving.quotes import EXAMPLE_QUOTE, parse_batch, parse_quote


def quote(**changes) -> dict:
    return {**EXAMPLE_QUOTE, **changes}


def test_example_quote_is_valid_and_typed():
    q = parse_quote(EXAMPLE_QUOTE)
    assert q.pickup_datetime == datetime(2024, 3, 5, 8, 15)
    assert (q.pickup_zone, q.dropoff_zone, q.passenger_count, q.service) == (132, 230, 1, "yellow")


def test_json_text_and_mapping_give_the_same_quote():
    assert parse_quote(json.dumps(EXAMPLE_QUOTE)) == parse_quote(EXAMPLE_QUOTE)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-05T08:15:00", datetime(2024, 3, 5, 8, 15)),
        ("2024-03-05 08:15:00", datetime(2024, 3, 5, 8, 15)),
        ("2024-03-05T08:15", datetime(2024, 3, 5, 8, 15)),
        ("2024-03-05T08:15:00.250", datetime(2024, 3, 5, 8, 15, 0, 250_000)),
        # Offsets are converted to New York wall-clock time (EST = UTC-5 in March before DST).
        ("2024-03-05T13:15:00Z", datetime(2024, 3, 5, 8, 15)),
        ("2024-03-05T08:15:00-05:00", datetime(2024, 3, 5, 8, 15)),
        # ... and EDT (UTC-4) in July.
        ("2024-07-05T12:15:00+00:00", datetime(2024, 7, 5, 8, 15)),
    ],
)
def test_pickup_datetime_formats(text, expected):
    assert parse_quote(quote(pickup_datetime=text)).pickup_datetime == expected


def test_pickup_datetime_range_edges():
    assert parse_quote(quote(pickup_datetime="2009-01-01T00:00:00")).pickup_datetime == datetime(2009, 1, 1)
    soon = (datetime.now() + timedelta(days=300)).replace(microsecond=0)
    assert parse_quote(quote(pickup_datetime=soon.isoformat())).pickup_datetime == soon


@pytest.mark.parametrize(
    ("changes", "field", "needle"),
    [
        ({"pickup_zone": 264}, "pickup_zone", "pickup_zone 264 is the TLC's 'Unknown' pseudo-zone"),
        ({"dropoff_zone": 265}, "dropoff_zone", "dropoff_zone 265 is the TLC's 'Outside of NYC' pseudo-zone"),
        ({"pickup_zone": 0}, "pickup_zone", "pickup_zone 0 is not a TLC LocationID"),
        ({"dropoff_zone": 999}, "dropoff_zone", "expected a known zone 1..263"),
        ({"pickup_zone": -3}, "pickup_zone", "not a TLC LocationID"),
        ({"pickup_zone": 10**30}, "pickup_zone", "not a TLC LocationID"),
        ({"pickup_zone": "132"}, "pickup_zone", "valid integer"),
        ({"pickup_zone": 132.0}, "pickup_zone", "valid integer"),
        ({"pickup_zone": None}, "pickup_zone", "valid integer"),
        (
            {"passenger_count": 10},
            "passenger_count",
            "passenger_count 10 is out of range: expected an integer 0..9",
        ),
        ({"passenger_count": -1}, "passenger_count", "out of range"),
        ({"passenger_count": True}, "passenger_count", "valid integer"),
        ({"passenger_count": 1.5}, "passenger_count", "valid integer"),
        ({"service": "fhv"}, "service", "'yellow' or 'green'"),
        ({"service": "YELLOW"}, "service", "'yellow' or 'green'"),
        ({"service": None}, "service", "'yellow' or 'green'"),
        ({"pickup_datetime": "2008-12-31T23:59:59"}, "pickup_datetime", "before 2009-01-01"),
        ({"pickup_datetime": "2099-01-01T00:00:00"}, "pickup_datetime", "more than 365 days ahead"),
        ({"pickup_datetime": "2024-03-05"}, "pickup_datetime", "not an ISO-8601 date and time"),
        ({"pickup_datetime": "next tuesday"}, "pickup_datetime", "not an ISO-8601 date and time"),
        ({"pickup_datetime": "2024-13-05T08:15:00"}, "pickup_datetime", "not an ISO-8601 date and time"),
        ({"pickup_datetime": 1709626500}, "pickup_datetime", "must be an ISO-8601 string"),
        ({"pickup_datetime": None}, "pickup_datetime", "must be an ISO-8601 string"),
        ({"pickup_datetime": "0001-01-01T00:00:00+14:00"}, "pickup_datetime", "out of range"),
        ({"pickup_datetime": "9999-12-31T23:59:59-14:00"}, "pickup_datetime", "out of range"),
        ({"passengers": 2}, "passengers", "Extra inputs are not permitted"),
    ],
)
def test_bad_field_is_rejected_with_reason(changes, field, needle):
    with pytest.raises(QuoteError) as info:
        parse_quote(quote(**changes))
    message = str(info.value)
    assert f"{field}: " in message
    assert needle in message
    assert [e["loc"] for e in info.value.errors] == [(field,)]


def test_missing_fields_are_all_listed():
    with pytest.raises(QuoteError) as info:
        parse_quote({"pickup_zone": 1})
    message = str(info.value)
    for field in ("pickup_datetime", "dropoff_zone", "passenger_count", "service"):
        assert f"{field}: Field required" in message
    assert "pickup_zone" not in message


@pytest.mark.parametrize(("body", "needle"), [("{", "Invalid JSON"), ("[]", "object"), ("null", "object")])
def test_non_object_bodies_are_rejected(body, needle):
    with pytest.raises(QuoteError, match=needle):
        parse_quote(body)


def test_every_known_zone_is_accepted_and_only_those():
    assert KNOWN_ZONES == frozenset(range(1, 264))
    for zone in (1, 132, 138, 263):
        assert parse_quote(quote(pickup_zone=zone, dropoff_zone=zone)).pickup_zone == zone


def test_batch_limits_and_error_locations():
    assert parse_batch({"quotes": []}).quotes == []
    assert len(parse_batch({"quotes": [EXAMPLE_QUOTE] * MAX_BATCH_SIZE}).quotes) == MAX_BATCH_SIZE
    with pytest.raises(QuoteError, match=f"at most {MAX_BATCH_SIZE}"):
        parse_batch({"quotes": [EXAMPLE_QUOTE] * (MAX_BATCH_SIZE + 1)})
    bad = [EXAMPLE_QUOTE, EXAMPLE_QUOTE, EXAMPLE_QUOTE, quote(dropoff_zone=264)]
    with pytest.raises(QuoteError) as info:
        parse_batch(json.dumps({"quotes": bad}))
    assert [e["loc"] for e in info.value.errors] == [("quotes", 3, "dropoff_zone")]
    assert "quotes.3.dropoff_zone: dropoff_zone 264" in str(info.value)
    with pytest.raises(QuoteError, match="quotes: Field required"):
        parse_batch({"quote": [EXAMPLE_QUOTE]})


def test_quotes_to_columns_matches_the_quotes():
    qs = [
        parse_quote(quote(pickup_datetime="2024-07-01T23:59:30", pickup_zone=1, service="green")),
        parse_quote(EXAMPLE_QUOTE),
    ]
    cols = QB.quotes_to_columns(qs)
    assert cols["pickup_datetime"].dtype == np.dtype("datetime64[us]")
    assert cols["pickup_datetime"].tolist() == [datetime(2024, 7, 1, 23, 59, 30), datetime(2024, 3, 5, 8, 15)]
    assert cols["pickup_zone"].tolist() == [1, 132]
    assert cols["dropoff_zone"].tolist() == [230, 230]
    assert cols["passenger_count"].tolist() == [1, 1]
    assert cols["service"].tolist() == ["green", "yellow"]
    empty = QB.quotes_to_columns([])
    assert all(len(v) == 0 for v in empty.values())


def test_round_fares_gives_cents_as_floats():
    assert Q.round_fares(np.array([12.3449, 70.0, 3.0051, 9.999])) == [12.34, 70.0, 3.01, 10.0]
    assert all(type(v) is float for v in Q.round_fares(np.array([1.0, 2.5])))


def test_openapi_schema_shows_constraints():
    schema = Q.Quote.model_json_schema()
    props = schema["properties"]
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == set(EXAMPLE_QUOTE)
    assert (props["pickup_zone"]["minimum"], props["pickup_zone"]["maximum"]) == (1, 263)
    assert (props["passenger_count"]["minimum"], props["passenger_count"]["maximum"]) == (0, 9)
    assert props["service"]["enum"] == ["yellow", "green"]
    assert props["pickup_datetime"]["format"] == "date-time"
    assert Q.QuoteBatch.model_json_schema()["properties"]["quotes"]["maxItems"] == MAX_BATCH_SIZE


def test_check_services_refuses_services_the_model_never_saw():
    from pydantic import ValidationError

    yellow, green = parse_quote(EXAMPLE_QUOTE), parse_quote(quote(service="green"))
    QB.check_services([yellow, green], ("yellow", "green"))  # both trained: fine
    QB.check_services([yellow], ("yellow",))
    with pytest.raises(ValidationError) as info:
        QB.check_services([yellow, green, green], ("yellow",), batch=True)
    assert [e["loc"] for e in info.value.errors()] == [("quotes", 1, "service"), ("quotes", 2, "service")]
    assert "service 'green' is unknown to the model: the served model was trained on ['yellow'] only" in str(
        info.value
    )
    with pytest.raises(ValidationError) as info:
        QB.check_services([green], ("yellow",))
    assert [e["loc"] for e in info.value.errors()] == [("service",)]


# --- check_batch: what the service uses for /predict_batch (length first, capped error list) -------------------

BAD_ZONE = {**EXAMPLE_QUOTE, "pickup_zone": 999}


def _errors(data) -> list[dict]:
    with pytest.raises(ValidationError) as info:
        QB.check_batch(data)
    return info.value.errors(include_url=False, include_context=False, include_input=False)


def test_check_batch_refuses_an_oversized_batch_before_validating_any_quote(monkeypatch):
    validated = []
    original = Q.QuoteBatch.model_validate

    def spy(data, *args, **kwargs):
        validated.append(len(data.get("quotes", [])) if isinstance(data, dict) else data)
        return original(data, *args, **kwargs)

    monkeypatch.setattr(Q.QuoteBatch, "model_validate", spy)
    errors = _errors({"quotes": [{}] * 60_000})
    assert validated == [], "no quote may be validated for a batch over the limit"
    assert [e["loc"] for e in errors] == [("quotes",)]
    assert f"at most {MAX_BATCH_SIZE}" in errors[0]["msg"] and "60000" in errors[0]["msg"]


def test_check_batch_of_10000_bad_quotes_lists_20_errors_and_counts_the_rest():
    errors = _errors({"quotes": [BAD_ZONE] * MAX_BATCH_SIZE})
    assert [e["loc"] for e in errors[:20]] == [("quotes", i, "pickup_zone") for i in range(20)]
    assert errors[-1]["loc"] == ("quotes",) and len(errors) == 21
    assert (
        "256 errors in quotes 0..255" in errors[-1]["msg"]
        and "9,744 quotes were not checked" in errors[-1]["msg"]
    )
    assert len(json.dumps(errors)) < 64 * 1024


def test_check_batch_accepts_what_parse_batch_accepts():
    data = {"quotes": [EXAMPLE_QUOTE, {**EXAMPLE_QUOTE, "service": "green"}] * 300}
    assert QB.check_batch(data).quotes == parse_batch(data).quotes
    assert QB.check_batch({"quotes": []}).quotes == []


@settings(max_examples=30, deadline=None)
@given(
    size=st.integers(0, 700),
    bad=st.sets(st.integers(0, 699), max_size=60),
)
def test_check_batch_errors_are_the_first_bad_quotes_in_order(size, bad):
    bad = sorted(i for i in bad if i < size)
    data = {"quotes": [BAD_ZONE if i in bad else EXAMPLE_QUOTE for i in range(size)]}
    if not bad:
        assert len(QB.check_batch(data).quotes) == size
        return
    errors = _errors(data)
    listed = [e["loc"][1] for e in errors if len(e["loc"]) == 3]
    assert listed == bad[:20]  # the first bad quotes, in request order, never more than 20
    if len(bad) <= 20:
        assert len(errors) == len(bad)  # a short list is complete, no summary
    else:
        summary = errors[-1]["msg"]
        assert errors[-1]["loc"] == ("quotes",) and "the first 20 listed" in summary
        checked_to = int(summary.split("in quotes 0..")[1].split(",")[0])
        found = int(summary.split(" errors")[0].split()[-1].replace(",", ""))
        assert found == len([i for i in bad if i <= checked_to])  # the count covers every quote it checked


def test_check_batch_caps_shape_errors_too():
    errors = _errors({"quotes": [BAD_ZONE] * 30, "extra": 1})
    assert len(errors) <= 20


# --- check_batch's column fast path: same answers as pydantic, quote for quote --------------------------------

VALID_VARIANTS = [
    quote(),
    quote(pickup_datetime="2024-03-05 23:59:59", pickup_zone=1, dropoff_zone=263, service="green"),
    quote(pickup_datetime="2009-01-01T00:00:00", passenger_count=0),
    quote(pickup_datetime="2024-02-29T12:00:00", passenger_count=9),
    # valid, but not the plain form the columns take: the whole batch goes through pydantic, same result
    quote(pickup_datetime="2024-03-05T13:15:00Z"),
    quote(pickup_datetime="2024-03-05T08:15:00.250"),
    quote(pickup_datetime=" 2024-03-05T08:15:00 "),
    quote(pickup_datetime="2024-03-05T08:15"),
    quote(pickup_datetime="2024-03-05X08:15:00"),  # fromisoformat takes any separator character
]


@pytest.mark.parametrize("odd", VALID_VARIANTS)
def test_check_batch_fast_path_gives_the_quotes_and_columns_pydantic_gives(odd):
    data = {"quotes": [EXAMPLE_QUOTE, quote(service="green", pickup_zone=7)] * 40 + [odd]}
    fast, slow = QB.check_batch(data).quotes, parse_batch(data).quotes
    assert len(fast) == len(slow) == 81
    assert fast == slow  # Quote objects, index by index
    assert fast[-3:] == slow[-3:] and fast[80] == slow[80]
    cols, expected = QB.quotes_to_columns(fast), QB.quotes_to_columns(slow)
    for name, column in expected.items():
        assert cols[name].dtype == column.dtype and cols[name].tolist() == column.tolist(), name


def test_check_batch_fast_path_holds_plain_batches_as_columns():
    data = {"quotes": [EXAMPLE_QUOTE] * 100}
    quotes = QB.check_batch(data).quotes
    assert isinstance(quotes, QB.QuoteColumns)  # no Quote object per quote
    assert QB.quotes_to_columns(quotes) is quotes.columns
    assert quotes[99] == parse_quote(EXAMPLE_QUOTE) and len(quotes[10:20]) == 10


@pytest.mark.parametrize(
    "bad",
    [
        {"pickup_zone": True},
        {"pickup_zone": 132.0},
        {"pickup_zone": "132"},
        {"pickup_zone": 264},
        {"pickup_zone": 0},
        {"pickup_zone": -1},
        {"dropoff_zone": 2**70},
        {"passenger_count": 10},
        {"passenger_count": False},
        {"service": "blue"},
        {"service": None},
        {"pickup_datetime": "2024-02-30T08:15:00"},
        {"pickup_datetime": "2024-03-05T24:00:00"},
        {"pickup_datetime": "2008-12-31T23:59:59"},
        {"pickup_datetime": "2999-01-01T00:00:00"},
        {"pickup_datetime": "2024-03-05"},
        {"pickup_datetime": 1709626500},
        {"passengers": 1},
    ],
)
def test_check_batch_fast_path_words_errors_as_pydantic_does(bad):
    odd = {**EXAMPLE_QUOTE, **bad}
    if "passengers" in bad:
        del odd["passenger_count"]
    data = {"quotes": [EXAMPLE_QUOTE] * 50 + [odd] + [EXAMPLE_QUOTE] * 50}
    with pytest.raises(ValidationError) as fast:
        QB.check_batch(data)
    with pytest.raises(ValidationError) as slow:
        Q.QuoteBatch.model_validate(data)
    assert fast.value.errors(include_url=False, include_context=False) == slow.value.errors(
        include_url=False, include_context=False
    )
    assert all(e["loc"][:2] == ("quotes", 50) for e in fast.value.errors())


@pytest.mark.parametrize("item", [None, [1, 2], "quote", {**EXAMPLE_QUOTE, "extra": 1}])
def test_check_batch_fast_path_leaves_odd_items_to_pydantic(item):
    data = {"quotes": [EXAMPLE_QUOTE] * 40 + [item]}
    with pytest.raises(ValidationError) as fast:
        QB.check_batch(data)
    with pytest.raises(ValidationError) as slow:
        Q.QuoteBatch.model_validate(data)
    assert fast.value.errors(include_url=False, include_context=False) == slow.value.errors(
        include_url=False, include_context=False
    )


def test_check_services_on_columns_names_the_same_quotes():
    data = {"quotes": [EXAMPLE_QUOTE, quote(service="green")] * 30}
    columns, objects = QB.check_batch(data).quotes, parse_batch(data).quotes
    assert isinstance(columns, QB.QuoteColumns)
    errors = []
    for quotes in (columns, objects):
        with pytest.raises(ValidationError) as info:
            QB.check_services(quotes, ("yellow",), batch=True)
        errors.append(info.value.errors(include_url=False, include_context=False))
    assert errors[0] == errors[1]
    assert [e["loc"] for e in errors[0]] == [("quotes", i, "service") for i in range(1, 40, 2)]
    QB.check_services(columns, ("yellow", "green"), batch=True)
