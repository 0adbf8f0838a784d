"""A registered version prices exactly as it did when it was validated, whatever ``taxi_platform`` is installed.

The reproduction of the defect: register a version, then change a feature definition in the installed code as a later
release may (``pickup_hour`` in another clock, ``is_jfk_manhattan`` dropped). Before versions shipped their code under
a name of their own, a process that imported ``taxi_platform`` first (every run worker, the fare service) priced the
same champion's Midtown→JFK quote with the changed features. Here the version's fares stay unchanged to 1e-9 through
``mlflow.pyfunc.load_model``, ``predict_quotes`` in-process and a Bento built and served from the changed code; a
control computes what the changed code would have priced, so the test fails if the change stopped mattering.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import requests

from taxi_platform.devtools.loopback import free_port
from taxi_platform.model.model_loading import VersionMismatchError, load_version, verify_version
from taxi_platform.model.model_package import package_digest
from taxi_platform.model.version_tags import CODE_TAG, FEATURES_TAG, STATE_TAG, TRAINING_TAG
from taxi_platform.serving import bento_build, bento_context, bento_store
from taxi_platform_tests.serving.test_service import _stop, _wait_ready, start_server
from taxi_platform_tests.support.package_release import release
from taxi_platform_tests.support.sample_champion import ensure_sample_champion, predict_in_subprocess

pytestmark = pytest.mark.slow

MIDTOWN_JFK = {"pickup_datetime": "2024-03-05T08:15:00", "pickup_zone": 161, "dropoff_zone": 132,
               "passenger_count": 1, "service": "yellow"}  # fmt: skip
MIDTOWN = {"pickup_datetime": "2024-03-05T18:40:00", "pickup_zone": 161, "dropoff_zone": 236,
           "passenger_count": 2, "service": "yellow"}  # fmt: skip
# The release's change, appended to the installed features module: the model imports the name at load.
RELEASE_BANNER = "taxi_platform release with changed features imported"
CHANGE = f"""

print({RELEASE_BANNER!r}, flush=True)
_released_compute_feature_arrays = compute_feature_arrays


def compute_feature_arrays(quotes, zones):  # a later release: pickup hour in UTC, no JFK-Manhattan flag
    out = _released_compute_feature_arrays(quotes, zones)
    out["pickup_hour"] = ((out["pickup_hour"].astype(np.int64) + 5) % 24).astype(out["pickup_hour"].dtype)
    out["is_jfk_manhattan"] = np.zeros_like(out["is_jfk_manhattan"])
    return out
"""


def _quotes(n: int = 30, seed: int = 3) -> list[dict]:
    rng = np.random.default_rng(seed)
    zones = [132, 138, 161, 162, 230, 236, 237, 48, 79, 186]
    out = [MIDTOWN_JFK, MIDTOWN]
    for _ in range(n):
        out.append(
            {
                "pickup_datetime": f"2024-03-{rng.integers(1, 29):02d}T{rng.integers(0, 24):02d}:{rng.integers(0, 60):02d}:00",
                "pickup_zone": int(rng.choice(zones)),
                "dropoff_zone": int(rng.choice(zones)),
                "passenger_count": int(rng.integers(1, 5)),
                "service": "yellow",
            }
        )
    return out


def changed_package(dest: Path) -> Path:
    """A copy of the installed ``taxi_platform`` with the release's feature change; returns its parent dir."""
    return release(dest, code_change=CHANGE)


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    return ensure_sample_champion(tmp_path_factory.getbasetemp() / "sample-champion")


@pytest.fixture(scope="module")
def validated(champion, tmp_path_factory) -> tuple[list[dict], np.ndarray]:
    """The quotes and what the version priced with the code it was validated with (a fresh process)."""
    quotes = _quotes()
    return quotes, np.asarray(predict_in_subprocess(champion, quotes, tmp_path_factory.mktemp("validated")))


def test_version_records_the_code_it_was_built_with(champion):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=champion.tracking_uri, registry_uri=champion.tracking_uri)
    tags = client.get_model_version("taxi_fare_model", champion.version).tags
    assert tags[CODE_TAG] == package_digest()
    assert tags[FEATURES_TAG] == "1" and tags[TRAINING_TAG] == "2" and tags[STATE_TAG] == "3"


