"""The promotion gate's rule, whatever order partitions run in, against a real MLflow (sqlite) registry.

Months 2024-01..06 come from the sample generator with a 50 % fare increase from 2024-04 (the issue's
scenario), cleaned and featurised into a temporary lake. The models are tiny real pyfunc models that quote one
fixed fare (the median fare of their training months), logged once each and registered as versions with the
tags ``fare_model`` sets. Their MAE on a month is ``mean |fare - level|``, which the tests compute on their own
(DuckDB over the month's files) to replay the rule independently of the code under test.
"""

from __future__ import annotations

import random
import shutil
import threading
from datetime import date

import duckdb
import mlflow
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient

from taxi_platform.core.months import months_between
from taxi_platform.devtools.sample_profile import SampleProfile
from taxi_platform.model.gate import gate_challenger
from taxi_platform.model.gate_rule import KEPT, OLDER_TRAINING, PROMOTED, replay
from taxi_platform.model.gate_scoring import LakeEvaluation, mae_of
from taxi_platform.model.registry_records import MonthModel
from taxi_platform.model.version_tags import mae_tag
from taxi_platform_tests.model.test_training import write_feature_months

MONTHS = ("2024-01", "2024-02", "2024-03", "2024-04", "2024-05", "2024-06")
MODEL_MONTHS = MONTHS[1:]  # the first month has no history: no model
ROWS = 3_000
WINDOW = 3


class LevelFare(mlflow.pyfunc.PythonModel):
    """Quotes one fixed fare for every trip."""

    def __init__(self, level: float) -> None:
        self.level = float(level)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return pd.DataFrame({"fare_amount": np.full(len(model_input), self.level)})


def train_months_of(month: str) -> list[str]:
    i = MONTHS.index(month)
    return list(MONTHS[max(0, i - WINDOW) : i])


def fares(lake, months) -> np.ndarray:
    files = [lake.partition_glob("trip_features", m) for m in months]
    return duckdb.sql(f"SELECT fare_amount FROM read_parquet({files})").fetchnumpy()["fare_amount"]


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    profile = SampleProfile.fare_increase(date(2024, 4, 1), 1.5)
    return write_feature_months(tmp_path_factory.mktemp("lake"), months=MONTHS, rows=ROWS, profile=profile)


@pytest.fixture(scope="module")
def store(tmp_path_factory, lake):
    """A sqlite registry and one logged LevelFare per model month (level = median fare of its training months)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("order-test", artifact_location=(root / "artifacts").as_uri())
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    levels = {m: float(np.median(fares(lake, train_months_of(m)))) for m in MODEL_MONTHS}
    levels["bad"] = 1_000.0
    uris = {}
    with mlflow.start_run(experiment_id=experiment):
        for key, level in levels.items():
            info = mlflow.pyfunc.log_model(
                name=f"level_{key}", python_model=LevelFare(level), pip_requirements=[]
            )
            uris[key] = info.model_uri
    yield {"client": client, "uris": uris, "levels": levels}
    mlflow.set_tracking_uri(previous)
    mlflow.set_registry_uri(previous)


_names = iter(range(10_000))


@pytest.fixture
def name(request) -> str:
    """A fresh registered model name per test."""
    return f"order_{request.node.name.split('[')[0][-40:]}_{next(_names)}"


def register(store, name: str, month: str, model: str | None = None, checks_failed: str = "") -> str:
    tags = {
        "train_months": ",".join(train_months_of(month)),
        "validation_month": month,
        "checks_failed": checks_failed,
    }
    mv = mlflow.register_model(store["uris"][model or month], name, tags=tags)
    return str(mv.version)


def gate(store, lake, name: str, version: str, tolerance: float = 0.01, **kwargs):
    return gate_challenger(
        store["client"], name, version, LakeEvaluation(lake, rows=100_000), tolerance=tolerance, **kwargs
    )


def champion_month(store, name: str) -> str:
    mv = store["client"].get_model_version_by_alias(name, "champion")
    return mv.tags["validation_month"]


def expected_champion(lake, levels: dict[str, float], months, tolerance: float = 0.01) -> str:
    """The rule replayed by hand: month's model = level of ``levels[month]``, MAE = mean |fare - level|."""
    champion = None
    for month in sorted(months):
        if champion is None:
            champion = month
            continue
        y = fares(lake, [month])
        c, h = np.mean(np.abs(y - levels[month])), np.mean(np.abs(y - levels[champion]))
        if not c > h * (1 + tolerance):
            champion = month
    return champion


