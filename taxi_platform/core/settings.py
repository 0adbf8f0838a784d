"""Platform settings, read from environment variables.

One place validates every setting, so a bad value fails early with a message that says which
variable is wrong and what a good value looks like.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from taxi_platform.core.months import MonthError, parse_month
from taxi_platform.core.setting_values import (
    SettingsError,
    parse_byte_size,
    parse_flag,
    parse_memory_limit,
    parse_positive_float,
    parse_whole_number,
)
from taxi_platform.fare_model.features import SERVICES

DEFAULT_TLC_BASE_URL = "https://d37ci6vzurychx.cloudfront.net"
DEFAULT_START_MONTH = "2023-01"
KNOWN_SERVICES = SERVICES  # the TLC's yellow and green taxis; TAXI_SERVICES picks a subset
DEFAULT_SERVICES = SERVICES
MODEL_NAME = "taxi_fare_model"
# The biggest TLC yellow/green file is ~0.2 GiB (yellow 2015-2016 months); 2 GiB leaves a wide margin for later
# months and still stops a runaway body from filling the disk.
DEFAULT_DOWNLOAD_MAX_BYTES = 2 << 30
# Time for one trip file, all attempts included: 2 GiB at ~2 MiB/s, far more than a healthy CDN needs.
DEFAULT_DOWNLOAD_DEADLINE_SECONDS = 1800.0
# TAXI_MLFLOW_WAIT_SECONDS: how long fare_model and drift_report wait (by Dagster retries) for a tracking server that does not
# answer when the step starts (taxi_platform/defs/model/registry_wait.py); 0: fail at once.
DEFAULT_MLFLOW_WAIT_SECONDS = 120.0
# TAXI_GCS_TIMEOUT_SECONDS: the lake's deadline for connecting to GCS and for each read of an answer; a request that
# overruns it is retried by the GCS clients like a 503 (taxi_platform/lake/gcs.py).
DEFAULT_GCS_TIMEOUT_SECONDS = 60.0
# DuckDB's own default is 80 % of RAM; the training and drift steps also hold pandas frames next to it.
DEFAULT_DUCKDB_MEMORY_LIMIT = "50%"
# Where `taxi-platform ui` serves the local lake's files, so report links in Dagster open in a browser.
DEFAULT_REPORTS_URL = "http://127.0.0.1:3002"
DUCKDB_TEMP_SUBDIR = "duckdb_tmp"
# The fare service's prediction log: where a local service writes it and served_quotes reads it.
PREDICTION_LOG_SUBDIR = "predictions"
# The fare service's API-key rate limit: requests per second per key and worker (a batch is one request).
DEFAULT_RATE_LIMIT = 20.0
PREDICTION_LOG_SINKS = ("file", "stdout", "both", "off")  # TAXI_PREDICTION_LOG


def parse_services(value: str) -> tuple[str, ...]:
    services = tuple(s.strip().lower() for s in value.split(",") if s.strip())
    if not services:
        raise SettingsError("TAXI_SERVICES is empty: expected a comma-separated list such as 'yellow,green'")
    unknown = [s for s in services if s not in KNOWN_SERVICES]
    if unknown:
        raise SettingsError(
            f"TAXI_SERVICES={value!r} names unknown service(s) {unknown}: expected a subset of {list(KNOWN_SERVICES)}"
        )
    return tuple(dict.fromkeys(services))


def _parse_base_url(value: str, variable: str = "TLC_BASE_URL") -> str:
    url = value.strip().rstrip("/")
    if not re.match(r"^(https?|file)://", url):
        example = DEFAULT_TLC_BASE_URL if variable == "TLC_BASE_URL" else DEFAULT_REPORTS_URL
        raise SettingsError(f"{variable}={value!r} is not an http(s) URL, e.g. {example}")
    return url


def load_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """``TAXI_DATA_DIR`` (default ``.data``) as an absolute path: local state, the default lake and MLflow store."""
    env = os.environ if env is None else env
    return Path(env.get("TAXI_DATA_DIR") or ".data").expanduser().absolute()


@dataclass(frozen=True)
class DuckDBSettings:
    """Where DuckDB may spill and how much memory it may use (see :meth:`taxi_platform.lake.lake.Lake.connect`)."""

    temp_root: Path  # each connection spills into its own subdirectory of this one
    memory_limit: str


def load_duckdb_settings(env: dict[str, str] | None = None) -> DuckDBSettings:
    """Only the DuckDB settings (``TAXI_DATA_DIR``, ``TAXI_DUCKDB_MEMORY_LIMIT``), read on every connection."""
    env = dict(os.environ if env is None else env)
    data_dir = load_data_dir(env)
    limit = parse_memory_limit(env.get("TAXI_DUCKDB_MEMORY_LIMIT") or DEFAULT_DUCKDB_MEMORY_LIMIT)
    return DuckDBSettings(temp_root=data_dir / DUCKDB_TEMP_SUBDIR, memory_limit=limit)


AUTOMATION_STATUSES = ("running", "stopped")


@dataclass(frozen=True)
class AutomationSettings:
    """How the release sensor, the safety-net schedule and the automation sensor run.

    ==================================== ================================================================
    ``TAXI_SENSOR_INTERVAL_SECONDS``     release sensor minimum interval (default 3600)
    ``TAXI_SENSOR_MAX_RUNS_PER_TICK``    cap on months requested per tick, oldest first (default 24)
    ``TAXI_SENSOR_RETRY_ATTEMPTS``       runs per month and file version, the first included, before the
                                         release sensor gives up on a failing month (default 4; 1: no
                                         retries)
    ``TAXI_SENSOR_RETRY_BACKOFF_SECONDS`` wait after a month's first failed run; doubles per failure, at
                                         most a day (default: the sensor interval)
    ``TAXI_AUTOMATION_DEFAULT_STATUS``   ``running`` or ``stopped`` (default): initial state of the release
                                         sensor and the schedule; toggling them in the UI overrides it
    ``TAXI_AUTOMATION_INTERVAL_SECONDS`` automation-condition sensor interval (default 30)
    ``TAXI_AUTOMATION_GROUPS``           asset groups the automation sensor evaluates, comma-separated
                                         (default, empty or ``*``: all)
    ==================================== ================================================================
    """

    sensor_interval_seconds: int = 3600
    sensor_max_runs_per_tick: int = 24
    retry_attempts: int = 4
    retry_backoff_seconds: int = 3600
    default_status: str = "stopped"
    automation_interval_seconds: int = 30
    automation_groups: tuple[str, ...] | None = None  # None: every asset

    @property
    def max_backoff_seconds(self) -> float:
        """Backoff cap: a day, or the configured first backoff if that is longer."""
        return max(86400.0, float(self.retry_backoff_seconds))


def parse_groups(value: str) -> tuple[str, ...] | None:
    """``ingest, transform`` → ``("ingest", "transform")``; empty or ``*`` → None (every group)."""
    value = value.strip()
    if value in ("", "*"):
        return None
    return tuple(dict.fromkeys(g.strip() for g in value.split(",") if g.strip()))


def parse_status(value: str, variable: str = "TAXI_AUTOMATION_DEFAULT_STATUS") -> str:
    status = value.strip().lower()
    if status not in AUTOMATION_STATUSES:
        raise SettingsError(f"{variable}={value!r}: expected 'running' or 'stopped'")
    return status


def load_automation_settings(env: Mapping[str, str] | None = None) -> AutomationSettings:
    """Only the automation settings (read when the definitions load); an unset or empty variable takes
    its default."""
    env = os.environ if env is None else env
    defaults = AutomationSettings()

    def number(variable: str, default: int) -> int:
        raw = env.get(variable, "").strip()
        return parse_whole_number(raw, variable, example=default) if raw else default

    interval = number("TAXI_SENSOR_INTERVAL_SECONDS", defaults.sensor_interval_seconds)
    return AutomationSettings(
        sensor_interval_seconds=interval,
        sensor_max_runs_per_tick=number("TAXI_SENSOR_MAX_RUNS_PER_TICK", defaults.sensor_max_runs_per_tick),
        retry_attempts=number("TAXI_SENSOR_RETRY_ATTEMPTS", defaults.retry_attempts),
        retry_backoff_seconds=number("TAXI_SENSOR_RETRY_BACKOFF_SECONDS", interval),
        default_status=parse_status(env.get("TAXI_AUTOMATION_DEFAULT_STATUS") or defaults.default_status),
        automation_interval_seconds=number(
            "TAXI_AUTOMATION_INTERVAL_SECONDS", defaults.automation_interval_seconds
        ),
        automation_groups=parse_groups(env.get("TAXI_AUTOMATION_GROUPS", "")),
    )


def parse_prediction_log_path(value: str, variable: str = "TAXI_PREDICTION_LOG_PATH") -> str | None:
    """A local directory (made absolute) or ``gs://bucket[/prefix]``; empty: None (the default)."""
    value = value.strip()
    if not value:
        return None
    if "://" not in value:
        return str(Path(value).expanduser().absolute())
    bucket = value[len("gs://") :].split("/", 1)[0] if value.startswith("gs://") else ""
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]", bucket):
        raise SettingsError(
            f"{variable}={value!r}: expected a local directory or the predictions bucket the Cloud Logging sink "
            "writes to, gs://bucket[/prefix] (terraform output prediction_log_path)"
        )
    return value.rstrip("/")


