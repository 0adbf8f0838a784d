"""Reading a month's served quotes from the prediction log (monitoring/prediction_log_reader.py) and the
``prediction_log_found`` check of ``served_quotes``.

- quote identity is the server's: a client's ``X-Request-ID`` reused across requests never drops a quote; a line
  shipped twice still counts once; lines written before ``client_request_id`` existed still read;
- only the files that can hold the month are opened, and memory follows the month's quotes, not the history;
- the Cloud Logging sink's objects in a bucket (GCS emulator) read like local files;
- a run that finds no log where one is configured fails its check (ERROR) instead of writing 0 rows in silence,
  one whose log holds nothing for the month warns, and one whose log cannot be read fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taxi_platform.defs.keys import SERVED_QUOTES
from taxi_platform.defs.monitoring.served_quotes import served_quotes
from taxi_platform.defs.resources import LakeResource, MlflowResource
from taxi_platform.devtools.prediction_history import write_prediction_history
from taxi_platform.monitoring.prediction_log_reader import earliest_log_day, file_day, log_files, read_log
from taxi_platform.serving.prediction_log import PredictionLog, format_record
from taxi_platform.serving.quote_batches import quotes_to_columns
from taxi_platform.serving.quote_limits import MAX_DAYS_AHEAD
from taxi_platform.serving.quotes import EXAMPLE_QUOTE, parse_quote
from taxi_platform_tests.support import gcs_emulator as emulator

gcs_emulator = emulator.gcs_emulator
gcs_env = emulator.gcs_env

NYC = ZoneInfo("America/New_York")


def _columns(n: int = 1, **changes):
    return quotes_to_columns([parse_quote({**EXAMPLE_QUOTE, **changes})] * n)


# -- quote identity --------------------------------------------------------------------------------------
def test_a_reused_client_request_id_never_hides_a_quote(tmp_path):
    """Today's main: both requests logged under the client's id, read_log keeps one (duplicate_quotes: 1)."""
    with PredictionLog(tmp_path) as log:
        log.record("predict", "srv-1", "7", _columns(pickup_zone=132), [70.0], client_request_id="same")
        log.record("predict", "srv-2", "7", _columns(pickup_zone=1), [90.0], client_request_id="same")
    columns, stats = read_log(str(tmp_path), "2024-03")
    table = columns.table()
    assert stats["duplicate_quotes"] == 0
    assert table["fare_amount"].to_pylist() == [70.0, 90.0]
    assert table["request_id"].to_pylist() == ["srv-1", "srv-2"]
    assert table["client_request_id"].to_pylist() == ["same", "same"]


def test_a_line_shipped_twice_counts_once(tmp_path):
    line = format_record(1709626500.0, "predict", "srv-1", "7", _columns(), [70.0], client_request_id="c")
    (tmp_path / "predictions-2024-03-05-1.jsonl").write_text(line + line)
    columns, stats = read_log(str(tmp_path), "2024-03")
    assert len(columns) == 1 and stats["duplicate_quotes"] == 1


def test_lines_of_older_servers_still_read(tmp_path):
    """Lines without ``client_request_id`` (request_id possibly the client's): an exact copy is a duplicate,
    two different quotes under one id are two quotes."""
    old = {"ts": "2024-03-05T08:15:00.000Z", "request_id": "abc", "endpoint": "predict", "model_version": "3",
           "count": 1, "pickup_datetime": ["2024-03-05T08:15:00"], "pickup_zone": [132], "dropoff_zone": [230],
           "passenger_count": [1], "service": ["yellow"], "fare_amount": [70.0]}  # fmt: skip
    other = {**old, "ts": "2024-03-05T08:16:00.000Z", "pickup_zone": [1], "fare_amount": [90.0]}
    lines = [json.dumps(old), json.dumps(old), json.dumps(other)]
    (tmp_path / "predictions-2024-03-05-1.jsonl").write_text("\n".join(lines) + "\n")
    columns, stats = read_log(str(tmp_path), "2024-03")
    table = columns.table()
    assert stats["duplicate_quotes"] == 1 and stats["unreadable_lines"] == 0
    assert table["fare_amount"].to_pylist() == [70.0, 90.0]
    assert table["request_id"].to_pylist() == ["abc", "abc"]
    assert table["client_request_id"].to_pylist() == [None, None]


# -- which files --------------------------------------------------------------------------------------------
def test_files_written_before_the_month_could_be_quoted_are_not_opened(tmp_path):
    """A file dated more than a year before the month cannot hold its pickups (quotes go at most a year
    ahead): it is not read, even if (impossibly) it did. Later files are all read: past pickups can be quoted."""
    line = format_record(1709626500.0, "predict", "srv-1", "7", _columns(), [70.0])
    (tmp_path / "predictions-2023-02-25-1.jsonl").write_text(line.replace("srv-1", "too-early"))
    (tmp_path / "predictions-2025-06-01-1.jsonl").write_text(line.replace("srv-1", "later"))
    sink = tmp_path / "stdout" / "2023" / "02" / "27"
    sink.mkdir(parents=True)
    (sink / "10:00:00_10:59:59_S0.json").write_text(json.dumps({"jsonPayload": json.loads(line)}) + "\n")
    columns, stats = read_log(str(tmp_path), "2024-03")
    assert earliest_log_day("2024-03") == date(2023, 2, 28)  # a year (2024 is a leap year) and a day
    assert (stats["files"], stats["files_read"]) == (3, 1)
    assert columns.table()["request_id"].to_pylist() == ["later"]
    assert len(log_files(str(tmp_path))) == 3


@settings(max_examples=200, deadline=None)
@given(
    pickup=st.datetimes(min_value=datetime(2010, 1, 1), max_value=datetime(2035, 12, 31)),
    lead=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=MAX_DAYS_AHEAD)),
    sink=st.booleans(),
)
def test_every_file_that_can_hold_a_month_is_read(pickup, lead, sink):
    """A quote served up to a year before its pickup (New York time) is in a file (named by its UTC day) on or
    after the first day read for the pickup's month; both naming schemes give that day back."""
    served = (pickup.replace(tzinfo=NYC) - lead).astimezone(UTC)
    name = (
        f"stdout/{served:%Y/%m/%d}/{served:%H}:00:00_{served:%H}:59:59_S0.json"
        if sink
        else f"predictions-{served:%Y-%m-%d}-12.jsonl"
    )
    assert file_day(f"bucket/{name}") == served.date()
    assert served.date() >= earliest_log_day(f"{pickup:%Y-%m}")


# -- memory -------------------------------------------------------------------------------------------------
MEMORY_PROBE = """
import json, sys, tracemalloc
from taxi_platform.monitoring.prediction_log_reader import read_log
tracemalloc.start()
columns, stats = read_log(sys.argv[1], sys.argv[2])
print(json.dumps({"peak": tracemalloc.get_traced_memory()[1], "quotes": len(columns)}))
"""


def _peak(source: Path, month: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(MEMORY_PROBE), str(source), month],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    return json.loads(out.stdout)


def test_memory_follows_the_month_not_the_history(tmp_path):
    """Reading one month from 12 months of log costs about what reading it from its own month costs (today's
    main: one dict per quote of the whole history, ~12x)."""
    months = [f"2024-{m:02d}" for m in range(1, 13)]
    write_prediction_history(tmp_path / "history", months, 20_000)
    write_prediction_history(tmp_path / "alone", ["2024-06"], 20_000)
    history, alone = _peak(tmp_path / "history", "2024-06"), _peak(tmp_path / "alone", "2024-06")
    assert history["quotes"] == alone["quotes"] == 20_000
    assert history["peak"] < 1.5 * alone["peak"], (history, alone)


# -- the cloud sink's bucket --------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_the_sinks_objects_in_a_bucket_read_like_local_files(gcs_env):
    """What the Cloud Logging sink writes to the predictions bucket (LogEntry per line, jsonPayload), read
    with gcsfs from the GCS emulator; a bucket prefix without objects is an empty log, not an error."""
    from gcsfs.core import GCSFileSystem

    bucket = gcs_env.create_bucket()
    fs = GCSFileSystem(token="anon", endpoint_url=gcs_env.endpoint)
    lines = [
        format_record(1709626500.0 + i, "predict", f"srv-{i}", "7", _columns(pickup_zone=10 + i), [9.0 + i],
                      client_request_id="same")
        for i in range(3)
    ]  # fmt: skip
    entries = "".join(
        json.dumps({"jsonPayload": json.loads(line), "logName": "projects/p/logs/stdout"}) + "\n"
        for line in lines
    )
    with fs.open(f"{bucket}/stdout/2024/03/05/08:00:00_08:59:59_S0.json", "wb") as fh:
        fh.write(entries.encode())
    columns, stats = read_log(f"gs://{bucket}", "2024-03")
    assert columns.table()["pickup_zone"].to_pylist() == [10, 11, 12]
    assert stats["files"] == 1 and stats["duplicate_quotes"] == 0
    assert log_files(f"gs://{bucket}") == [f"gs://{bucket}/stdout/2024/03/05/08:00:00_08:59:59_S0.json"]
    assert log_files(f"gs://{bucket}/nothing-here") == []


# -- the prediction_log_found check ---------------------------------------------------------------------------
def _materialize(tmp_path: Path, log_path: Path, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [served_quotes],
        partition_key="2024-03-01",
        instance=dg.DagsterInstance.ephemeral(),
        resources={
            "lake": LakeResource(root=str(tmp_path / "lake")),
            "mlflow": MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"),
        },
        run_config={"ops": {"served_quotes": {"config": {"log_path": str(log_path)}}}},
        raise_on_error=raise_on_error,
    )


def _check(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    (evaluation,) = result.get_asset_check_evaluations()
    assert evaluation.asset_key == SERVED_QUOTES and evaluation.check_name == "prediction_log_found"
    return evaluation


def test_no_log_where_one_is_configured_fails_the_check(tmp_path):
    """Today's main: a 0-row partition and nothing failing (the run pods' default path does not exist)."""
    result = _materialize(tmp_path, tmp_path / "nowhere")
    check = _check(result)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert "No prediction log under" in check.description and "TAXI_PREDICTION_LOG_PATH" in check.description
    (mat,) = result.asset_materializations_for_node("served_quotes")
    assert mat.metadata["dagster/row_count"].value == 0


def test_a_log_without_the_months_quotes_warns(tmp_path):
    with PredictionLog(tmp_path / "log") as log:
        log.record("predict", "srv-1", "7", _columns(pickup_datetime="2024-05-02T10:00:00"), [20.0])
    check = _check(_materialize(tmp_path, tmp_path / "log"))
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert "no quote for a pickup in 2024-03" in check.description


def test_a_log_with_the_months_quotes_passes(tmp_path):
    with PredictionLog(tmp_path / "log") as log:
        log.record("predict", "srv-1", "7", _columns(), [70.0], client_request_id="c")
    result = _materialize(tmp_path, tmp_path / "log")
    check = _check(result)
    assert check.passed and check.metadata["quotes"].value == 1
    (mat,) = result.asset_materializations_for_node("served_quotes")
    assert mat.metadata["dagster/row_count"].value == 1


def test_a_log_that_cannot_be_read_fails_the_run(tmp_path):
    log = tmp_path / "log"
    log.mkdir()
    (log / "predictions-2024-03-05-1.jsonl").symlink_to(tmp_path / "gone.jsonl")  # listed, cannot be opened
    result = _materialize(tmp_path, log, raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert "cannot read prediction-log file" in message and "predictions bucket" in message