def test_changed_installed_code_prices_the_version_as_validated(champion, validated, tmp_path):
    quotes, fares = validated
    tree = changed_package(tmp_path / "installed")
    qpath = tmp_path / "quotes.json"
    qpath.write_text(json.dumps(quotes))
    script = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np, pandas as pd
        import taxi_platform.fare_model.pyfunc as today                       # the changed release, imported first
        assert today.__file__.startswith({str(tree)!r}), today.__file__
        import mlflow.pyfunc
        from taxi_platform.model.model_loading import load_version
        quotes = pd.DataFrame(json.load(open({str(qpath)!r})))
        cols = {{c: quotes[c].to_numpy() for c in quotes.columns}}
        pyfunc = mlflow.pyfunc.load_model({champion.uri!r})
        inner = pyfunc.unwrap_python_model()
        # control: the version's fitted state priced by the changed installed code
        control = today.FareQuoteModel(inner.estimator, today.PairStats.from_state(inner.pair_stats.to_state()),
                                       today.ZoneTable.from_state(inner.zones.to_state()), inner.family)
        print(json.dumps({{
            "pyfunc": pyfunc.predict(quotes)["fare_amount"].tolist(),
            "predict_quotes": [float(inner.predict_quotes({{k: v[i] for k, v in cols.items()}})[0])
                               for i in range(len(quotes))],
            "load_version": load_version({champion.uri!r}).predict(quotes)["fare_amount"].tolist(),
            "control": control.predict_quotes(cols).tolist(),
            "model_module": type(inner).__module__,
        }}))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # no other test's store
    env.update(
        PYTHONPATH=str(tree),
        MLFLOW_TRACKING_URI=champion.tracking_uri,
        MLFLOW_REGISTRY_URI=champion.tracking_uri,
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["model_module"].startswith("taxi_fare_model_"), out["model_module"]
    assert abs(out["control"][0] - fares[0]) > 1.0, "the release's change must move the Midtown→JFK fare"
    for path in ("pyfunc", "predict_quotes", "load_version"):
        np.testing.assert_allclose(out[path], fares, rtol=0, atol=1e-9, err_msg=path)


def test_bento_built_from_changed_code_serves_the_version_as_validated(champion, validated, tmp_path):
    quotes, fares = validated
    context = bento_context.stage_build_context(tmp_path / "context")
    features = context / "taxi_platform" / "fare_model" / "features.py"
    features.write_text(features.read_text() + CHANGE)
    home = tmp_path / "data" / "bentoml"
    info = bento_build.champion_info(champion.tracking_uri)
    bento_store.import_champion(home, info, champion.tracking_uri)
    build = bento_build.build_bento(home, info, root=context)
    assert build.model_code["probes"] > 0 and build.model_code["max_abs_diff"] <= 1e-9
    served_features = build.path / "src" / "taxi_platform" / "fare_model" / "features.py"
    assert (
        "_released_compute_feature_arrays" in served_features.read_text()
    )  # the Bento holds the changed code
    env = {**os.environ, "TAXI_DATA_DIR": str(tmp_path / "data"), "MLFLOW_TRACKING_URI": champion.tracking_uri,
           "TAXI_PREDICTION_LOG": "off"}  # fmt: skip
    log = tmp_path / "server.log"
    proc, url = start_server(env, free_port(), tmp_path, log)
    try:
        _wait_ready(url, proc, log)
        served = requests.post(f"{url}/predict_batch", json={"quotes": quotes}, timeout=60)
        assert served.status_code == 200, served.text
        single = requests.post(f"{url}/predict", json=MIDTOWN_JFK, timeout=60).json()["fare_amount"]
    finally:
        _stop(proc)
    assert RELEASE_BANNER in log.read_text()  # the server ran the changed release's taxi_platform
    np.testing.assert_array_equal(served.json()["predictions"], np.round(fares, 2))
    assert single == round(float(fares[0]), 2)


def test_a_version_that_prices_differently_is_refused_with_its_versions(champion, tmp_path):
    local = Path(tmp_path / "model")
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    client = MlflowClient(tracking_uri=champion.tracking_uri, registry_uri=champion.tracking_uri)
    source = client.get_model_version_download_uri("taxi_fare_model", champion.version)
    shutil.copytree(download_artifacts(artifact_uri=source, tracking_uri=champion.tracking_uri), local)
    probes = local / "artifacts" / "probe_fares.json"
    record = json.loads(probes.read_text())
    record["fares"][3] += 0.01  # as if this environment priced one probe a cent away from validation
    probes.write_text(json.dumps(record))
    with pytest.raises(VersionMismatchError) as err:
        verify_version(load_version(str(local)), str(local), "taxi_fare_model v1")
    message = str(err.value)
    assert f"{CODE_TAG} {package_digest()}" in message and "features_version 1" in message
    assert "retrain its validation month" in message
