"""What names a TLC file version for the release sensor, and the run keys built from those names.

A file's version is its ETag; without one, its parsed Last-Modified; without that, its size. The run key of a
month is ``raw_trips:YYYY-MM:service=version,...``, and attempt ``n > 1`` of it ``<key>:attempt=n``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime

from taxi_platform.ingest.tlc_http import parse_http_date
from taxi_platform.ingest.tlc_probe import ProbeResult

ATTEMPT_KEY_SEPARATOR = ":attempt="
UNVERSIONED = "unversioned"
_MAX_TOKEN_IN_KEY = 48


def version_token(probe: ProbeResult) -> str:
    """A stable identifier of the file version a probe saw: ETag, else Last-Modified, else size."""
    if probe.etag:
        return f"etag:{probe.etag}"
    if probe.last_modified is not None:
        return f"lm:{probe.last_modified.astimezone(UTC).isoformat()}"
    if probe.size is not None:
        return f"size:{probe.size}"
    return UNVERSIONED


def version_from_metadata(
    etag: str | None, last_modified: float | datetime | str | None, size: int | None = None
) -> str | None:
    """The :func:`version_token` of a file as recorded in a ``raw_trips`` materialisation's metadata.

    ``last_modified`` may be a POSIX timestamp (Dagster timestamp metadata), a datetime, or the raw header
    text. Returns ``None`` when nothing usable was recorded.
    """
    if etag:
        return f"etag:{etag}"
    parsed: datetime | None = None
    if isinstance(last_modified, int | float):
        parsed = datetime.fromtimestamp(float(last_modified), tz=UTC)
    elif isinstance(last_modified, datetime):
        parsed = last_modified if last_modified.tzinfo else last_modified.replace(tzinfo=UTC)
    elif isinstance(last_modified, str):
        parsed = parse_http_date(last_modified)
    if parsed is not None:
        return f"lm:{parsed.astimezone(UTC).isoformat()}"
    if size is not None:
        return f"size:{size}"
    return None


def run_key(month: str, versions: Mapping[str, str]) -> str:
    """``raw_trips:YYYY-MM:green=…,yellow=…``; long version tokens are shortened to a hash."""

    def short(token: str) -> str:
        if len(token) <= _MAX_TOKEN_IN_KEY:
            return token
        return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:16]

    parts = ",".join(f"{s}={short(versions[s])}" for s in sorted(versions))
    return f"raw_trips:{month}:{parts}"


def attempt_run_key(key: str, attempt: int) -> str:
    """The run key of attempt ``attempt`` (1 = the first run) of the versions named by ``key``."""
    return key if attempt <= 1 else f"{key}{ATTEMPT_KEY_SEPARATOR}{attempt}"
