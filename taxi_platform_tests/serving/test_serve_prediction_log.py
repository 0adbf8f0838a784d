"""Where a served Bento logs its quotes, and under whose id — with a real ``taxi-platform serve`` /
``bentoml serve``.

Today's main: started without ``TAXI_DATA_DIR`` from a project folder, ``taxi-platform serve`` logged into
``.data/bentoml/bentos/taxi_fare_service/<version>/src/.data/predictions/`` (inside the Bento) while
``served_quotes`` read ``.data/predictions`` and found nothing; and two ``/predict`` calls with the same
``X-Request-ID`` left one quote in monitoring (``duplicate_quotes: 1``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from taxi_platform.devtools.loopback import free_port
from taxi_platform.monitoring.prediction_log_reader import read_log
from taxi_platform.serving import bento_build, bento_store
from taxi_platform.serving.quotes import EXAMPLE_QUOTE
from taxi_platform_tests.serving.test_service import _stop, _wait_ready, start_server
from taxi_platform_tests.support.sample_champion import ensure_sample_champion

pytestmark = pytest.mark.slow

LOG_VARIABLES = ("TAXI_DATA_DIR", "TAXI_PREDICTION_LOG_PATH", "TAXI_LAKE_ROOT", "BENTOML_HOME")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project folder with the champion's Bento in its default store (``.data/bentoml``), and the
    environment of a user who set none of the data variables."""
    champion = ensure_sample_champion(tmp_path_factory.getbasetemp() / "sample-champion")
    folder = tmp_path_factory.mktemp("project")
    home = folder / ".data" / "bentoml"
    info = bento_build.champion_info(champion.tracking_uri)
    bento_store.import_champion(home, info, champion.tracking_uri)
    build = bento_build.build_bento(home, info)
    env = {k: v for k, v in os.environ.items() if k not in LOG_VARIABLES}
    env.update(MLFLOW_TRACKING_URI=champion.tracking_uri, TAXI_PREDICTION_LOG="file")
    return folder, env, build


def monitoring_log_path(env: dict, cwd: Path) -> Path:
    """Where ``served_quotes`` reads the log when run from ``cwd`` with ``env`` (its default, from settings)."""
    code = "from taxi_platform.core.settings import load_settings; print(load_settings().prediction_log_path)"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True, check=True
    )
    return Path(out.stdout.strip())


def test_serve_logs_where_monitoring_reads_under_the_servers_quote_ids(project):
    folder, env, build = project
    log = folder / "server.log"
    proc, url = start_server(env, free_port(), folder, log)
    quotes = [EXAMPLE_QUOTE, {**EXAMPLE_QUOTE, "pickup_zone": 1, "dropoff_zone": 138}]
    try:
        _wait_ready(url, proc, log)
        answers = [
            requests.post(f"{url}/predict", json=q, headers={"X-Request-ID": "same-id"}, timeout=30)
            for q in quotes
        ]
        batch = requests.post(f"{url}/predict_batch", json={"quotes": quotes}, headers={"X-Request-ID": "same-id"},
                              timeout=30)  # fmt: skip
        plain = requests.post(f"{url}/predict", json=EXAMPLE_QUOTE, timeout=30)
        assert all(r.status_code == 200 for r in [*answers, batch, plain])
        source = monitoring_log_path(env, folder)
        assert source == folder / ".data" / "predictions"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            columns, stats = read_log(str(source), "2024-03")
            if len(columns) >= 5:
                break
            time.sleep(0.3)
    finally:
        _stop(proc)
    table = columns.table()
    assert len(table) == 5 and stats["duplicate_quotes"] == 0, (stats, log.read_text()[-2000:])
    fares = (
        [r.json()["fare_amount"] for r in answers]
        + batch.json()["predictions"]
        + [plain.json()["fare_amount"]]
    )
    assert table["fare_amount"].to_pylist() == fares
    assert table["client_request_id"].to_pylist() == ["same-id"] * 4 + [None]
    server_ids = table["request_id"].to_pylist()
    assert len(set(server_ids[:2] + server_ids[2:3] + server_ids[4:])) == 4  # one id per request
    assert server_ids[2] == server_ids[3] and table["index"].to_pylist()[2:4] == [0, 1]
    # The client's id is echoed; the server's names the logged quotes.
    assert [r.headers["x-request-id"] for r in answers] == ["same-id", "same-id"]
    assert [r.headers["x-quote-id"] for r in answers] == server_ids[:2]
    assert plain.headers["x-request-id"] == plain.headers["x-quote-id"] == server_ids[4]
    assert not list(build.path.rglob("predictions*")), "the server wrote into the Bento"


def test_bentoml_serve_refuses_to_log_inside_the_bento(project, tmp_path):
    """``bentoml serve <tag>`` runs from the Bento's folder: with a relative TAXI_DATA_DIR the file log would land
    in the Bento, so the service does not start and says what to set."""
    folder, env, build = project
    env = {**env, "TAXI_DATA_DIR": ".data", "BENTOML_HOME": str(folder / ".data" / "bentoml")}
    log = tmp_path / "bentoml.log"
    cmd = [*bento_store.bentoml_cli(), "serve", build.tag, "--host", "127.0.0.1", "--port", str(free_port())]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "would be written inside the Bento" not in log.read_text():
            assert proc.poll() is None or "would be written inside the Bento" in log.read_text(), (
                log.read_text()
            )
            time.sleep(0.5)
    finally:
        _stop(proc)
    assert "set TAXI_DATA_DIR or TAXI_PREDICTION_LOG_PATH to an absolute directory" in log.read_text()
    assert not list(build.path.rglob("predictions*")), "the server wrote into the Bento"
