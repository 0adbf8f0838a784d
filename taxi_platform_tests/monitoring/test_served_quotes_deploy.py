"""The deploy files wire served-quote monitoring in the cloud: Dagster reads the predictions bucket the logging
sink writes (read-only), and its pods are told where that is (Helm values → ``TAXI_PREDICTION_LOG_PATH``).

Today's main: no grant (the run pods' reads were refused) and no setting (``served_quotes`` read the pods'
``/tmp/taxi-platform/predictions``, which does not exist, and wrote 0 rows).
"""

from __future__ import annotations

import yaml

from taxi_platform.core.settings import load_settings
from taxi_platform_tests.project.test_terraform import REPO, all_resources, blocks, parsed

HELM_VALUES = REPO / "deploy" / "helm" / "dagster-values.yaml"
DAGSTER_SA = '${google_service_account.workload["dagster"].email}'


def _dagster_env() -> dict[str, str]:
    values = yaml.safe_load(HELM_VALUES.read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    return {e["name"]: e["value"] for e in deployment["env"] if "value" in e}


def test_dagster_may_read_but_not_write_the_predictions_bucket():
    grants = [
        body
        for rtype, _name, body in all_resources()
        if rtype == "google_storage_bucket_iam_member"
        and body["bucket"] == "${google_storage_bucket.predictions.name}"
    ]
    by_member = {g["member"]: g["role"] for g in grants}
    assert by_member["serviceAccount:" + DAGSTER_SA] == "roles/storage.objectViewer"
    assert (
        by_member["${google_logging_project_sink.predictions.writer_identity}"]
        == "roles/storage.objectCreator"
    )
    assert len(grants) == 2, grants


def test_dagster_pods_read_the_log_where_the_sink_writes_it():
    outputs = {n: b for doc in parsed().values() for o in blocks(doc, "output") for n, b in o.items()}
    assert outputs["prediction_log_path"]["value"] == "gs://${google_storage_bucket.predictions.name}"
    buckets = {n: b for t, n, b in all_resources() if t == "google_storage_bucket"}
    name = buckets["predictions"]["name"].replace("${var.project_id}", "PROJECT_ID")
    name = name.replace("${local.name}", "taxi-prod")  # the placeholders deploy/render.sh fills
    env = _dagster_env()
    assert env["TAXI_PREDICTION_LOG_PATH"] == f"gs://{name}"
    settings = load_settings(
        {"TAXI_PREDICTION_LOG_PATH": env["TAXI_PREDICTION_LOG_PATH"].replace("PROJECT_ID", "p1")}
    )
    assert settings.prediction_log_path == "gs://p1-taxi-prod-predictions"


def test_a_bad_log_path_names_the_variable():
    import pytest

    from taxi_platform.core.setting_values import SettingsError

    with pytest.raises(
        SettingsError, match=r"TAXI_PREDICTION_LOG_PATH='s3://logs': expected a local directory"
    ):
        load_settings({"TAXI_PREDICTION_LOG_PATH": "s3://logs"})
    assert load_settings({"TAXI_DATA_DIR": "/srv/taxi"}).prediction_log_path == "/srv/taxi/predictions"
