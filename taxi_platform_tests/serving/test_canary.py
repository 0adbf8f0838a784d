"""`taxi-platform compare-services`, rehearsed against live `bentoml serve` processes on loopback.

The stable service serves the sample champion. A good candidate is a second server of the same champion: it is
promoted. A bad candidate serves a registered version of the same model whose fares never go below $40 (a broken
release): the comparison rolls it back and says why (fares moved, distribution differs). The judge's rules have
unit tests of their own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from taxi_platform.devtools.loopback import free_port
from taxi_platform.serving import bento_build, bento_store
from taxi_platform.serving.canary import Limits, ServiceProbe, judge, ks_statistic, probe_quotes
from taxi_platform_tests.serving.test_service import _stop, _wait_ready, start_server
from taxi_platform_tests.support.registries import champion_model, register
from taxi_platform_tests.support.sample_champion import ensure_sample_champion

pytestmark = pytest.mark.slow


def _serve(data_dir: Path, tracking_uri: str, work: Path, name: str):
    env = {**os.environ, "TAXI_DATA_DIR": str(data_dir), "MLFLOW_TRACKING_URI": tracking_uri,
           "TAXI_PREDICTION_LOG": "off"}  # fmt: skip
    log = work / f"{name}.log"
    proc, url = start_server(env, free_port(), work, log)
    _wait_ready(url, proc, log)
    return proc, url


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    champion = ensure_sample_champion(tmp_path_factory.getbasetemp() / "sample-champion")
    work = tmp_path_factory.mktemp("canary")
    stable_dir, bad_dir = work / "stable", work / "bad"
    bad_dir.mkdir()
    bad_uri = register(bad_dir / "registry", [(champion_model(champion, min_fare=40.0), ["champion"])])
    for data_dir, uri in ((stable_dir, champion.tracking_uri), (bad_dir, bad_uri)):
        info = bento_build.champion_info(uri)
        bento_store.import_champion(data_dir / "bentoml", info, uri)
        bento_build.build_bento(data_dir / "bentoml", info)
    procs = []
    try:
        urls = {}
        for name, data_dir, uri in (("stable", stable_dir, champion.tracking_uri),
                                    ("good", stable_dir, champion.tracking_uri), ("bad", bad_dir, bad_uri)):  # fmt: skip
            proc, urls[name] = _serve(data_dir, uri, work, name)
            procs.append(proc)
        yield urls, work
    finally:
        for proc in procs:
            _stop(proc)


def _compare(a: str, b: str, out: Path) -> tuple[int, str, dict]:
    done = subprocess.run([sys.executable, "-m", "taxi_platform.cli", "compare-services", a, b, "--probes", "60",
                           "--json", str(out)], capture_output=True, text=True, timeout=300)  # fmt: skip
    return done.returncode, done.stdout + done.stderr, json.loads(out.read_text()) if out.exists() else {}


def test_a_good_candidate_is_promoted(services):
    urls, work = services
    code, out, verdict = _compare(urls["stable"], urls["good"], work / "good.json")
    assert code == 0, out
    assert "PROMOTE" in out and verdict["promote"] and verdict["reasons"] == []
    assert verdict["figures"]["median_fare_change"] == 0.0 and verdict["figures"]["priced_by_both"] == 60


def test_a_bad_candidate_is_rolled_back_with_reasons(services):
    urls, work = services
    code, out, verdict = _compare(urls["stable"], urls["bad"], work / "bad.json")
    assert code == 1, out
    assert "ROLL BACK" in out and not verdict["promote"]
    assert any("quoted fares moved" in r for r in verdict["reasons"]), verdict
    assert any("fare distribution differs" in r for r in verdict["reasons"]), verdict
    assert verdict["figures"]["candidate_mean_fare"] >= 40.0


def test_an_unreachable_candidate_is_rolled_back(services):
    urls, work = services
    code, out, verdict = _compare(urls["stable"], f"http://127.0.0.1:{free_port()}", work / "down.json")
    assert code == 1 and "error rate 100.00%" in out, out


def _probe(fares, statuses=None, latencies=None) -> ServiceProbe:
    n = len(fares)
    return ServiceProbe(url="x", statuses=statuses or [200] * n, latencies_ms=latencies or [5.0] * n,
                        fares=list(fares), batch_status=200, batch_fares=[f for f in fares if f is not None])  # fmt: skip


def test_judge_limits():
    base = [10.0 + i for i in range(50)]
    assert judge(_probe(base), _probe(base)).promote
    slower = judge(_probe(base), _probe(base, latencies=[5.0] * 49 + [200.0]))
    assert not slower.promote and "p99" in slower.reasons[0]
    errors = judge(_probe(base), _probe(base[:45] + [None] * 5, statuses=[200] * 45 + [500] * 5))
    assert not errors.promote and "error rate" in errors.reasons[0]
    shifted = judge(_probe(base), _probe([f * 1.05 for f in base]), Limits(max_median_fare_change=0.10))
    assert shifted.promote  # 5 % within a 10 % limit
    assert ks_statistic([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 0.0
    assert ks_statistic([1.0, 2.0], [3.0, 4.0]) == 1.0


def test_probe_quotes_are_fixed_and_valid():
    a, b = probe_quotes(50), probe_quotes(50)
    assert a == b and len({q["pickup_zone"] for q in a}) > 5
    assert {q["service"] for q in probe_quotes(10, services=("yellow",))} == {"yellow"}
