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
# DuckDB's own default is 80 % of RAM; the training and drift steps also hold pandas frames next to it.
DEFAULT_DUCKDB_MEMORY_LIMIT = "50%"
# Where `taxi-platform ui` serves the local lake's files, so report links in Dagster open in a browser.
DEFAULT_REPORTS_URL = "http://127.0.0.1:3002"
DUCKDB_TEMP_SUBDIR = "duckdb_tmp"
# The fare service's prediction log: where a local service writes it and served_quotes reads it.
PREDICTION_LOG_SUBDIR = "predictions"


class SettingsError(ValueError):
    """A setting read from the environment has a bad value."""


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


def parse_positive_float(value: str, variable: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise SettingsError(f"{variable}={value!r} is not a number of seconds, e.g. 1800") from None
    if not number > 0 or number == float("inf"):
        raise SettingsError(f"{variable}={value!r} must be a positive, finite number of seconds, e.g. 1800")
    return number


_BYTE_UNITS = {
    "": 1,
    "B": 1,
    "K": 1 << 10,
    "KB": 10**3,
    "KIB": 1 << 10,
    "M": 1 << 20,
    "MB": 10**6,
    "MIB": 1 << 20,
    "G": 1 << 30,
    "GB": 10**9,
    "GIB": 1 << 30,
    "T": 1 << 40,
    "TB": 10**12,
    "TIB": 1 << 40,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_byte_size(value: str, variable: str) -> int:
    """``1073741824``, ``1GiB``, ``500MB`` … → bytes (positive)."""
    match = _SIZE_RE.match(value)
    unit = match.group(2).upper() if match else ""
    if not match or unit not in _BYTE_UNITS:
        raise SettingsError(f"{variable}={value!r} is not a size: expected bytes or e.g. '2GiB', '500MB'")
    size = int(float(match.group(1)) * _BYTE_UNITS[unit])
    if size <= 0:
        raise SettingsError(f"{variable}={value!r} must be a positive size, e.g. '2GiB'")
    return size


_MEMORY_LIMIT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB|%)\s*$", re.IGNORECASE)


def parse_memory_limit(value: str, variable: str = "TAXI_DUCKDB_MEMORY_LIMIT") -> str:
    """A DuckDB ``memory_limit``: a size such as ``4GB`` / ``512MiB`` or a share of RAM such as ``50%``."""
    match = _MEMORY_LIMIT_RE.match(value)
    if not match:
        raise SettingsError(
            f"{variable}={value!r} is not a memory limit: expected a size such as '4GB' or '512MiB', or a share "
            "of the machine's memory such as '50%'"
        )
    number, unit = float(match.group(1)), match.group(2).upper()
    if number <= 0 or (unit == "%" and number > 100):
        raise SettingsError(f"{variable}={value!r} must be above 0 (and at most 100%), e.g. '4GB' or '50%'")
    return f"{match.group(1)}{'%' if unit == '%' else unit.replace('IB', 'iB')}"


@dataclass(frozen=True)
class DuckDBSettings:
    """Where DuckDB may spill and how much memory it may use (see :meth:`taxi_platform.lake.lake.Lake.connect`)."""

    temp_root: Path  # each connection spills into its own subdirectory of this one
    memory_limit: str


def load_duckdb_settings(env: dict[str, str] | None = None) -> DuckDBSettings:
    """Only the DuckDB settings (``TAXI_DATA_DIR``, ``TAXI_DUCKDB_MEMORY_LIMIT``), read on every connection."""
    env = dict(os.environ if env is None else env)
    data_dir = Path(env.get("TAXI_DATA_DIR", ".data")).expanduser().absolute()
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


def parse_whole_number(value: str, variable: str, example: int, minimum: int = 1) -> int:
    """A whole number of seconds or runs, at least ``minimum``."""
    try:
        number = int(value.strip())
    except ValueError:
        raise SettingsError(
            f"{variable}={value!r} is not a whole number of seconds/runs, e.g. {example}"
        ) from None
    if number < minimum:
        raise SettingsError(f"{variable}={value!r} is below the minimum {minimum}")
    return number


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


def parse_flag(value: str, variable: str) -> bool:
    """``true``/``1``/``yes``/``on`` or ``false``/``0``/``no``/``off`` (any case); empty: False."""
    flag = value.strip().lower()
    if flag in ("", "false", "0", "no", "off"):
        return False
    if flag in ("true", "1", "yes", "on"):
        return True
    raise SettingsError(f"{variable}={value!r}: expected true or false")


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
class Settings:
    start_month: date
    tlc_base_url: str
    services: tuple[str, ...]
    data_dir: Path
    lake_root: str
    mlflow_tracking_uri: str
    download_max_bytes: int = DEFAULT_DOWNLOAD_MAX_BYTES
    download_deadline_seconds: float = DEFAULT_DOWNLOAD_DEADLINE_SECONDS
    duckdb_memory_limit: str = DEFAULT_DUCKDB_MEMORY_LIMIT
    reports_url: str = DEFAULT_REPORTS_URL
    automation: AutomationSettings = field(default_factory=AutomationSettings)
    # TAXI_PREDICTION_LOG_PATH: an absolute local directory or gs://bucket[/prefix]; None: the default,
    # $TAXI_DATA_DIR/predictions (see prediction_log_path).
    prediction_log_setting: str | None = None
    # TAXI_LOCK_RESOURCE_CONFIG (a deployed instance: true): resource config that decides where credentials, data
    # or code come from may not be set per run (taxi_platform.defs.resources.LOCKED_FIELDS).
    lock_resource_config: bool = False

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


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Read and validate settings from ``env`` (default: ``os.environ``)."""
    env = dict(os.environ if env is None else env)
    try:
        start_month = parse_month(env.get("TAXI_START_MONTH", DEFAULT_START_MONTH), "TAXI_START_MONTH")
    except MonthError as exc:
        raise SettingsError(str(exc)) from exc
    base_url = _parse_base_url(env.get("TLC_BASE_URL", DEFAULT_TLC_BASE_URL))
    services = parse_services(env.get("TAXI_SERVICES", ",".join(DEFAULT_SERVICES)))
    data_dir = Path(env.get("TAXI_DATA_DIR", ".data")).expanduser().absolute()
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
        duckdb_memory_limit=duckdb.memory_limit,
        reports_url=reports_url,
        automation=load_automation_settings(env),
        lock_resource_config=parse_flag(
            env.get("TAXI_LOCK_RESOURCE_CONFIG", ""), "TAXI_LOCK_RESOURCE_CONFIG"
        ),
    )
