"""The shadow challenger: a Bento that serves the champion and prices every request with the challenger too.

A registry holds the sample champion (alias ``champion``) and a challenger that never quotes below $40 (alias
``challenger``). ``build_champion_bento`` packages both; a live ``taxi-platform serve`` answers with the champion's
fares while the prediction log gets, for each request, a ``shadow`` record with the same server request id and the
challenger's fares. Those quotes, read back as ``served_quotes`` and scored against the month's realised trips, give
the champion's and the challenger's MAE on the same quotes; the verdict fails the challenger.

The challenger prices in a shadow process of each worker's own: a second live server checks that a full channel
drops (and counts) shadow records without touching the served ones, that a killed shadow process leaves quotes
working and is restarted, and that the shadow process ends with its worker.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import duckdb
import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
import requests

from taxi_platform.devtools.loopback import free_port
from taxi_platform.monitoring.prediction_log_reader import read_log
from taxi_platform.monitoring.served_quotes import quote_accuracy, shadow_verdict
from taxi_platform.serving import bento_build
from taxi_platform.serving.prediction_log import read_prediction_log
from taxi_platform.serving.shadow import CHILD_MODULE
from taxi_platform_tests.serving.test_service import _stop, _wait_ready, start_server
from taxi_platform_tests.support.registries import champion_model, register
from taxi_platform_tests.support.sample_champion import (
    VALIDATION_MONTH,
    build_sample_lake,
    ensure_sample_champion,
)

pytestmark = pytest.mark.slow
MONTH = VALIDATION_MONTH.strftime("%Y-%m")
QUOTES = 300


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    return build_sample_lake(tmp_path_factory.mktemp("shadow-lake"), months=(VALIDATION_MONTH,))


@pytest.fixture(scope="module")
def quotes(lake) -> list[dict]:
    """Quotes for trips that were realised in the month (so every quote has a realised cell)."""
    rows = duckdb.sql(
        f"SELECT strftime(pickup_datetime, '%Y-%m-%dT%H:%M:%S') AS t, pickup_zone, dropoff_zone, "
        f"CAST(service AS VARCHAR) AS s FROM read_parquet('{lake.partition_glob('trip_features', MONTH + '-01')}') "
        f"WHERE pickup_zone NOT IN (264, 265) AND dropoff_zone NOT IN (264, 265) ORDER BY hash(pickup_datetime) "
        f"LIMIT {QUOTES}"
    ).fetchall()
    return [{"pickup_datetime": t, "pickup_zone": pu, "dropoff_zone": do, "passenger_count": 1, "service": s}
            for t, pu, do, s in rows]  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory, quotes):
    champion = ensure_sample_champion(tmp_path_factory.getbasetemp() / "sample-champion")
    work = tmp_path_factory.mktemp("shadow")
    good, bad = champion_model(champion), champion_model(champion, min_fare=40.0)
    uri = register(work / "registry", [(good, ["champion"]), (bad, ["challenger"])])
    data = work / "data"
    _, _, build = bento_build.build_champion_bento(data / "bentoml", uri)
    env = {
        **os.environ,
        "TAXI_DATA_DIR": str(data),
        "MLFLOW_TRACKING_URI": uri,
        "TAXI_PREDICTION_LOG": "file",
    }
    log = work / "server.log"
    proc, url = start_server(env, free_port(), work, log)
    try:
        _wait_ready(url, proc, log)
        singles = [requests.post(f"{url}/predict", json=q, timeout=30) for q in quotes[:20]]
        batch = requests.post(f"{url}/predict_batch", json={"quotes": quotes[20:]}, timeout=60)
    finally:
        _stop(proc)  # SIGTERM: the shadow's queue and the log are flushed on shutdown
    yield {"build": build, "singles": singles, "batch": batch, "data": data, "good": good, "bad": bad,
           "log": log, "uri": uri, "env": env}  # fmt: skip


def _records(data: Path) -> list[dict]:
    return list(read_prediction_log(data / "predictions"))


def test_the_bento_packages_the_challenger_as_a_shadow(served):
    build = served["build"]
    assert build.shadow_tag and build.shadow_tag != build.model_tag
    assert build.shadow_tag in bento_build.bento_models(build.path)


def test_riders_get_the_champions_fares_and_the_log_has_both(served, quotes):
    singles, batch = served["singles"], served["batch"]
    assert all(r.status_code == 200 for r in singles) and batch.status_code == 200
    cols = {k: np.asarray([q[k] for q in quotes]) for k in quotes[0]}
    champion = np.round(served["good"].predict_quotes(cols), 2)
    challenger = np.round(served["bad"].predict_quotes(cols), 2)
    answered = [r.json()["fare_amount"] for r in singles] + batch.json()["predictions"]
    np.testing.assert_allclose(answered, champion, atol=0.005)
    assert (champion < 40).any() and (challenger >= 40).all()
    records = _records(served["data"])
    by_role: dict[str, dict[tuple, float]] = {"served": {}, "shadow": {}}
    for r in records:
        by_role[r["role"]][(r["request_id"], r["index"])] = r["fare_amount"]
    assert len(by_role["served"]) == len(by_role["shadow"]) == QUOTES
    assert by_role["served"].keys() == by_role["shadow"].keys()  # same server ids, same indexes
    shadow_versions = {r["model_version"] for r in records if r["role"] == "shadow"}
    served_versions = {r["model_version"] for r in records if r["role"] == "served"}
    assert shadow_versions == {"2"} and served_versions == {"1"}
    order = sorted(by_role["served"])  # request ids sort in request order (counter), indexes within
    assert sorted(by_role["shadow"].values()) == sorted(challenger.tolist())
    assert sorted(by_role["served"][k] for k in order) == sorted(champion.tolist())
    # The challenger's lines come from the worker's shadow process: a file (pid) of their own.
    roles = {p.name: {json.loads(x).get("role", "served") for x in p.read_text().splitlines()}
             for p in (served["data"] / "predictions").glob("predictions-*.jsonl")}  # fmt: skip
    assert sorted(roles.values(), key=sorted) == [{"served"}, {"shadow"}], roles


def test_shadow_quotes_are_scored_beside_the_served_ones(served, lake, tmp_path):
    columns, stats = read_log(str(served["data"] / "predictions"), MONTH)
    assert len(columns) == 2 * QUOTES and stats["duplicate_quotes"] == 0
    dest = tmp_path / "served_quotes.parquet"
    pq.write_table(columns.table(), dest)
    report = quote_accuracy(lake, str(dest), lake.partition_glob("trip_features", MONTH + "-01"), MONTH)
    assert report["quotes"] == QUOTES and report["model_versions"] == {"1": QUOTES}  # the riders' quotes only
    shadow = report["shadow"]
    assert shadow["shadow_quotes"] == QUOTES and shadow["challenger_versions"] == {"2": QUOTES}
    assert shadow["compared_quotes"] == report["matched_quotes"] == QUOTES
    assert shadow["champion_mae_vs_realised_mean"] == pytest.approx(report["mae_vs_realised_mean"], abs=1e-4)
    assert shadow["challenger_mae_vs_realised_mean"] > shadow["champion_mae_vs_realised_mean"] + 10
    assert shadow_verdict(shadow, tolerance=0.01, min_quotes=100) == "fail"
    assert shadow_verdict(shadow, tolerance=0.01, min_quotes=QUOTES + 1) is None
    swapped = {**shadow, "champion_mae_vs_realised_mean": shadow["challenger_mae_vs_realised_mean"] + 1}
    assert shadow_verdict(swapped, tolerance=0.01, min_quotes=100) == "pass"
    json.dumps(report)  # the report stays JSON


def test_without_a_challenger_there_is_no_shadow(tmp_path_factory):
    champion = ensure_sample_champion(tmp_path_factory.getbasetemp() / "sample-champion")
    root = tmp_path_factory.mktemp("no-shadow")
    uri = register(root / "registry", [(champion_model(champion), ["champion", "challenger"])])
    info = bento_build.champion_info(uri)
    assert bento_build.shadow_challenger(uri, info) is None
    started = time.perf_counter()
    _, _, build = bento_build.build_champion_bento(root / "bentoml", uri)
    assert build.shadow_tag is None and len(bento_build.bento_models(build.path)) == 1
    assert time.perf_counter() - started < 300


# --- the shadow process, on a second live server ----------------------------------------------------------------


def _shadow_processes(server: int) -> list[psutil.Process]:
    """The live shadow processes under the server process ``server``."""
    found = []
    for p in psutil.Process(server).children(recursive=True):
        try:
            if CHILD_MODULE in p.cmdline() and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


def _one_shadow(server: int, other_than: int | None = None, timeout: float = 60) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in _shadow_processes(server) if p.pid != other_than]
        if len(found) == 1:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"no single shadow process under {server}: {_shadow_processes(server)}")


def _gone(proc: psutil.Process, timeout: float) -> bool:
    """Whether ``proc`` has exited (reaped, or a zombie its parent has not reaped yet) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def _dropped(url: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=30).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("taxi_fare_shadow_dropped_total"))  # fmt: skip