@dataclass(frozen=True)
class ServiceSettings:
    """The fare service's variables, read by each worker when it starts (``bento/service.py``).

    ``TAXI_API_KEYS_FILE``      file of SHA-256 key hashes; unset: no authentication (and no rate limit)
    ``TAXI_RATE_LIMIT``         requests per second per key and worker (default 20; 0: no limit)
    ``TAXI_RATE_BURST``         bucket size (default twice the rate, at least 1)
    ``TAXI_TRACE_PREDICTIONS``  true: trace /predict too (it is left out of OpenTelemetry traces by default)
    ``TAXI_PREDICTION_LOG``     the prediction log's sinks: file (default), stdout, both or off
    """

    api_keys_file: str | None = None
    rate_limit: float = DEFAULT_RATE_LIMIT
    rate_burst: float = 2 * DEFAULT_RATE_LIMIT
    trace_predictions: bool = False
    prediction_log_sinks: str = "file"

    @property
    def log_to_file(self) -> bool:
        return self.prediction_log_sinks in ("file", "both")

    @property
    def log_to_stdout(self) -> bool:
        return self.prediction_log_sinks in ("stdout", "both")


def _parse_rate(value: str, variable: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        raise SettingsError(f"{variable}={value!r} is not a number of requests per second, e.g. 20") from None
    if not 0 <= rate < float("inf"):
        raise SettingsError(f"{variable}={value!r} must be 0 or a positive, finite number, e.g. 20")
    return rate


def load_service_settings(env: Mapping[str, str] | None = None) -> ServiceSettings:
    """Only the fare service's settings; an unset or empty variable takes its default."""
    env = os.environ if env is None else env
    rate = _parse_rate(env.get("TAXI_RATE_LIMIT", "").strip() or str(DEFAULT_RATE_LIMIT), "TAXI_RATE_LIMIT")
    burst_raw = env.get("TAXI_RATE_BURST", "").strip()
    sinks = env.get("TAXI_PREDICTION_LOG", "").strip().lower() or "file"
    if sinks not in PREDICTION_LOG_SINKS:
        raise SettingsError(
            f"TAXI_PREDICTION_LOG={sinks!r}: expected one of {', '.join(PREDICTION_LOG_SINKS)}"
        )
    return ServiceSettings(
        api_keys_file=env.get("TAXI_API_KEYS_FILE", "").strip() or None,
        rate_limit=rate,
        rate_burst=_parse_rate(burst_raw, "TAXI_RATE_BURST") if burst_raw else max(2 * rate, 1.0),
        trace_predictions=parse_flag(env.get("TAXI_TRACE_PREDICTIONS", ""), "TAXI_TRACE_PREDICTIONS"),
        prediction_log_sinks=sinks,
    )


@dataclass(frozen=True)
class Settings:
    start_month: date
    tlc_base_url: str
    services: tuple[str, ...]
    data_dir: Path
    lake_root: str
    mlflow_tracking_uri: str
    download_max_bytes: int = DEFAULT_DOWNLOAD_MAX_BYTES
    download_deadline_seconds: float = DEFAULT_DOWNLOAD_DEADLINE_SECONDS
    mlflow_wait_seconds: float = DEFAULT_MLFLOW_WAIT_SECONDS
    duckdb_memory_limit: str = DEFAULT_DUCKDB_MEMORY_LIMIT
    reports_url: str = DEFAULT_REPORTS_URL
    automation: AutomationSettings = field(default_factory=AutomationSettings)
    # TAXI_PREDICTION_LOG_PATH: an absolute local directory or gs://bucket[/prefix]; None: the default,
    # $TAXI_DATA_DIR/predictions (see prediction_log_path).
    prediction_log_setting: str | None = None
    # TAXI_LOCK_RESOURCE_CONFIG (a deployed instance: true): resource config that decides where credentials, data
    # or code come from may not be set per run (taxi_platform.defs.resources.LOCKED_FIELDS).
    lock_resource_config: bool = False
    # TAXI_BENTO_BASE_IMAGE: the fare service image's base, pinned by digest (checked by build-bento); None: BentoML's.
    bento_base_image: str | None = None

    @property
    def prediction_log_path(self) -> str:
        """Where the fare service's prediction log is: ``TAXI_PREDICTION_LOG_PATH``, else
        ``$TAXI_DATA_DIR/predictions`` (an absolute path, whatever the working directory)."""
        return self.prediction_log_setting or str(self.data_dir / PREDICTION_LOG_SUBDIR)

    def browser_url(self, path: str, lake_root: str | None = None) -> str:
        """An address a browser opens for a file of the lake (a report, a plot); ``lake_root`` defaults to
        ``TAXI_LAKE_ROOT``.

        ``gs://`` objects: the Cloud Console's authenticated URL. Local files: their place under
        ``TAXI_REPORTS_URL``, which ``taxi-platform ui`` serves (browsers refuse ``file://`` links from a page).
        """
        if path.startswith("gs://"):
            return "https://storage.cloud.google.com/" + path[len("gs://") :]
        if "://" in path and not path.startswith("file://"):
            return path
        local = Path(path.removeprefix("file://")).absolute()
        root = Path((lake_root or self.lake_root).removeprefix("file://")).absolute()
        try:
            relative = local.relative_to(root)
        except ValueError:
            return local.as_uri()  # not in the lake: nothing serves it
        from urllib.parse import quote

        return f"{self.reports_url}/{quote(relative.as_posix(), safe='/=')}"

    @property
    def duckdb_temp_root(self) -> Path:
        """``$TAXI_DATA_DIR/duckdb_tmp``: DuckDB spills here (one subdirectory per connection), never in the cwd."""
        return self.data_dir / DUCKDB_TEMP_SUBDIR

    @property
    def start_partition_key(self) -> str:
        return self.start_month.strftime("%Y-%m-01")

    @property
    def is_remote_lake(self) -> bool:
        return "://" in self.lake_root and not self.lake_root.startswith("file://")

    @property
    def bento_home(self) -> Path:
        return self.data_dir / "bentoml"


def _parse_wait(value: str, default: float, variable: str = "TAXI_MLFLOW_WAIT_SECONDS") -> float:
    """A number of seconds, 0 or more; empty: ``default``."""
    if not value.strip():
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        raise SettingsError(f"{variable}={value!r}: expected a number of seconds, 0 or more")
    return seconds


def load_gcs_timeout(env: Mapping[str, str] | None = None) -> float:
    """``TAXI_GCS_TIMEOUT_SECONDS`` (seconds, more than 0; default 60)."""
    env = os.environ if env is None else env
    variable = "TAXI_GCS_TIMEOUT_SECONDS"
    seconds = _parse_wait(env.get(variable, ""), DEFAULT_GCS_TIMEOUT_SECONDS, variable)
    if seconds <= 0:
        raise SettingsError(f"{variable}={env.get(variable)!r}: expected a number of seconds more than 0")
    return seconds


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Read and validate settings from ``env`` (default: ``os.environ``)."""
    env = dict(os.environ if env is None else env)
    try:
        start_month = parse_month(env.get("TAXI_START_MONTH", DEFAULT_START_MONTH), "TAXI_START_MONTH")
    except MonthError as exc:
        raise SettingsError(str(exc)) from exc
    base_url = _parse_base_url(env.get("TLC_BASE_URL", DEFAULT_TLC_BASE_URL))
    services = parse_services(env.get("TAXI_SERVICES", ",".join(DEFAULT_SERVICES)))
    data_dir = load_data_dir(env)
    lake_root = env.get("TAXI_LAKE_ROOT") or str(data_dir / "lake")
    if "://" not in lake_root:
        lake_root = str(Path(lake_root).expanduser().absolute())
    elif not lake_root.startswith(("gs://", "file://", "memory://")):
        raise SettingsError(f"TAXI_LAKE_ROOT={lake_root!r}: expected a local path or gs://bucket/prefix")
    mlflow_uri = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{data_dir / 'mlflow.db'}"
    max_bytes = parse_byte_size(
        env.get("TAXI_DOWNLOAD_MAX_BYTES") or str(DEFAULT_DOWNLOAD_MAX_BYTES), "TAXI_DOWNLOAD_MAX_BYTES"
    )
    deadline = parse_positive_float(
        env.get("TAXI_DOWNLOAD_DEADLINE_SECONDS") or str(DEFAULT_DOWNLOAD_DEADLINE_SECONDS),
        "TAXI_DOWNLOAD_DEADLINE_SECONDS",
    )
    duckdb = load_duckdb_settings(env)
    mlflow_wait = _parse_wait(env.get("TAXI_MLFLOW_WAIT_SECONDS", ""), DEFAULT_MLFLOW_WAIT_SECONDS)
    reports_url = _parse_base_url(env.get("TAXI_REPORTS_URL") or DEFAULT_REPORTS_URL, "TAXI_REPORTS_URL")
    return Settings(
        prediction_log_setting=parse_prediction_log_path(env.get("TAXI_PREDICTION_LOG_PATH", "")),
        start_month=start_month,
        tlc_base_url=base_url,
        services=services,
        data_dir=data_dir,
        lake_root=lake_root.rstrip("/"),
        mlflow_tracking_uri=mlflow_uri,
        download_max_bytes=max_bytes,
        download_deadline_seconds=deadline,
        mlflow_wait_seconds=mlflow_wait,
        duckdb_memory_limit=duckdb.memory_limit,
        reports_url=reports_url,
        automation=load_automation_settings(env),
        bento_base_image=env.get("TAXI_BENTO_BASE_IMAGE", "").strip() or None,
        lock_resource_config=parse_flag(
            env.get("TAXI_LOCK_RESOURCE_CONFIG", ""), "TAXI_LOCK_RESOURCE_CONFIG"
        ),
    )
