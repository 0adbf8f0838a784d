"""The dated rate card: loading and validation, lookups at the change instants, the list of tariff changes, and
the synthetic generator charging what the card says."""

from __future__ import annotations

import ast
import importlib.util
import shutil
import sys
from dataclasses import astuple
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taxi_platform.devtools.sample_profile import DirtRates, SampleProfile
from taxi_platform.devtools.sample_trips import generate_month
from taxi_platform.fare_model import rate_card
from taxi_platform.fare_model.rate_card import (
    CARD_PATH,
    COLUMNS,
    COMPONENTS,
    RateCard,
    amount_at,
    load_rate_card,
    tariff_changes,
)

CLEAN = SampleProfile(dirt=DirtRates.clean())
HEADER = ",".join(COLUMNS)
FARE_PAGE = "https://www.nyc.gov/site/tlc/passengers/taxi-fare.page"


def _write(tmp_path: Path, *rows: str, name: str = "card.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(["# a test card", HEADER, *rows]) + "\n", encoding="utf-8")
    return path


def _row(service: str, component: str, amount: str, day: str) -> str:
    return f"{service},{component},{amount},{day},{FARE_PAGE},test row"


def _us(text: str) -> np.ndarray:
    return np.array([text], dtype="datetime64[us]")


def _np(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False)


# -- the packaged card -----------------------------------------------------------------------------------------
def test_packaged_card_sits_next_to_the_module_and_loads():
    assert CARD_PATH == Path(rate_card.__file__).with_name("rate_card.csv")
    card = load_rate_card()
    assert card.path == CARD_PATH and len(card.rows) > 0
    assert {r.component for r in card.rows} == set(COMPONENTS)  # every component has at least one row
    assert all(r.source.startswith("https://") and r.note for r in card.rows)
    assert load_rate_card(CARD_PATH) == card  # by path or by default: the same rows


def test_a_copied_package_reads_its_own_card(tmp_path, monkeypatch):
    """Each model version ships fare_model copied under a name of its own: the card travels with it."""
    shutil.copytree(
        CARD_PATH.parent, tmp_path / "copied_fare_model", ignore=shutil.ignore_patterns("__pycache__")
    )
    spec = importlib.util.spec_from_file_location(
        "copied_fare_model.rate_card", tmp_path / "copied_fare_model" / "rate_card.py"
    )
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    assert module.CARD_PATH == tmp_path / "copied_fare_model" / "rate_card.csv"
    assert [astuple(r) for r in module.load_rate_card().rows] == [astuple(r) for r in load_rate_card().rows]


def test_module_imports_only_stdlib_and_numpy():
    """fare_model ships on its own with each model version: no import of the rest of taxi_platform."""
    tree = ast.parse(Path(rate_card.__file__).read_text(encoding="utf-8"))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    assert roots - {"numpy"} <= set(sys.stdlib_module_names) | {"__future__"}, roots


# -- validation ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rows", "bad_line", "words"),
    [
        ([_row("*", "per_unit", "0.50", "2009-01-01"), _row("*", "per_mile", "2.50", "2009-01-01")], 4,
         "unknown component 'per_mile'"),
        ([_row("*", "per_unit", "0.50", "2009-01-01"), _row("*", "per_unit", "0.70", "2009-01-01")], 4,
         "already set"),
        ([_row("*", "mta_tax", "0.50", "2009-01-01"), _row("green", "mta_tax", "0.60", "2009-01-01")], 4,
         "already set"),  # a service's own row on the date a * row already sets
        ([_row("*", "mta_tax", "-0.50", "2009-01-01")], 3, "non-negative"),
        ([_row("*", "mta_tax", "nan", "2009-01-01")], 3, "non-negative"),
        ([_row("*", "mta_tax", "fifty cents", "2009-01-01")], 3, "not a number"),
        ([_row("*", "mta_tax", "0.50", "2009-13-01")], 3, "not an ISO date"),
        ([_row("*", "mta_tax", "0.50", "19 Dec 2022")], 3, "not an ISO date"),
        ([_row("blue", "mta_tax", "0.50", "2009-01-01")], 3, "unknown service 'blue'"),
        (["*,mta_tax,0.50,2009-01-01"], 3, "expected 6"),
    ],
)  # fmt: skip
def test_bad_rows_are_rejected_naming_the_line(tmp_path, rows, bad_line, words):
    path = _write(tmp_path, *rows)
    with pytest.raises(ValueError, match=words) as err:
        load_rate_card(path)
    assert f"{path}:{bad_line}:" in str(err.value)


def test_bad_header_and_empty_file_are_rejected(tmp_path):
    path = tmp_path / "card.csv"
    path.write_text("service,component,amount,date,source,note\n", encoding="utf-8")
    with pytest.raises(ValueError, match="header"):
        load_rate_card(path)
    path.write_text("# only comments\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no header row"):
        load_rate_card(path)


