"""The fare-quote Bento, served for real: ``taxi-platform serve`` → ``bentoml serve`` on a loopback port.

A small model is trained on synthetic months, registered as ``champion`` (sqlite MLflow registry), imported
into a temporary BentoML store and built into a Bento with the platform's own build code. The tests call the
running server with ``bentoml.SyncHTTPClient`` and with raw HTTP, compare its fares with the pyfunc's own
predictions, check health/metrics/OpenAPI, every kind of bad input, the prediction log, and let
schemathesis fuzz the OpenAPI contract looking for server errors.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests

from taxi_platform.devtools.loopback import NotReady, free_port, wait_http_ok
from taxi_platform.serving import bento_build, bento_store
from taxi_platform.serving.prediction_log import read_prediction_log
from taxi_platform.serving.quote_limits import MAX_BATCH_SIZE
from taxi_platform.serving.quotes import EXAMPLE_QUOTE, ITEM_NAMES
from taxi_platform_tests.support.sample_champion import (
    Champion,
    ensure_sample_champion,
    predict_in_subprocess,
)

pytestmark = pytest.mark.slow

READY_TIMEOUT = 180


@dataclass
class Served:
    url: str
    champion: Champion
    data_dir: Path
    bento_tag: str
    log: Path


def test_quotes(n: int = 40, seed: int = 5) -> list[dict]:
    """Varied valid quotes: both services, airports, night/rush hours, weekends, 0-6 passengers."""
    rng = np.random.default_rng(seed)
    times = np.datetime64("2024-01-01T00:00") + rng.integers(0, 366 * 1440, n).astype("timedelta64[m]")
    out = [
        {
            "pickup_datetime": str(times[i]) + ":00",
            "pickup_zone": int(rng.integers(1, 264)),
            "dropoff_zone": int(rng.integers(1, 264)),
            "passenger_count": int(rng.integers(0, 7)),
            "service": "green" if i % 4 == 0 else "yellow",
        }
        for i in range(n)
    ]
    out[0] = dict(EXAMPLE_QUOTE)  # JFK -> Manhattan (flat fare)
    out[1] = {
        **EXAMPLE_QUOTE,
        "pickup_zone": 138,
        "dropoff_zone": 138,
        "pickup_datetime": "2024-06-08T23:30:00",
    }
    return out


test_quotes.__test__ = False  # a helper, not a test


def _wait_ready(url: str, proc: subprocess.Popen, log: Path) -> None:
    try:
        wait_http_ok(f"{url}/readyz", proc, READY_TIMEOUT)
    except NotReady as exc:
        if exc.returncode is not None:
            raise RuntimeError(f"server exited with {exc.returncode}:\n{log.read_text()[-4000:]}") from None
        raise RuntimeError(
            f"{url}/readyz not ready after {READY_TIMEOUT}s:\n{log.read_text()[-4000:]}"
        ) from None


def start_server(env: dict[str, str], port: int, cwd: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """`taxi-platform serve` with one worker on 127.0.0.1:port, in its own process group, output to ``log``."""
    env = {k: v for k, v in env.items() if k != "BENTOML_CONFIG_OPTIONS"}
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "taxi_platform.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
            + ["--workers", "1"],
            env=env,
            cwd=cwd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc, f"http://127.0.0.1:{port}"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group (start_new_session)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Served:
    champion = ensure_sample_champion(tmp_path_factory.getbasetemp() / "sample-champion")
    work = tmp_path_factory.mktemp("served")
    data_dir = work / "data"
    home = data_dir / "bentoml"
    info = bento_build.champion_info(champion.tracking_uri)
    assert info.version == champion.version
    bento_store.import_champion(home, info, champion.tracking_uri)
    build = bento_build.build_bento(home, info)
    port = free_port()
    log = work / "server.log"
    env = {
        **os.environ,
        "TAXI_DATA_DIR": str(data_dir),
        "MLFLOW_TRACKING_URI": champion.tracking_uri,
        "TAXI_PREDICTION_LOG": "file",
    }
    proc, url = start_server(env, port, work, log)
    try:
        _wait_ready(url, proc, log)
        yield Served(url=url, champion=champion, data_dir=data_dir, bento_tag=build.tag, log=log)
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def expected(served, tmp_path_factory) -> tuple[list[dict], list[float]]:
    quotes = test_quotes()
    fares = predict_in_subprocess(served.champion, quotes, tmp_path_factory.mktemp("pyfunc"))
    return quotes, [round(f, 2) for f in fares]


def post(served: Served, path: str, body, **kw) -> requests.Response:
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    headers = kw.pop("headers", {"Content-Type": "application/json"})
    return requests.post(f"{served.url}{path}", data=data, headers=headers, timeout=30, **kw)


# --- correct answers -------------------------------------------------------------------------------------------


def test_serves_the_built_bento_of_the_champion(served):
    assert served.bento_tag.startswith(f"taxi_fare_service:v{served.champion.version}-")
    assert f"Bento {served.bento_tag}" in served.log.read_text()


def test_single_quotes_match_the_pyfunc_over_raw_http(served, expected):
    quotes, fares = expected
    for q, fare in zip(quotes, fares, strict=True):
        resp = post(served, "/predict", q)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        low, high = body.pop("fare_low"), body.pop("fare_high")
        items, total = body.pop("items"), body.pop("total_before_tip")
        total_low, total_high = body.pop("total_low"), body.pop("total_high")
        assert body == {"fare_amount": fare, "currency": "USD", "model_version": served.champion.version}
        assert 3.0 <= low <= fare <= high and high > low  # the calibrated fare range
        # itemised: the card's charges and the expected tolls add up to the total before the tip, to the cent
        assert sorted(items) == sorted(ITEM_NAMES) and all(v >= 0 for v in items.values())
        assert round(fare * 100) + sum(round(v * 100) for v in items.values()) == round(total * 100)
        assert round(total_low - low, 2) == round(total - fare, 2) == round(total_high - high, 2)
        assert items["improvement_surcharge"] == 1.0 and items["mta_tax"] in (0.0, 0.5)
        assert resp.headers["content-type"] == "application/json"


def test_sync_client_single_and_batch(served, expected):
    import bentoml

    quotes, fares = expected
    with bentoml.SyncHTTPClient(served.url, timeout=30) as client:
        assert client.is_ready()
        single = client.predict(quotes[0])
        batch = client.predict_batch({"quotes": quotes})
    keys = ("fare_low", "fare_high", "total_before_tip", "total_low", "total_high")
    ranges = {k: (single.pop(k), batch.pop(k)) for k in keys}
    items = (single.pop("items"), batch.pop("items"))
    assert {k: v[0] for k, v in items[1].items()} == items[0]  # the client reads the itemised answers
    assert ranges["total_before_tip"][0] == ranges["total_before_tip"][1][0]
    assert single == {"fare_amount": fares[0], "currency": "USD", "model_version": served.champion.version}
    assert batch == {"predictions": fares, "currency": "USD", "model_version": served.champion.version}
    assert (
        ranges["fare_low"][0] == ranges["fare_low"][1][0]
        and ranges["fare_high"][0] == ranges["fare_high"][1][0]
    )
    assert all(
        lo <= f <= hi for lo, f, hi in zip(ranges["fare_low"][1], fares, ranges["fare_high"][1], strict=True)
    )


def test_batch_equals_singles_in_order(served, expected):
    quotes, fares = expected
    singles = [post(served, "/predict", q).json()["fare_amount"] for q in reversed(quotes)]
    batch = post(served, "/predict_batch", {"quotes": list(reversed(quotes))}).json()["predictions"]
    assert batch == singles == list(reversed(fares))
    single_ranges = [post(served, "/predict", q).json() for q in quotes[:5]]
    batch_body = post(served, "/predict_batch", {"quotes": quotes[:5]}).json()
    assert batch_body["fare_low"] == [b["fare_low"] for b in single_ranges]
    assert batch_body["fare_high"] == [b["fare_high"] for b in single_ranges]
    for name in ITEM_NAMES:  # the batch's items, per item in quote order, are the singles' items
        assert batch_body["items"][name] == [b["items"][name] for b in single_ranges], name
    for key in ("total_before_tip", "total_low", "total_high"):
        assert batch_body[key] == [b[key] for b in single_ranges], key
    big = post(served, "/predict_batch", {"quotes": quotes * 60}).json()["predictions"]  # 2400: threaded path
    assert big == fares * 60
    assert post(served, "/predict_batch", {"quotes": []}).json()["predictions"] == []


def test_concurrent_singles_priced_together_get_their_own_fares(served, expected):
    from concurrent.futures import ThreadPoolExecutor

    quotes, fares = expected
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda q: post(served, "/predict", q).json()["fare_amount"], quotes * 3))
    assert got == fares * 3


def test_request_ids_are_echoed_and_unique(served):
    given = post(
        served,
        "/predict",
        EXAMPLE_QUOTE,
        headers={"Content-Type": "application/json", "X-Request-ID": "abc-123"},
    )
    assert given.headers["x-request-id"] == "abc-123"
    ids = {post(served, "/predict", EXAMPLE_QUOTE).headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5


# --- health, metrics, docs -------------------------------------------------------------------------------------


def test_health_endpoints(served):
    for path in ("/livez", "/readyz", "/healthz"):
        assert requests.get(f"{served.url}{path}", timeout=10).status_code == 200, path


def test_metrics_count_requests_and_quotes(served):
    post(served, "/predict", EXAMPLE_QUOTE)
    post(served, "/predict_batch", {"quotes": [EXAMPLE_QUOTE] * 7})
    text = requests.get(f"{served.url}/metrics", timeout=10).text

    def value(prefix: str) -> float:
        lines = [ln for ln in text.splitlines() if ln.startswith(prefix)]
        assert lines, f"no metric {prefix} in /metrics"
        return float(lines[0].rsplit(" ", 1)[1])

    assert value('taxi_fare_quotes_priced_total{endpoint="predict"}') >= 1
    assert value('taxi_fare_quotes_priced_total{endpoint="predict_batch"}') >= 7
    assert 'bentoml_service_request_duration_seconds_count{endpoint="/predict"' in text
    assert value("taxi_fare_prediction_log_dropped_total") == 0


def test_openapi_documents_the_contract(served):
    spec = requests.get(f"{served.url}/docs.json", timeout=10).json()
    assert {"/predict", "/predict_batch", "/readyz", "/livez", "/metrics"} <= set(spec["paths"])
    quote = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(quote["required"]) == set(EXAMPLE_QUOTE)
    assert quote["properties"]["service"]["enum"] == ["yellow", "green"]
    assert quote["properties"]["pickup_zone"]["maximum"] == 263
    batch = spec["paths"]["/predict_batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert batch["properties"]["quotes"]["maxItems"] == MAX_BATCH_SIZE
    out = spec["paths"]["/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert set(out["properties"]) == {
        "fare_amount", "fare_low", "fare_high", "items", "total_before_tip", "total_low", "total_high",
        "currency", "model_version",
    }  # fmt: skip
    assert "calibrated range" in out["properties"]["fare_low"]["description"]
    assert "before the tip" in out["properties"]["total_before_tip"]["description"]
    items = spec["components"]["schemas"]["FareItems"]
    assert set(items["properties"]) == set(ITEM_NAMES)
    assert "60th Street" in items["properties"]["cbd_congestion_fee"]["description"]
    batch_out = spec["paths"]["/predict_batch"]["post"]["responses"]["200"]["content"]["application/json"][
        "schema"
    ]
    assert {"predictions", "fare_low", "fare_high", "items", "total_before_tip"} <= set(
        batch_out["properties"]
    )


# --- bad input: 4xx with the reason, never 5xx -----------------------------------------------------------------

BAD_SINGLES = [
    ({**EXAMPLE_QUOTE, "pickup_zone": 264}, ["pickup_zone"], "'Unknown' pseudo-zone"),
    ({**EXAMPLE_QUOTE, "dropoff_zone": 265}, ["dropoff_zone"], "'Outside of NYC' pseudo-zone"),
    ({**EXAMPLE_QUOTE, "pickup_zone": 0}, ["pickup_zone"], "not a TLC LocationID"),
    ({**EXAMPLE_QUOTE, "pickup_zone": "132"}, ["pickup_zone"], "valid integer"),
    ({**EXAMPLE_QUOTE, "passenger_count": 12}, ["passenger_count"], "expected an integer 0..9"),
    ({**EXAMPLE_QUOTE, "passenger_count": -1}, ["passenger_count"], "expected an integer 0..9"),
    ({**EXAMPLE_QUOTE, "passenger_count": 2.5}, ["passenger_count"], "valid integer"),
    ({**EXAMPLE_QUOTE, "service": "fhv"}, ["service"], "'yellow' or 'green'"),
    ({**EXAMPLE_QUOTE, "pickup_datetime": "2008-06-01T10:00:00"}, ["pickup_datetime"], "before 2009-01-01"),
    ({**EXAMPLE_QUOTE, "pickup_datetime": "2199-06-01T10:00:00"}, ["pickup_datetime"], "days ahead"),
    ({**EXAMPLE_QUOTE, "pickup_datetime": "yesterday"}, ["pickup_datetime"], "not an ISO-8601 date and time"),
    ({**EXAMPLE_QUOTE, "pickup_datetime": 1709626500}, ["pickup_datetime"], "must be an ISO-8601 string"),
    ({**EXAMPLE_QUOTE, "tip": 5}, ["tip"], "Extra inputs are not permitted"),
    ({k: v for k, v in EXAMPLE_QUOTE.items() if k != "service"}, ["service"], "Field required"),
]


@pytest.mark.parametrize(
    ("body", "loc", "needle"), BAD_SINGLES, ids=[f"{b[1][0]}-{i}" for i, b in enumerate(BAD_SINGLES)]
)
def test_bad_quote_is_400_with_reason(served, body, loc, needle):
    resp = post(served, "/predict", body)
    assert resp.status_code == 400, resp.text
    detail = resp.json()["detail"]
    assert [d["loc"] for d in detail] == [loc]
    assert needle in detail[0]["msg"]


@pytest.mark.parametrize(
    ("raw", "needle"),
    [("{not json", "Invalid JSON"), ("", "Field required"), ("[1, 2]", "Input should be an object"), ("null", "Input should be an object"),
     ('"quote"', "Input should be an object")],
)  # fmt: skip
def test_malformed_bodies_are_400(served, raw, needle):
    resp = post(served, "/predict", raw)
    assert resp.status_code == 400, resp.text
    assert needle in json.dumps(resp.json())


def test_bad_quote_inside_a_batch_names_its_index(served):
    quotes = [EXAMPLE_QUOTE] * 5 + [{**EXAMPLE_QUOTE, "pickup_zone": 264}]
    resp = post(served, "/predict_batch", {"quotes": quotes})
    assert resp.status_code == 400
    assert [d["loc"] for d in resp.json()["detail"]] == [["quotes", 5, "pickup_zone"]]


def test_batch_over_the_cap_is_400(served):
    resp = post(served, "/predict_batch", {"quotes": [EXAMPLE_QUOTE] * (MAX_BATCH_SIZE + 1)})
    assert resp.status_code == 400
    assert f"at most {MAX_BATCH_SIZE}" in resp.json()["detail"][0]["msg"]


def test_wrong_content_type_is_415_and_huge_body_413(served):
    form = requests.post(f"{served.url}/predict", data=EXAMPLE_QUOTE, timeout=10)  # form-encoded
    assert form.status_code == 415
    assert "send application/json" in form.json()["error"]
    huge = post(served, "/predict_batch", b'{"quotes": [' + b" " * (9 * 1024 * 1024) + b"]}")
    assert huge.status_code == 413
    assert "split the batch" in huge.json()["error"]

    def chunks():
        yield b'{"quotes": ['
        for _ in range(10):
            yield b" " * (1024 * 1024)
        yield b"]}"

    chunked = requests.post(
        f"{served.url}/predict_batch", data=chunks(), headers={"Content-Type": "application/json"}, timeout=30
    )
    assert chunked.status_code == 411  # refused before a byte of an unknown-size body is read
    assert "Content-Length" in chunked.json()["error"]


def test_wrong_method_and_path_are_4xx(served):
    assert requests.get(f"{served.url}/predict", timeout=10).status_code == 405
    assert post(served, "/nope", EXAMPLE_QUOTE).status_code == 404


def test_server_is_still_healthy_after_bad_input(served, expected):
    quotes, fares = expected
    assert post(served, "/predict", quotes[3]).json()["fare_amount"] == fares[3]
    assert "Traceback" not in served.log.read_text()


# --- prediction log ---------------------------------------------------------------------------------------------


def test_prediction_log_has_one_line_per_priced_quote(served):
    rid = f"log-check-{time.time_ns()}"
    batch = [EXAMPLE_QUOTE, {**EXAMPLE_QUOTE, "service": "green", "passenger_count": 3}]
    fares = post(
        served,
        "/predict_batch",
        {"quotes": batch},
        headers={"Content-Type": "application/json", "X-Request-ID": rid},
    ).json()["predictions"]
    directory = served.data_dir / "predictions"
    deadline = time.monotonic() + 15
    rows: list[dict] = []
    while time.monotonic() < deadline:
        rows = (
            [r for r in read_prediction_log(directory) if r["client_request_id"] == rid]
            if directory.exists()
            else []
        )
        if len(rows) == 2:
            break
        time.sleep(0.2)
    assert [r["fare_amount"] for r in rows] == fares
    assert [r["index"] for r in rows] == [0, 1]
    assert rows[1]["service"] == "green" and rows[1]["passenger_count"] == 3
    assert {r["model_version"] for r in rows} == {served.champion.version}
    assert {r["endpoint"] for r in rows} == {"predict_batch"}


# --- fuzzing ----------------------------------------------------------------------------------------------------


def test_schemathesis_finds_no_server_errors(served, tmp_path):
    exe = Path(sys.executable).with_name("schemathesis")
    cmd = [
        str(exe),
        "run",
        f"{served.url}/docs.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        "40",
        "--phases",
        "examples,coverage,fuzzing",
        "--seed",
        "20240305",
        "--generation-database",
        "none",
        "--request-timeout",
        "20",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert "/predict" in out and "passed" in out
    assert "Traceback" not in served.log.read_text()
