"""Platform settings, read from environment variables (see DESIGN.md "Interfaces").

One place validates every setting, so a bad value fails early with a message that says which
variable is wrong and what a good value looks like.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

DEFAULT_TLC_BASE_URL = "https://d37ci6vzurychx.cloudfront.net"
DEFAULT_START_MONTH = "2023-01"
DEFAULT_SERVICES = ("yellow", "green")
KNOWN_SERVICES = ("yellow", "green")
MODEL_NAME = "taxi_fare_model"

_MONTH_RE = re.compile(r"^(\d{4})-(\d{2})$")


class SettingsError(ValueError):
    """A setting read from the environment has a bad value."""


def parse_month(value: str, variable: str = "month") -> date:
    """Parse ``YYYY-MM`` (or a partition key ``YYYY-MM-01``) into the first day of that month."""
    text = value.strip()
    if re.fullmatch(r"\d{4}-\d{2}-01", text):
        text = text[:7]
    match = _MONTH_RE.match(text)
    if not match:
        raise SettingsError(f"{variable}={value!r} is not a month: expected YYYY-MM, e.g. 2024-03")
    year, month = int(match.group(1)), int(match.group(2))
    if not 1 <= month <= 12:
        raise SettingsError(f"{variable}={value!r} has month {month:02d}: expected 01-12, e.g. 2024-03")
    if year < 2009 or year > 2100:
        raise SettingsError(f"{variable}={value!r}: TLC trip records start in 2009; expected a year 2009-2100")
    return date(year, month, 1)


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


def _parse_base_url(value: str) -> str:
    url = value.strip().rstrip("/")
    if not re.match(r"^(https?|file)://", url):
        raise SettingsError(f"TLC_BASE_URL={value!r} is not an http(s) URL, e.g. {DEFAULT_TLC_BASE_URL}")
    return url


@dataclass(frozen=True)
class Settings:
    start_month: date
    tlc_base_url: str
    services: tuple[str, ...]
    data_dir: Path
    lake_root: str
    mlflow_tracking_uri: str

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
    start_month = parse_month(env.get("TAXI_START_MONTH", DEFAULT_START_MONTH), "TAXI_START_MONTH")
    base_url = _parse_base_url(env.get("TLC_BASE_URL", DEFAULT_TLC_BASE_URL))
    services = parse_services(env.get("TAXI_SERVICES", ",".join(DEFAULT_SERVICES)))
    data_dir = Path(env.get("TAXI_DATA_DIR", ".data")).expanduser().absolute()
    lake_root = env.get("TAXI_LAKE_ROOT") or str(data_dir / "lake")
    if "://" not in lake_root:
        lake_root = str(Path(lake_root).expanduser().absolute())
    elif not lake_root.startswith(("gs://", "file://", "memory://")):
        raise SettingsError(f"TAXI_LAKE_ROOT={lake_root!r}: expected a local path or gs://bucket/prefix")
    mlflow_uri = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{data_dir / 'mlflow.db'}"
    return Settings(
        start_month=start_month,
        tlc_base_url=base_url,
        services=services,
        data_dir=data_dir,
        lake_root=lake_root.rstrip("/"),
        mlflow_tracking_uri=mlflow_uri,
    )