def _roles_of(logs: Path, ids: set[str], timeout: float, want: int) -> dict[str, set[str]]:
    """``{role: request ids}`` among ``ids`` in the log, once ``want`` shadow records are in (or at timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        found: dict[str, set[str]] = {"served": set(), "shadow": set()}
        for r in read_prediction_log(logs) if logs.is_dir() else []:
            if r["request_id"] in ids:
                found[r["role"]].add(r["request_id"])
        if len(found["shadow"]) >= want or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


@pytest.fixture(scope="module")
def live(served, tmp_path_factory):
    """The same Bento served again, its prediction log in a folder of its own; stopped after the tests."""
    work = tmp_path_factory.mktemp("live")
    env = {**served["env"], "TAXI_PREDICTION_LOG_PATH": str(work / "predictions")}
    proc, url = start_server(env, free_port(), work, work / "server.log")
    try:
        _wait_ready(url, proc, work / "server.log")
        yield {"proc": proc, "url": url, "logs": work / "predictions"}
    finally:
        _stop(proc)


def test_a_full_channel_drops_shadow_records_and_counts_them(live, quotes):
    url, server = live["url"], live["proc"].pid
    shadow = _one_shadow(server)
    before = _dropped(url)
    big = {"quotes": (quotes * 34)[:10_000]}  # ~190 kB pickled: a 1 MiB pipe holds five
    shadow.suspend()  # the shadow stops reading: the pipe fills
    try:
        ids = set()
        for _ in range(8):
            r = requests.post(f"{url}/predict_batch", json=big, timeout=120)
            assert r.status_code == 200 and len(r.json()["predictions"]) == 10_000
            ids.add(r.headers["X-Quote-ID"])
    finally:
        shadow.resume()
    dropped = _dropped(url) - before
    assert 1 <= dropped <= 7
    found = _roles_of(live["logs"], ids, timeout=240, want=8 - int(dropped))
    assert found["served"] == ids  # every served request logged
    assert len(found["shadow"]) == 8 - dropped  # every request not dropped priced by the shadow


def test_a_dead_shadow_process_leaves_quotes_working_and_counted(live, quotes, served):
    url, server = live["url"], live["proc"].pid
    shadow = _one_shadow(server)
    shadow.kill()
    assert _gone(shadow, 30)
    before = _dropped(url)
    cols = {k: np.asarray([q[k] for q in quotes[:5]]) for k in quotes[0]}
    answers = [requests.post(f"{url}/predict", json=q, timeout=30) for q in quotes[:5]]
    assert [r.status_code for r in answers] == [200] * 5
    np.testing.assert_allclose([r.json()["fare_amount"] for r in answers],
                               np.round(served["good"].predict_quotes(cols), 2), atol=0.005)  # fmt: skip
    assert _dropped(url) - before >= 1  # at least the first request after the death: the broken pipe
    time.sleep(1.5)  # past the first restart backoff (1 s): the next request starts a new shadow process
    later = requests.post(f"{url}/predict", json=quotes[5], timeout=30)
    assert later.status_code == 200
    assert _one_shadow(server, other_than=shadow.pid).pid != shadow.pid
    quote_id = later.headers["X-Quote-ID"]
    found = _roles_of(live["logs"], {quote_id}, timeout=240, want=1)
    assert found["shadow"] == {quote_id}


def test_the_shadow_process_ends_with_its_worker(live):
    shadow = _one_shadow(live["proc"].pid)
    worker = psutil.Process(shadow.ppid())
    assert CHILD_MODULE not in worker.cmdline()
    os.kill(worker.pid, signal.SIGKILL)  # no shutdown hook: the shadow sees the pipe's end of file
    assert _gone(shadow, 60)