def test_same_date_for_different_services_is_fine(tmp_path):
    path = _write(
        tmp_path, _row("yellow", "congestion_surcharge", "2.50", "2019-02-02"),
        _row("green", "congestion_surcharge", "2.75", "2019-02-02"),
    )  # fmt: skip
    card = load_rate_card(path)
    assert [r.line for r in card.rows] == [3, 4]


# -- lookups ---------------------------------------------------------------------------------------------------
def test_lookup_at_the_2022_12_19_boundary():
    when = np.array(
        ["2022-12-18T23:59:59", "2022-12-18T23:59:59.999999", "2022-12-19T00:00:00"], "datetime64[us]"
    )
    assert amount_at("per_unit", "yellow", when).tolist() == [0.50, 0.50, 0.70]
    assert amount_at("initial_charge", "green", when).tolist() == [2.50, 2.50, 3.00]
    assert amount_at("jfk_flat_fare", "yellow", when).tolist() == [52.0, 52.0, 70.0]
    assert amount_at("peak_extra", "yellow", when).tolist() == [1.00, 1.00, 2.50]


def test_lookup_accepts_any_unit_integers_and_strings_and_keeps_the_shape():
    ns = np.array(["2023-08-05T23:59:59.999999999", "2023-08-06"], dtype="datetime64[ns]")
    assert amount_at("toll_standard", "yellow", ns).tolist() == [6.55, 6.94]
    micros = ns.astype("datetime64[us]").astype(np.int64)
    assert amount_at("toll_standard", "yellow", micros).tolist() == [6.55, 6.94]
    assert amount_at("toll_standard", "green", ["2023-08-05", "2023-08-06"]).tolist() == [6.55, 6.94]
    grid = np.array([["2020-01-01", "2026-01-01"], ["2025-01-04", "2025-01-05"]], dtype="datetime64[D]")
    assert amount_at("cbd_congestion_fee", "green", grid).tolist() == [[0.0, 0.75], [0.0, 0.75]]


def test_before_a_components_first_row_the_amount_is_zero():
    assert amount_at("congestion_surcharge", "yellow", _us("2019-02-01T23:59:59")).tolist() == [0.0]
    assert amount_at("congestion_surcharge", "yellow", _us("2019-02-02")).tolist() == [2.50]
    assert amount_at("airport_fee", "yellow", _us("2020-12-31T23:59:59")).tolist() == [0.0]
    assert amount_at("per_unit", "yellow", _us("1999-01-01")).tolist() == [0.0]


def test_service_specific_rows():
    when = np.array(["2021-06-01", "2023-06-01"], dtype="datetime64[us]")
    assert amount_at("congestion_surcharge", "yellow", when).tolist() == [2.50, 2.50]
    assert amount_at("congestion_surcharge", "green", when).tolist() == [2.75, 2.75]
    assert amount_at("airport_fee", "yellow", when).tolist() == [1.25, 1.75]
    assert amount_at("airport_fee", "green", when).tolist() == [0.0, 0.0]  # the card has no green airport fee


def test_unknown_names_in_a_lookup_are_rejected():
    with pytest.raises(ValueError, match="unknown component"):
        amount_at("tip", "yellow", _us("2024-01-01"))
    with pytest.raises(ValueError, match="unknown service"):
        amount_at("per_unit", "fhv", _us("2024-01-01"))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.datetimes(min_value=datetime(2009, 1, 1), max_value=datetime(2035, 12, 31)), min_size=1))
def test_per_unit_rate_is_50_cents_before_2022_12_19_and_70_from_it(instants):
    when = np.array(instants, dtype="datetime64[us]")
    expected = [0.70 if t >= datetime(2022, 12, 19) else 0.50 for t in instants]
    for service in ("yellow", "green"):
        assert amount_at("per_unit", service, when).tolist() == expected


def test_an_edited_card_changes_the_lookup_from_its_date(tmp_path):
    text = CARD_PATH.read_text(encoding="utf-8")
    edited = _write(tmp_path, name="base.csv")  # only to get a path in tmp_path
    edited.write_text(text + _row("*", "per_unit", "0.80", "2024-06-01") + "\n", encoding="utf-8")
    when = np.array(["2024-05-31T23:59:59", "2024-06-01", "2030-01-01"], dtype="datetime64[us]")
    assert amount_at("per_unit", "green", when).tolist() == [0.70, 0.70, 0.70]
    assert amount_at("per_unit", "green", when, card=edited).tolist() == [0.70, 0.80, 0.80]
    card = load_rate_card(edited)
    assert amount_at("per_unit", "yellow", when, card=card).tolist() == [0.70, 0.80, 0.80]
    (change,) = tariff_changes("2024-01-01", "2025-01-01", card=card)
    assert change.effective_from == date(2024, 6, 1) and change.components == ("per_unit",)


