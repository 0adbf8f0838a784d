"""Version tag names are written once (``model/version_tags.py``): the ``fare_model`` run's steps register versions
with exactly those names, and the readers (the gate, the champion lookup, serving) find what they need on them."""

from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient

from taxi_platform.core.settings import MODEL_NAME
from taxi_platform.ingest.zones import load_zone_table
from taxi_platform.model import version_tags
from taxi_platform.model.champion_lookup import champion_version, load_champion
from taxi_platform.model.registry_records import MonthModel, record_shadow_verdict
from taxi_platform.model.run_inputs import ModelRunInputs, data_source_label, training_window
from taxi_platform.model.run_logging import log_training
from taxi_platform.model.run_registration import gate, register
from taxi_platform.model.run_training import train
from taxi_platform.model.tracking import TrackedRun
from taxi_platform.model.tuning import TrialRecord, TuningResult
from taxi_platform.model.version_tags import (
    CHECKS_FAILED_TAG,
    DATA_SOURCE_TAG,
    PROMOTED_TAG,
    RATE_CARD_CHANGES_TAG,
    REPACKAGED_FROM_TAG,
    SHADOW_EVIDENCE_TAG,
    SHADOW_VERDICT_TAG,
    mae_tag,
    slices_tag,
)
from taxi_platform_tests.model.test_training import MONTHS, SMALL, write_feature_months
from taxi_platform_tests.support.mlflow_globals import mlflow_store

TAG_NAMES = {value for name, value in vars(version_tags).items() if name.endswith("_TAG")}
SHADOW_TAGS = {SHADOW_VERDICT_TAG, SHADOW_EVIDENCE_TAG}  # written by served_quote_accuracy, not by fare_model
REPACKAGE_TAGS = {REPACKAGED_FROM_TAG, RATE_CARD_CHANGES_TAG}  # written by taxi-platform repackage only
TUNING_TAGS = {value for name, value in vars(version_tags).items() if name.startswith("TUNING_")}
CACHE_PREFIXES = (version_tags.MAE_TAG_PREFIX, version_tags.SLICES_TAG_PREFIX)


def _inputs(lake, month: str) -> ModelRunInputs:
    train_months, missing = training_window(month, 2, set(lake.partitions("trip_features")))
    return ModelRunInputs(
        partition=f"{month}-01",
        month=month,
        train_months=tuple(train_months),
        missing_months=tuple(missing),
        data_source=data_source_label(lake, [*train_months, month]),
        train_config=SMALL,
        window_months=2,
        tolerance=0.01,
        evaluation_rows=5_000,
        dagster_run_id=f"test-{month}",
    )


def _run_month(lake, zones, uri: str, experiment_id: str, month: str) -> str:
    """The fare_model steps for one month, as the asset calls them; the registered version."""
    inputs = _inputs(lake, month)
    with mlflow.start_run(experiment_id=experiment_id) as active:
        run = TrackedRun(active.info.run_id, experiment_id, "version-tags", uri)
        trained = train(lake, zones, inputs)
        logged = log_training(lake, inputs, trained, run)
        version = register(inputs, trained, logged)
        gate(lake, inputs, logged, version)
    return version


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """Two months' versions registered and gated by the run steps against a fresh sqlite registry."""
    lake = write_feature_months(tmp_path_factory.mktemp("lake"), months=MONTHS)
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment_id = client.create_experiment("version-tags", artifact_location=(root / "artifacts").as_uri())
    zones = load_zone_table()
    with pytest.MonkeyPatch.context() as patch, mlflow_store(uri):
        patch.setenv("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
        versions = [_run_month(lake, zones, uri, experiment_id, month) for month in MONTHS[2:4]]
    return client, uri, versions


def _tags(client: MlflowClient, version: str) -> dict[str, str]:
    return dict(client.get_model_version(MODEL_NAME, version).tags)


def test_a_registered_version_carries_exactly_the_tag_names_of_the_tags_module(registered):
    client, _, versions = registered
    expected = TAG_NAMES - SHADOW_TAGS - TUNING_TAGS - REPACKAGE_TAGS  # no tuning search ran
    for version in versions:
        tags = _tags(client, version)
        named = {key for key in tags if not key.startswith(CACHE_PREFIXES)}
        assert named == expected, (sorted(named - expected), sorted(expected - named))
        assert tags[CHECKS_FAILED_TAG] == "" and tags[DATA_SOURCE_TAG] == "synthetic"
        assert tags[PROMOTED_TAG] in {"true", "false"}


def test_the_gate_caches_its_scores_under_the_month_keyed_names(registered):
    client, _, versions = registered
    scored_on = MONTHS[3]  # the second month's model and the first month's champion were scored on it
    for version in versions:
        tags = _tags(client, version)
        assert mae_tag(scored_on) in tags and slices_tag(scored_on) in tags
        assert {key for key in tags if key.startswith(CACHE_PREFIXES)} == {
            mae_tag(scored_on),
            slices_tag(scored_on),
        }


def test_the_readers_find_what_they_need_on_a_registered_version(registered):
    client, uri, versions = registered
    champion = champion_version(uri)
    assert champion.version in versions and champion.tags[DATA_SOURCE_TAG] == "synthetic"
    info = load_champion(uri)  # every tag the champion lookup reads
    assert info.train_months and info.validation_month in MONTHS[2:4]
    assert info.validation_mae is not None and info.family and info.interval_coverage is not None
    for version in versions:  # what the gate reads
        model = MonthModel.from_version(client.get_model_version(MODEL_NAME, version))
        assert model is not None and model.train_months and model.eligible


def test_a_shadow_verdict_is_written_under_the_names_the_gate_reads(registered):
    client, uri, versions = registered
    record_shadow_verdict(uri, versions[-1], "pass", {"month": MONTHS[3], "quotes": 120})
    tags = _tags(client, versions[-1])
    assert SHADOW_TAGS <= set(tags)
    model = MonthModel.from_version(client.get_model_version(MODEL_NAME, versions[-1]))
    assert model.tags.get(SHADOW_VERDICT_TAG) == "pass"


def test_a_tuned_version_adds_exactly_the_tuning_tag_names():
    trial = TrialRecord(number=0, params={}, mae=2.0, seconds=0.1)
    result = TuningResult(
        {}, {}, best_mae=1.9, default_mae=2.0, validation_month="2024-03", seconds=1.0, trials=[trial]
    )
    assert set(result.tags()) == TUNING_TAGS