def run_in_order(store, lake, name: str, order) -> list:
    return [gate(store, lake, name, register(store, name, m)) for m in order]


# -- the order tests -------------------------------------------------------------------------------------
def test_chronological_run_follows_the_rule_and_scores_each_pair_once(store, lake, name):
    decisions = run_in_order(store, lake, name, MODEL_MONTHS)
    for i, d in enumerate(decisions):
        assert d.champion_validation_month == expected_champion(lake, store["levels"], MODEL_MONTHS[: i + 1])
    # the fare increase makes each fresher model better on its own month: the newest one ends as champion
    assert champion_month(store, name) == "2024-06" == expected_champion(lake, store["levels"], MODEL_MONTHS)
    last = decisions[-1]
    assert last.promoted and last.evaluation_month == "2024-06" and last.compared_with_version == "4"
    assert last.challenger_mae < last.champion_mae
    y = fares(lake, ["2024-06"])
    assert last.challenger_mae == pytest.approx(np.mean(np.abs(y - store["levels"]["2024-06"])), rel=1e-9)
    assert last.champion_mae == pytest.approx(np.mean(np.abs(y - store["levels"]["2024-05"])), rel=1e-9)
    # each later month costs two scorings (challenger and champion on the new month), every other pair is cached
    assert [d.scored_pairs for d in decisions] == [0, 2, 2, 2, 2]
    again = gate(store, lake, name, last.challenger_version)
    assert (
        again.scored_pairs == 0
        and again.cached_pairs == 8
        and again.champion_version == last.champion_version
    )
    tags = store["client"].get_model_version(name, last.challenger_version).tags
    value, fingerprint = tags[mae_tag("2024-06")].split("|")
    assert float(value) == last.challenger_mae and fingerprint == LakeEvaluation(lake).fingerprint("2024-06")
    assert last.champion_age_months == 0 and last.newest_validation_month == "2024-06"


@pytest.mark.parametrize("order", ["reversed", "shuffled-1", "shuffled-2", "shuffled-3"])
def test_any_run_order_ends_with_the_chronological_champion(store, lake, name, order):
    months = list(reversed(MODEL_MONTHS))
    if order.startswith("shuffled"):
        months = list(MODEL_MONTHS)
        random.Random(int(order[-1])).shuffle(months)
        assert months != list(MODEL_MONTHS)
    decisions = run_in_order(store, lake, name, months)
    assert champion_month(store, name) == "2024-06"
    assert decisions[-1].champion_validation_month == "2024-06"
    for d in decisions:  # each run already leaves the champion of the months registered so far
        seen = [m for m in months[: decisions.index(d) + 1]]
        assert d.champion_validation_month == expected_champion(lake, store["levels"], seen)
    if order == "reversed":
        # after June, every older month's model is registered but never promoted, and says why
        for d in decisions[1:]:
            assert not d.promoted and d.champion_validation_month == "2024-06"
            assert "before champion v1 (2024-06)'s (2024-05): registered, never promoted" in d.reason, (
                d.reason
            )
            assert (
                d.champion_age_vs_partition_months
                == months_between("2024-06", d.challenger_validation_month)
                < 0
            )
            assert d.champion_age_months == 0


def test_the_fare_increase_scenario_june_then_march_keeps_june(store, lake, name):
    june = gate(store, lake, name, register(store, name, "2024-06"))
    assert june.promoted and "first month's model" in june.reason
    march = gate(store, lake, name, register(store, name, "2024-03"))
    assert not march.promoted and champion_month(store, name) == "2024-06"
    assert march.champion_version == june.challenger_version
    assert "trained on data ending 2024-02, before champion v1 (2024-06)'s (2024-05)" in march.reason
    assert march.champion_age_vs_partition_months == -3 and march.champion_age_months == 0
    # the replay judged March's model against nobody (it is the first month) and June's against it, on June
    (first, second) = march.steps
    assert first["validation_month"] == "2024-03" and first["outcome"] == "first"
    assert second["validation_month"] == "2024-06" and second["outcome"] == PROMOTED
    assert second["champion_before"] == march.challenger_version


