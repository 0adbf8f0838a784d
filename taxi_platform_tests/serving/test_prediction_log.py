"""Prediction log (serving/prediction_log.py): JSON lines written by a background thread, never blocking callers."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taxi_platform.serving import prediction_log as P
from taxi_platform.serving.quote_batches import quotes_to_columns
from taxi_platform.serving.quotes import EXAMPLE_QUOTE, parse_quote


def _columns(n: int = 1, **changes):
    return quotes_to_columns([parse_quote({**EXAMPLE_QUOTE, **changes})] * n)


def test_records_become_one_json_line_per_quote(tmp_path):
    with P.PredictionLog(tmp_path) as log:
        log.record("predict", "req-1", "7", _columns(), [70.0])
        log.record(
            "predict_batch",
            'odd "id"\n',
            "7",
            _columns(3, service="green", pickup_zone=1),
            [12.5, 13.0, 9.99],
        )
    rows = list(P.read_prediction_log(tmp_path))
    assert len(rows) == 4
    first = rows[0]
    assert {k: first[k] for k in EXAMPLE_QUOTE} == {**EXAMPLE_QUOTE, "pickup_datetime": "2024-03-05T08:15:00"}
    assert (first["fare_amount"], first["model_version"], first["request_id"], first["endpoint"]) == (
        70.0,
        "7",
        "req-1",
        "predict",
    )
    assert first["ts"].endswith("Z")
    assert [r["index"] for r in rows[1:]] == [0, 1, 2]
    assert [r["fare_amount"] for r in rows[1:]] == [12.5, 13.0, 9.99]
    assert {r["request_id"] for r in rows[1:]} == {'odd "id"\n'}
    assert {r["service"] for r in rows[1:]} == {"green"}
    (path,) = tmp_path.glob("predictions-*.jsonl")
    assert path.name.endswith(f"-{os.getpid()}.jsonl")
    lines = path.read_text().splitlines()
    assert len(lines) == 2  # one line per request, quotes as columns
    assert json.loads(lines[1])["fare_amount"] == [12.5, 13.0, 9.99]
    assert json.loads(lines[1])["count"] == 3
    assert log.written == 2 and log.dropped == 0


def test_record_does_not_wait_for_the_writer(tmp_path, monkeypatch):
    gate = threading.Event()
    real_write = P.PredictionLog._write

    def slow_write(self, items):
        gate.wait(10)
        real_write(self, items)

    monkeypatch.setattr(P.PredictionLog, "_write", slow_write)
    log = P.PredictionLog(tmp_path, max_pending=5)
    cols = _columns()
    t0 = time.perf_counter()
    for i in range(50):
        log.record("predict", f"r{i}", "1", cols, [10.0])
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.5  # the writer is blocked, yet recording returned at once
    # Beyond the queue bound (5, plus whatever the blocked writer already took) records are dropped and counted.
    assert 30 <= log.dropped < 50
    gate.set()
    log.close()
    assert log.written == 50 - log.dropped
    assert len(list(P.read_prediction_log(tmp_path))) == log.written  # one quote per request here


def test_file_moved_away_is_recreated(tmp_path):
    log = P.PredictionLog(tmp_path, flush_interval=0.05)
    log.record("predict", "a", "1", _columns(), [1.0])
    deadline = time.time() + 10
    while log.written < 1 and time.time() < deadline:
        time.sleep(0.02)
    (path,) = tmp_path.glob("predictions-*.jsonl")
    path.rename(tmp_path / "rotated.jsonl.1")
    log.record("predict", "b", "1", _columns(), [2.0])
    log.close()
    assert [r["request_id"] for r in P.read_prediction_log(tmp_path)] == ["b"]
    assert json.loads((tmp_path / "rotated.jsonl.1").read_text())["request_id"] == "a"


def test_quote_objects_and_columns_give_the_same_record():
    quotes = [
        parse_quote({**EXAMPLE_QUOTE, "pickup_datetime": "2024-07-01T23:59:30", "service": "green"})
    ] * 2
    by_objects = P.format_record(0.0, "predict_batch", "r", "1", quotes, [10.0, 11.5])
    by_columns = P.format_record(0.0, "predict_batch", "r", "1", quotes_to_columns(quotes), [10.0, 11.5])
    assert by_objects == by_columns
    assert by_objects.endswith("\n") and by_objects.count("\n") == 1
    record = json.loads(by_objects)
    assert record["ts"] == "1970-01-01T00:00:00.000Z"
    assert record["pickup_datetime"] == ["2024-07-01T23:59:30"] * 2
    assert [r["index"] for r in P.explode(record)] == [0, 1]


def test_stdout_sink(capsys):
    log = P.PredictionLog(None, stdout=True)
    log.record("predict", "x", "3", _columns(), [42.0])
    log.close()
    line = capsys.readouterr().out.strip()
    assert json.loads(line)["fare_amount"] == [42.0]


def test_disabled_log_writes_nothing(tmp_path):
    log = P.PredictionLog(None)
    assert not log.enabled
    log.record("predict", "x", "3", _columns(), [42.0])
    log.close()
    assert log.written == 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, (True, False)), ("file", (True, False)), ("stdout", (False, True)), ("both", (True, True)),
     ("off", (False, False)), (" Both ", (True, True))],
)  # fmt: skip
def test_sinks_from_the_service_settings(value, expected):
    from taxi_platform.core.settings import load_service_settings

    settings = load_service_settings({} if value is None else {P.ENV_SINKS: value})
    assert (settings.log_to_file, settings.log_to_stdout) == expected


def test_bad_sink_setting_says_what_is_allowed():
    from taxi_platform.core.settings import load_service_settings

    with pytest.raises(
        ValueError, match="TAXI_PREDICTION_LOG='syslog': expected one of file, stdout, both, off"
    ):
        load_service_settings({P.ENV_SINKS: "syslog"})


def test_duckdb_reads_the_log_one_row_per_quote(tmp_path):
    import duckdb

    with P.PredictionLog(tmp_path) as log:
        log.record("predict", "a", "1", _columns(), [70.0])
        log.record("predict_batch", "b", "1", _columns(3, pickup_zone=1), [10.0, 11.0, 12.0])
    rows = duckdb.sql(
        f"""SELECT request_id, unnest(pickup_zone) AS pickup_zone, unnest(fare_amount) AS fare_amount
            FROM read_json('{tmp_path}/predictions-*.jsonl') ORDER BY request_id, fare_amount"""
    ).fetchall()
    assert rows == [("a", 132, 70.0), ("b", 1, 10.0), ("b", 1, 11.0), ("b", 1, 12.0)]


# --- entries below the log sink's size limit (Cloud Logging: 256 KB per entry) -------------------------------

CLOUD_LOGGING_ENTRY_LIMIT = 256 * 1024


def test_a_10000_quote_batch_is_split_below_the_sink_limit_and_nothing_is_lost(tmp_path):
    zones = [1 + i % 263 for i in range(10_000)]
    cols = quotes_to_columns([parse_quote({**EXAMPLE_QUOTE, "pickup_zone": z}) for z in zones])
    fares = [round(10 + i / 100, 2) for i in range(10_000)]
    with P.PredictionLog(tmp_path) as log:
        log.record("predict_batch", "big", "7", cols, fares)
    lines = [line for path in tmp_path.glob("*.jsonl") for line in path.read_text().splitlines()]
    assert len(lines) >= 2
    assert all(len(line.encode()) + 1 <= P.MAX_LINE_BYTES < CLOUD_LOGGING_ENTRY_LIMIT for line in lines)
    parts = [json.loads(line) for line in lines]
    assert [p["part"] for p in parts] == list(range(len(parts))) and {p["parts"] for p in parts} == {
        len(parts)
    }
    rows = list(P.read_prediction_log(tmp_path))
    assert [r["index"] for r in rows] == list(range(10_000))
    assert [r["pickup_zone"] for r in rows] == zones
    assert [r["fare_amount"] for r in rows] == fares
    assert {r["request_id"] for r in rows} == {"big"}


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 400), max_bytes=st.integers(1_000, 20_000))
def test_split_lines_fit_and_explode_to_every_quote_in_order(n, max_bytes):
    cols = _columns(n)
    fares = [float(i) for i in range(n)]
    text = P.format_record(0.0, "predict_batch", "r", "7", cols, fares, max_bytes=max_bytes)
    lines = text.splitlines(keepends=True)
    assert all(len(line.encode()) <= max_bytes for line in lines)
    rows = [row for line in lines for row in P.explode(json.loads(line))]
    assert [r["index"] for r in rows] == list(range(n))
    assert [r["fare_amount"] for r in rows] == fares
