"""Fault matrix, serving cases (issue #29, items 2 and 3): a live ``bentoml serve`` of the sample champion (two
workers) loaded by wrk on loopback at rates measured in the same run (``support/faults/serving_faults.py``).

- a worker SIGKILLed under load: no 5xx but a clean 503, a new worker serving again, every 200 in the
  prediction log; a worker with its in-flight limit taken answers 503 with Retry-After (BentoML said 429);
- a short soak and overload (60 s at 80 % of capacity, 15 s at 2x, 20 s at 80 %, SIGTERM under load): worker
  memory flat after warm-up, p99 normal again within 10 s of the overload, no 5xx but 503, every 200 logged.
"""

from __future__ import annotations

import json

import pytest

from taxi_platform_tests.support.faults.serving_faults import SCENARIOS
from taxi_platform_tests.support.system_binaries import Program, require

WRK = Program(
    label="wrk (HTTP load generator)",
    names=("wrk",),
    globs=("/usr/bin/wrk", "/usr/local/bin/wrk", "/opt/homebrew/bin/wrk"),
    how_to_get="`sudo apt-get install wrk` (Debian/Ubuntu), `brew install wrk` (macOS)",
)


@pytest.fixture(autouse=True)
def _wrk():
    require(WRK)


def test_worker_sigkill_under_load_loses_no_answered_quote(tmp_path):
    result = SCENARIOS["worker_sigkill"](tmp_path)
    print(result.explain())
    assert result.survived, result.explain()
    assert result.faults_injected == result.faults_survived == 2
    assert result.quotes_sent > 1000 and result.quotes_lost == 0, result.explain()
    (recovery,) = result.recovery_seconds
    assert 0 < recovery < 120, result.explain()  # a new worker loads the model and serves again


def test_short_soak_and_overload_then_sigterm(tmp_path):
    workdir = tmp_path  # its parent, pytest's base temp, holds the sample champion the serving tests share
    result = SCENARIOS["soak_overload"](workdir)
    report = json.loads((workdir / "report.json").read_text())
    print(result.explain())
    print(json.dumps({k: v for k, v in report.items() if k != "after_overload_per_second"}, indent=1))
    assert result.survived, result.explain()
    assert report["bad_statuses"] == {}, report["phases"]
    soak, over = (next(p for p in report["phases"] if p["phase"] == name) for name in ("soak", "overload"))
    # The generator delivers the rate the server can answer (bench_soak: 955 of 956 req/s asked); on a shared
    # 2-core machine the capacity measured at the start can be a quiet moment's, so allow a quarter short.
    assert soak["achieved_rate"] >= 0.75 * soak["asked_rate"], soak
    assert over["achieved_rate"] >= 1.5 * report["capacity_rps"], over  # and overloaded the server
    assert report["rss_mib"]["growth_pct"] <= 5.0, report["rss_mib"]
    assert report["p99_recovery_s"] is not None and report["p99_recovery_s"] <= 10, report
    assert report["sigterm_exit_code"] is not None, report
    assert report["missing_from_log"] == 0 and report["answered_200"] == result.quotes_sent > 10_000, report
    assert report["answered_200_after_sigterm"] >= 0
