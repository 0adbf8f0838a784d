"""Settings validation and the Definitions that `dagster dev` loads."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from taxi_platform.core.months import parse_month
from taxi_platform.core.setting_values import SettingsError
from taxi_platform.core.settings import load_settings

DESIGN_ASSET_KEYS = {
    "taxi_zones",
    "raw_trips",
    "cleaned_trips",
    "trip_features",
    "fare_model",
    "drift_report",
    "fare_service",
}


def test_defaults_follow_the_design(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings({})
    assert s.start_month == date(2023, 1, 1)
    assert s.start_partition_key == "2023-01-01"
    assert s.tlc_base_url == "https://d37ci6vzurychx.cloudfront.net"
    assert s.services == ("yellow", "green")
    assert s.data_dir == tmp_path / ".data"
    assert s.lake_root == str(tmp_path / ".data" / "lake")
    assert s.mlflow_tracking_uri == f"sqlite:///{tmp_path / '.data' / 'mlflow.db'}"
    assert s.download_max_bytes == 2 << 30 and s.download_deadline_seconds == 1800.0
    assert s.duckdb_memory_limit == "50%" and s.duckdb_temp_root == tmp_path / ".data" / "duckdb_tmp"


def test_overrides(tmp_path):
    s = load_settings(
        {
            "TAXI_START_MONTH": "2024-03",
            "TAXI_SERVICES": "green",
            "TAXI_DATA_DIR": str(tmp_path),
            "TAXI_LAKE_ROOT": "gs://bucket/lake/",
            "TLC_BASE_URL": "http://127.0.0.1:9/",
            "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        }
    )
    assert (s.start_month, s.services, s.lake_root, s.tlc_base_url) == (
        date(2024, 3, 1),
        ("green",),
        "gs://bucket/lake",
        "http://127.0.0.1:9",
    )
    assert s.is_remote_lake and s.mlflow_tracking_uri == "http://mlflow:5000"


@pytest.mark.parametrize(
    "env,message",
    [
        ({"TAXI_START_MONTH": "2024-13"}, "TAXI_START_MONTH='2024-13' has month 13: expected 01-12"),
        ({"TAXI_START_MONTH": "March"}, "TAXI_START_MONTH='March' is not a month: expected YYYY-MM"),
        ({"TAXI_START_MONTH": "1999-01"}, "TLC trip records start in 2009"),
        ({"TAXI_SERVICES": "yellow,fhv"}, "unknown service(s) ['fhv']"),
        ({"TAXI_SERVICES": " , "}, "TAXI_SERVICES is empty"),
        ({"TLC_BASE_URL": "ftp://x"}, "TLC_BASE_URL='ftp://x' is not an http(s) URL"),
        ({"TAXI_LAKE_ROOT": "s3://bucket/x"}, "expected a local path or gs://bucket/prefix"),
        (
            {"TAXI_DOWNLOAD_DEADLINE_SECONDS": "soon"},
            "TAXI_DOWNLOAD_DEADLINE_SECONDS='soon' is not a number of seconds",
        ),
        ({"TAXI_DOWNLOAD_DEADLINE_SECONDS": "-5"}, "must be a positive, finite number of seconds"),
        ({"TAXI_DOWNLOAD_DEADLINE_SECONDS": "inf"}, "must be a positive, finite number of seconds"),
        ({"TAXI_DOWNLOAD_MAX_BYTES": "big"}, "TAXI_DOWNLOAD_MAX_BYTES='big' is not a size"),
        ({"TAXI_DOWNLOAD_MAX_BYTES": "0"}, "must be a positive size"),
        ({"TAXI_DOWNLOAD_MAX_BYTES": "3 parsecs"}, "is not a size"),
        (
            {"TAXI_DUCKDB_MEMORY_LIMIT": "4 apples"},
            "TAXI_DUCKDB_MEMORY_LIMIT='4 apples' is not a memory limit",
        ),
        ({"TAXI_DUCKDB_MEMORY_LIMIT": "150%"}, "at most 100%"),
        ({"TAXI_DUCKDB_MEMORY_LIMIT": "0GB"}, "must be above 0"),
    ],
)
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(SettingsError) as err:
        load_settings(env)
    assert message in str(err.value)


def test_partition_keys_parse_as_months():
    assert parse_month("2024-03-01") == date(2024, 3, 1)


def test_definitions_load_every_design_asset_without_heavy_imports():
    code = (
        "import sys, json\n"
        "import dagster as dg\n"
        "from taxi_platform.definitions import defs as lazy\n"
        "defs = lazy()\n"
        "dg.Definitions.validate_loadable(defs)\n"
        "keys = sorted(k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys())\n"
        "heavy = [m for m in ('mlflow', 'bentoml', 'evidently', 'sklearn') if m in sys.modules]\n"
        "sensors = sorted(s.name for s in defs.sensors)\n"
        "print(json.dumps({'keys': keys, 'heavy': heavy, 'sensors': sensors}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    import json

    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert DESIGN_ASSET_KEYS <= set(result["keys"])
    assert result["heavy"] == []
    assert {"tlc_release_sensor", "retrain_on_mae_degradation"} <= set(result["sensors"])


def test_workspace_yaml_points_at_the_definitions():
    text = (Path(__file__).resolve().parents[2] / "workspace.yaml").read_text()
    assert "module_name: taxi_platform.definitions" in text and "attribute: defs" in text


def test_download_and_duckdb_limits_from_the_environment(tmp_path, monkeypatch):
    from taxi_platform.defs.resources import TlcSourceResource

    env = {
        "TAXI_DATA_DIR": str(tmp_path),
        "TAXI_DOWNLOAD_MAX_BYTES": "512MiB",
        "TAXI_DOWNLOAD_DEADLINE_SECONDS": "90.5",
        "TAXI_DUCKDB_MEMORY_LIMIT": "6gb",
    }
    s = load_settings(env)
    assert (s.download_max_bytes, s.download_deadline_seconds) == (512 << 20, 90.5)
    assert s.duckdb_memory_limit == "6GB" and s.duckdb_temp_root == tmp_path / "duckdb_tmp"
    assert load_settings({"TAXI_DOWNLOAD_MAX_BYTES": "1GB"}).download_max_bytes == 10**9
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    options = TlcSourceResource(base_url="http://127.0.0.1:9").download_options()
    assert (options["deadline"], options["max_bytes"], options["verify_md5"]) == (90.5, 512 << 20, True)
    explicit = TlcSourceResource(deadline_seconds=5, max_bytes=1000, verify_md5=False).download_options()
    assert (explicit["deadline"], explicit["max_bytes"], explicit["verify_md5"]) == (5, 1000, False)


def test_report_links_open_in_a_browser(tmp_path):
    from taxi_platform.core.setting_values import SettingsError

    lake = tmp_path / "lake"
    settings = load_settings({"TAXI_DATA_DIR": str(tmp_path), "TAXI_LAKE_ROOT": str(lake)})
    report = str(lake / "drift_report" / "month=2024-04" / "report.html")
    assert settings.browser_url(report) == "http://127.0.0.1:3002/drift_report/month=2024-04/report.html"
    custom = load_settings(
        {"TAXI_DATA_DIR": str(tmp_path), "TAXI_REPORTS_URL": "https://reports.example.org/lake/"}
    )
    assert (
        custom.browser_url(str(tmp_path / "lake" / "a b.png")) == "https://reports.example.org/lake/a%20b.png"
    )
    assert settings.browser_url("gs://bucket/lake/drift_report/x.html") == (
        "https://storage.cloud.google.com/bucket/lake/drift_report/x.html"
    )
    assert settings.browser_url(str(tmp_path / "elsewhere.html")).startswith("file://")
    with pytest.raises(SettingsError, match="TAXI_REPORTS_URL='ftp://x' is not an http"):
        load_settings({"TAXI_REPORTS_URL": "ftp://x"})


def test_service_settings_defaults_and_values():
    from taxi_platform.core.settings import load_service_settings

    default = load_service_settings({})
    assert (default.api_keys_file, default.rate_limit, default.rate_burst) == (None, 20.0, 40.0)
    assert (default.trace_predictions, default.log_to_file, default.log_to_stdout) == (False, True, False)
    custom = load_service_settings(
        {
            "TAXI_API_KEYS_FILE": " /run/keys/hashes ",
            "TAXI_RATE_LIMIT": "0.25",
            "TAXI_TRACE_PREDICTIONS": "true",
            "TAXI_PREDICTION_LOG": "Both",
        }
    )
    assert custom.api_keys_file == "/run/keys/hashes"
    assert (custom.rate_limit, custom.rate_burst) == (
        0.25,
        1.0,
    )  # burst: twice the rate, at least one request
    assert custom.trace_predictions and custom.log_to_file and custom.log_to_stdout
    assert load_service_settings({"TAXI_RATE_LIMIT": "5", "TAXI_RATE_BURST": "7"}).rate_burst == 7.0


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("TAXI_RATE_LIMIT", "fast", "TAXI_RATE_LIMIT='fast' is not a number of requests per second"),
        ("TAXI_RATE_LIMIT", "-1", "TAXI_RATE_LIMIT='-1' must be 0 or a positive"),
        ("TAXI_RATE_BURST", "inf", "TAXI_RATE_BURST='inf' must be 0 or a positive"),
        ("TAXI_TRACE_PREDICTIONS", "maybe", "TAXI_TRACE_PREDICTIONS='maybe': expected true or false"),
        (
            "TAXI_PREDICTION_LOG",
            "syslog",
            "TAXI_PREDICTION_LOG='syslog': expected one of file, stdout, both, off",
        ),
    ],
)
def test_bad_service_settings_name_the_variable(variable, value, message):
    from taxi_platform.core.setting_values import SettingsError
    from taxi_platform.core.settings import load_service_settings

    with pytest.raises(SettingsError, match=re.escape(message)):
        load_service_settings({variable: value})


def test_bento_base_image_setting():
    assert load_settings({}).bento_base_image is None
    assert load_settings({"TAXI_BENTO_BASE_IMAGE": " "}).bento_base_image is None
    ref = "python:3.11-slim@sha256:" + "a" * 64
    assert load_settings({"TAXI_BENTO_BASE_IMAGE": ref}).bento_base_image == ref


def test_taxi_variables_are_read_only_in_settings():
    """Every ``TAXI_*`` variable is read in core/settings.py: no other module looks one up in the environment."""
    root = Path(__file__).resolve().parents[2]
    # os.environ["TAXI_X"], os.environ.get("TAXI_X"), os.getenv(ENV_X): a read by name or by a name constant
    reads = re.compile(r"""(environ(\.get)?|getenv)\(?\[?\s*(["']TAXI_|ENV_)""")
    offenders = []
    for path in [*sorted((root / "taxi_platform").rglob("*.py")), root / "bento" / "service.py"]:
        if path.name == "settings.py" and path.parent.name == "core":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if reads.search(line):
                offenders.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    assert not offenders, "TAXI_* read outside core/settings.py:\n" + "\n".join(offenders)


def test_the_reads_test_finds_a_read():
    reads = re.compile(r"""(environ(\.get)?|getenv)\(?\[?\s*(["']TAXI_|ENV_)""")
    assert reads.search('rate = float(os.environ.get("TAXI_RATE_LIMIT", "1"))')
    assert reads.search("path = os.environ[ENV_API_KEYS_FILE]") and reads.search('os.getenv("TAXI_X")')
    assert not reads.search('os.environ.setdefault("TAXI_DATA_DIR", here)')