def test_a_newer_model_as_good_as_the_champion_replaces_it(store, lake, name):
    # May's and June's versions quote the same fare: June's is exactly as good on June, and fresher
    may = gate(store, lake, name, register(store, name, "2024-05", model="2024-05"), tolerance=0.0)
    june = gate(store, lake, name, register(store, name, "2024-06", model="2024-05"), tolerance=0.0)
    assert may.promoted
    assert june.promoted and june.challenger_mae == june.champion_mae, june.reason
    assert champion_month(store, name) == "2024-06"
    assert "within 0.00% of (or better than) champion" in june.reason


def test_tolerance_boundary(store, lake, name):
    # June's version quotes May's level x 1.1: worse on June than May's version by a known relative margin
    evaluation = LakeEvaluation(lake, rows=100_000)
    quotes, y = evaluation.sample("2024-06")
    h = mae_of(store["uris"]["2024-05"], quotes, y)
    c = mae_of(store["uris"]["2024-04"], quotes, y)
    assert c > h
    margin = c / h - 1  # the tolerance at which June's version is exactly at the limit
    for tolerance, promoted in ((margin * (1 + 1e-6), True), (margin * (1 - 1e-6), False)):
        n = f"{name}_{promoted}"
        register_as = {"2024-05": "2024-05", "2024-06": "2024-04"}
        for month, model in register_as.items():
            decision = gate(
                store,
                lake,
                n,
                register(store, n, month, model=model),
                tolerance=tolerance,
                slice_tolerance=None,
            )  # the overall rule alone: slices have their own test
        assert decision.promoted is promoted, decision.reason
        assert decision.challenger_mae == pytest.approx(c, rel=1e-12)
        assert decision.champion_mae == pytest.approx(h, rel=1e-12)
        assert decision.tolerance == tolerance
        assert (KEPT if not promoted else PROMOTED) == decision.steps[-1]["outcome"]
        if not promoted:
            assert "by more than" in decision.reason and champion_month(store, n) == "2024-05"


def test_failed_checks_never_promote_and_supersede_nothing(store, lake, name):
    may = gate(store, lake, name, register(store, name, "2024-05"))
    # a June version that would win, but failed its checks
    failed = gate(store, lake, name, register(store, name, "2024-06", checks_failed="beats_naive_baseline"))
    assert not failed.promoted and "failed beats_naive_baseline: registered, never champion" in failed.reason
    assert champion_month(store, name) == "2024-05" and failed.champion_version == may.challenger_version
    june = gate(store, lake, name, register(store, name, "2024-06"))
    assert june.promoted
    # a failed re-run of June leaves June's good version in place
    rerun = gate(
        store, lake, name, register(store, name, "2024-06", checks_failed="fare_grows_with_distance")
    )
    assert not rerun.promoted and rerun.champion_version == june.challenger_version
    # a failed version is never champion even when it is the only one
    lone = f"{name}_lone"
    only = gate(
        store, lake, lone, register(store, lone, "2024-06", checks_failed="no_nan_or_negative_predictions")
    )
    assert not only.promoted and only.champion_version is None
    assert {k: str(v) for k, v in store["client"].get_registered_model(lone).aliases.items()} == {
        "challenger": only.challenger_version
    }


def test_a_republished_old_month_ends_where_a_chronological_run_would(store, lake, name, tmp_path):
    own = write_copy(lake, tmp_path)
    run_in_order(store, own, name, MODEL_MONTHS)
    assert champion_month(store, name) == "2024-06"
    # May is republished: its data changes (a different sample) and its model is re-run, now a poor one
    write_feature_months(tmp_path / "may", months=("2024-05",), rows=ROWS, seed=7,
                         profile=SampleProfile.fare_increase(date(2024, 4, 1), 1.5))  # fmt: skip
    shutil.rmtree(own.partition_dir("trip_features", "2024-05"))
    shutil.copytree(
        f"{tmp_path}/may/trip_features/month=2024-05", own.partition_dir("trip_features", "2024-05")
    )
    rerun = gate(store, own, name, register(store, name, "2024-05", model="bad"))
    levels = {**store["levels"], "2024-05": store["levels"]["bad"]}
    assert rerun.champion_validation_month == expected_champion(own, levels, MODEL_MONTHS) == "2024-06"
    assert not rerun.promoted and "2024-05" in rerun.reason
    # scored again: the new May version and April's champion on May (stale fingerprint), April's on June (new pair)
    assert rerun.scored_pairs == 3
    # and the same months registered chronologically in a fresh registry end on the same model
    fresh = f"{name}_fresh"
    for month in MODEL_MONTHS:
        gate(store, own, fresh, register(store, fresh, month, model="bad" if month == "2024-05" else None))
    assert champion_month(store, fresh) == champion_month(store, name)
    assert [s["outcome"] for s in rerun.steps] == [s["outcome"] for s in gate(store, own, fresh, "5").steps]