def test_a_card_built_in_code_is_validated():
    row = load_rate_card().rows[0]
    with pytest.raises(ValueError, match="already set"):
        RateCard((row, row))


# -- tariff changes --------------------------------------------------------------------------------------------
def test_tariff_changes_between_two_dates():
    (change,) = tariff_changes(date(2022, 11, 1), date(2023, 1, 1))
    assert change.effective_from == date(2022, 12, 19)
    assert {"initial_charge", "per_unit", "jfk_flat_fare", "peak_extra", "airport_fee"} <= set(
        change.components
    )
    assert list(change.components) == [c for c in COMPONENTS if c in change.components]  # card order
    assert all(r.effective_from == date(2022, 12, 19) for r in change.rows)
    # Start inclusive, end exclusive.
    assert tariff_changes("2022-12-19", "2022-12-20")[0].effective_from == date(2022, 12, 19)
    assert tariff_changes("2022-11-01", "2022-12-19") == []
    assert tariff_changes(datetime(2022, 12, 19, 12), "2023-01-01") == []  # it took effect at 00:00
    assert len(tariff_changes("2022-12-01", datetime(2022, 12, 19, 0, 0, 1))) == 1
    assert len(tariff_changes("2022-12-01", "2022-12-19T00:00:01")) == 1


def test_tariff_changes_for_one_service():
    yellow = tariff_changes("2019-01-01", "2026-01-01", service="yellow")
    green = tariff_changes("2019-01-01", "2026-01-01", service="green")
    assert [c.effective_from for c in yellow] == [
        date(2019, 2, 2), date(2021, 1, 1), date(2022, 12, 19), date(2023, 8, 6), date(2025, 1, 5)
    ]  # fmt: skip
    assert date(2021, 1, 1) not in [c.effective_from for c in green]  # the airport fee is yellow-only
    green_2022 = next(c for c in green if c.effective_from == date(2022, 12, 19))
    assert "airport_fee" not in green_2022.components
    assert all(r.service in ("green", "*") for c in green for r in c.rows)
    with pytest.raises(ValueError, match="unknown service"):
        tariff_changes("2019-01-01", "2026-01-01", service="fhv")


# -- the generator charges what the card says --------------------------------------------------------------------
@pytest.mark.parametrize("service", ["yellow", "green"])
def test_generated_fares_follow_the_card_across_the_2022_12_19_change(service):
    table = generate_month(service, date(2022, 12, 1), 30_000, seed=5, profile=CLEAN)
    prefix = "tpep" if service == "yellow" else "lpep"
    pickup = table.column(f"{prefix}_pickup_datetime").cast(pa.timestamp("us")).to_numpy()
    ratecode, fare = _np(table, "RatecodeID"), _np(table, "fare_amount")
    before = pickup < np.datetime64("2022-12-19")
    assert before.sum() > 1000 and (~before).sum() > 1000

    metered = ratecode == 1
    initial = amount_at("initial_charge", service, pickup)[metered]
    unit = amount_at("per_unit", service, pickup)[metered]
    units = np.round((fare[metered] - initial) / unit)
    assert (units >= 0).all()
    assert np.array_equal(fare[metered], np.round(initial + unit * units, 2))
    assert set(np.unique(initial)) == {2.50, 3.00}

    flat = ratecode == 2
    assert flat.sum() > (20 if service == "yellow" else 0)
    assert np.array_equal(fare[flat], amount_at("jfk_flat_fare", service, pickup)[flat])
    improvement = _np(table, "improvement_surcharge")
    assert np.array_equal(improvement, amount_at("improvement_surcharge", service, pickup))


def test_generated_surcharges_follow_the_card():
    table = generate_month("green", date(2025, 1, 1), 20_000, seed=2, profile=CLEAN)
    pickup = table.column("lpep_pickup_datetime").cast(pa.timestamp("us")).to_numpy()
    congestion = _np(table, "congestion_surcharge")
    assert set(np.unique(congestion)) == {0.0, amount_at("congestion_surcharge", "green", pickup[:1])[0]}
    cbd = _np(table, "cbd_congestion_fee")
    charged = cbd > 0
    assert charged.any() and np.array_equal(
        cbd[charged], amount_at("cbd_congestion_fee", "green", pickup)[charged]
    )
    assert (cbd[pickup < np.datetime64("2025-01-05")] == 0).all()
    do = _np(table, "DOLocationID")
    mta = amount_at("mta_tax", "green", pickup)
    assert np.array_equal(_np(table, "mta_tax")[do != 1], mta[do != 1])