def write_copy(lake, tmp_path):
    from taxi_platform.lake.lake import Lake

    shutil.copytree(lake.root, tmp_path / "lake")
    return Lake(str(tmp_path / "lake"))


# -- concurrency -----------------------------------------------------------------------------------------
def test_a_gate_overtaken_by_a_newer_version_replays_again(store, lake, name):
    """Gate A snapshots the registry, then gate B registers and settles a newer month before A sets the alias."""
    for month in ("2024-02", "2024-03", "2024-04"):
        gate(store, lake, name, register(store, name, month))
    a_version = register(store, name, "2024-05")
    paused, resumed = threading.Event(), threading.Event()

    def slow_scorer(uri, quotes, y):
        if not paused.is_set():
            paused.set()
            assert resumed.wait(120)
        return mae_of(uri, quotes, y)

    result = {}
    a = threading.Thread(
        target=lambda: result.setdefault("a", gate(store, lake, name, a_version, scorer=slow_scorer))
    )
    a.start()
    assert paused.wait(120)
    b = gate(store, lake, name, register(store, name, "2024-06"))
    assert b.promoted and champion_month(store, name) == "2024-06"
    resumed.set()
    a.join(120)
    assert (
        champion_month(store, name) == "2024-06"
    )  # A's stale first replay chose May, its second replay June
    assert result["a"].replays == 2 and result["a"].champion_validation_month == "2024-06"
    assert not result["a"].promoted


def test_two_gates_in_parallel_threads(store, lake, name):
    for month in ("2024-02", "2024-03", "2024-04"):
        gate(store, lake, name, register(store, name, month))
    start = threading.Barrier(2)
    results, errors = {}, []

    def one(month):
        try:
            version = register(store, name, month)
            start.wait(60)
            results[month] = gate(store, lake, name, version, scorer=mae_of)
        except Exception as exc:  # pragma: no cover - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(m,)) for m in ("2024-06", "2024-05")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors
    assert champion_month(store, name) == "2024-06"
    assert results["2024-06"].promoted and not results["2024-05"].promoted


# -- the pure replay -------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    maes=st.lists(st.lists(st.floats(0.5, 20.0), min_size=6, max_size=6), min_size=6, max_size=6),
    failed=st.sets(st.integers(0, 5), max_size=3),
    seed=st.integers(0, 10_000),
    tolerance=st.sampled_from([0.0, 0.01, 0.05]),
)
def test_replay_depends_on_the_months_not_on_their_order(maes, failed, seed, tolerance):
    months = [f"2024-{i + 1:02d}" for i in range(6)]
    models = [
        MonthModel(str(i + 1), m, tuple(months[max(0, i - 3) : i]), ("check",) if i in failed else ())
        for i, m in enumerate(months)
    ]

    def mae(model, month):
        return maes[int(model.version) - 1][months.index(month)]

    champion, steps = replay(models, mae, tolerance)
    shuffled = list(models)
    random.Random(seed).shuffle(shuffled)
    again, steps_again = replay(shuffled, mae, tolerance)
    assert again == champion and steps_again == steps
    eligible = [m for m in models if m.eligible]
    assert (champion is None) == (not eligible)
    assert champion is None or champion.eligible
    for s in steps:  # every comparison is on the challenger's month, against an older validation month
        assert s.outcome != OLDER_TRAINING
        if s.champion_before_month is not None:
            assert s.champion_before_month < s.validation_month
        if s.outcome == PROMOTED:
            assert s.challenger_mae <= s.champion_mae * (1 + tolerance)
        if s.outcome == KEPT:
            assert s.challenger_mae > s.champion_mae * (1 + tolerance)
