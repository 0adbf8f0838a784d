"""Which TLC months to (re)ingest: the pure decision behind the ``tlc_release_sensor``.

The sensor probes the source with ``HEAD`` requests and hands the answers here, together with its cursor
(the file versions it has already acted on) and the months the lake already holds. :func:`decide` returns
the months to run and the next cursor; it does no I/O, so every case is unit-tested without Dagster.

Rules, per month (oldest first):

* A month runs only when **every** configured service's file is published. A month with a probe error is
  left alone (its cursor entry is kept) and reported; one with a missing file is "waiting".
* A file's version is its ETag; without one, its parsed Last-Modified; without that, its size. A garbage
  ``Last-Modified`` header therefore never makes a version change by itself.
* Not materialised and not yet requested at these versions -> request (``new``).
* Materialised and the versions differ from the ones last acted on -> request (``republished``).
* Materialised but unknown to the cursor (it was backfilled, or the cursor was reset): adopt the versions
  recorded in the materialisation's metadata as the baseline; if they differ from the source now, the file
  was republished since -> request; if the metadata has no versions, adopt the probed ones (no run).
* The run key is ``raw_trips:YYYY-MM:service=version,...``: the same file versions always give the same key,
  so Dagster never starts a second run for them (even after a cursor reset), and a revised file gives a new
  key and exactly one new run.

The cursor is JSON ``{"format": 1, "months": {"YYYY-MM": {"yellow": "etag:…", "green": "etag:…"}}}``. An
unparseable cursor or one written by another format is reset (with a warning) rather than failing the sensor.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Literal

from taxi_platform.lib.tlc import ProbeResult, parse_http_date

CURSOR_FORMAT = 1
UNVERSIONED = "unversioned"
_MONTH_KEY = re.compile(r"^\d{4}-\d{2}$")
_MAX_TOKEN_IN_KEY = 48

Reason = Literal["new", "republished"]


# -- versions --------------------------------------------------------------------------------------
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


def month_of(partition_key: str) -> str:
    """``YYYY-MM`` of a partition key ``YYYY-MM-01`` (or of ``YYYY-MM`` itself)."""
    month = partition_key[:7]
    if not _MONTH_KEY.match(month):
        raise ValueError(f"{partition_key!r} is not a monthly partition key (expected YYYY-MM-01)")
    return month


def safety_net_month(today: date, lag_months: int = 2) -> str:
    """``YYYY-MM`` of the month ``lag_months`` before ``today``'s month (the safety-net schedule's target)."""
    index = today.year * 12 + (today.month - 1) - lag_months
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def run_key(month: str, versions: Mapping[str, str]) -> str:
    """``raw_trips:YYYY-MM:green=…,yellow=…``; long version tokens are shortened to a hash."""

    def short(token: str) -> str:
        if len(token) <= _MAX_TOKEN_IN_KEY:
            return token
        return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:16]

    parts = ",".join(f"{s}={short(versions[s])}" for s in sorted(versions))
    return f"raw_trips:{month}:{parts}"


# -- cursor ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReleaseCursor:
    """Per month, the file version of each service that the sensor last acted on (requested or adopted)."""

    months: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def to_json(self) -> str:
        months = {m: dict(sorted(v.items())) for m, v in sorted(self.months.items())}
        return json.dumps({"format": CURSOR_FORMAT, "months": months}, separators=(",", ":"))

    @classmethod
    def parse(cls, raw: str | None) -> tuple[ReleaseCursor, str | None]:
        """Read a cursor; returns ``(cursor, warning)``. A bad or foreign cursor gives an empty one and a warning."""
        if raw is None or not raw.strip():
            return cls(), None
        try:
            data = json.loads(raw)
        except ValueError as exc:
            return (
                cls(),
                f"release sensor cursor is not JSON ({exc}); starting from an empty cursor: {raw[:80]!r}",
            )
        if not isinstance(data, dict) or data.get("format") != CURSOR_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            return cls(), (
                f"release sensor cursor has format {found!r}, this version writes format {CURSOR_FORMAT}; "
                "starting from an empty cursor (materialised months are re-baselined from their metadata, "
                "so nothing is downloaded again unless the source changed)"
            )
        months = data.get("months")
        if not isinstance(months, dict):
            return cls(), "release sensor cursor has no 'months' mapping; starting from an empty cursor"
        clean: dict[str, dict[str, str]] = {}
        dropped: list[str] = []
        for month, versions in months.items():
            if (
                isinstance(month, str)
                and _MONTH_KEY.match(month)
                and isinstance(versions, dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in versions.items())
            ):
                clean[month] = dict(versions)
            else:
                dropped.append(str(month))
        warning = f"release sensor cursor: ignored malformed entries {dropped[:5]}" if dropped else None
        return cls(clean), warning


# -- decision --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReleaseRequest:
    """One month to (re)ingest."""

    month: str  # YYYY-MM
    versions: Mapping[str, str]  # service -> version token
    reason: Reason
    previous: Mapping[str, str] | None = None  # versions last acted on, for a republished month

    @property
    def partition_key(self) -> str:
        return f"{self.month}-01"

    @property
    def run_key(self) -> str:
        return run_key(self.month, self.versions)

    @property
    def changed_services(self) -> tuple[str, ...]:
        prev = self.previous or {}
        return tuple(s for s in sorted(self.versions) if prev.get(s) != self.versions[s])


@dataclass(frozen=True)
class ReleaseDecision:
    requests: tuple[ReleaseRequest, ...]
    cursor: ReleaseCursor
    waiting: tuple[str, ...] = ()  # months with a file not published yet
    errors: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # month -> probe error messages
    adopted: tuple[str, ...] = ()  # materialised months whose versions were taken as the baseline
    pending: tuple[str, ...] = ()  # requested earlier at these versions, not materialised (yet)
    withdrawn: tuple[str, ...] = ()  # materialised months whose file the source no longer has
    deferred: tuple[str, ...] = ()  # would run, but over this tick's request limit
    unchanged: int = 0

    def summary(self) -> str:
        parts = [f"{len(self.requests)} to run"]
        if self.requests:
            parts[0] += " (" + ", ".join(f"{r.month} {r.reason}" for r in self.requests) + ")"
        parts.append(f"{self.unchanged} unchanged")
        for label, months in (
            ("adopted", self.adopted),
            ("pending", self.pending),
            ("waiting for the TLC", self.waiting),
            ("withdrawn from the source", self.withdrawn),
            ("deferred to the next tick", self.deferred),
        ):
            if months:
                parts.append(f"{label}: {_span(months)}")
        if self.errors:
            parts.append(f"probe errors for {_span(sorted(self.errors))}")
        return "; ".join(parts)

    def error_text(self, limit: int = 3) -> str:
        lines = [f"{m}: {msg}" for m in sorted(self.errors) for msg in self.errors[m]]
        more = f" (+{len(lines) - limit} more)" if len(lines) > limit else ""
        return "; ".join(lines[:limit]) + more


def _span(months: Iterable[str]) -> str:
    items = sorted(months)
    if len(items) <= 4:
        return ", ".join(items)
    return f"{len(items)} months from {items[0]} to {items[-1]}"


def decide(
    probes: Mapping[str, Mapping[str, ProbeResult]],
    cursor: ReleaseCursor,
    materialized: Iterable[str],
    services: Iterable[str],
    recorded_versions: Mapping[str, Mapping[str, str]] | None = None,
    max_requests: int | None = None,
) -> ReleaseDecision:
    """Decide which months to run.

    ``probes``: month (``YYYY-MM``) -> service -> probe of that service's file. Months absent here are not
    looked at and keep their cursor entries. ``materialized``: months (``YYYY-MM`` or partition keys) that
    ``raw_trips`` holds. ``recorded_versions``: for materialised months, the versions recorded in their
    latest materialisation (used when the cursor does not know the month). ``max_requests`` caps the runs
    requested in one tick, oldest months first; the rest are deferred (their cursor entries stay as they were,
    so a later tick requests them).
    """
    services = tuple(sorted(set(services)))
    if not services:
        raise ValueError("no services configured: expected e.g. ('yellow', 'green')")
    done = {month_of(m) for m in materialized}
    recorded = recorded_versions or {}
    next_months: dict[str, dict[str, str]] = {m: dict(v) for m, v in cursor.months.items()}
    requests: list[ReleaseRequest] = []
    waiting: list[str] = []
    errors: dict[str, tuple[str, ...]] = {}
    adopted: list[str] = []
    pending: list[str] = []
    withdrawn: list[str] = []
    deferred: list[str] = []
    unchanged = 0

    for month in sorted(probes):
        month_probes = probes[month]
        missing_probe = [s for s in services if s not in month_probes]
        if missing_probe:
            errors[month] = tuple(f"{s}: not probed" for s in missing_probe)
            continue
        failed = {s: month_probes[s] for s in services if month_probes[s].status == "error"}
        if failed:
            errors[month] = tuple(f"{s}: {p.message or 'error'} ({p.url})" for s, p in failed.items())
            continue
        if any(month_probes[s].status != "published" for s in services):
            (withdrawn if month in done else waiting).append(month)
            continue

        versions = {s: version_token(month_probes[s]) for s in services}
        seen = cursor.months.get(month)
        if month in done:
            if seen is None:
                baseline = recorded.get(month)
                if not baseline or all(baseline.get(s) in (None, versions[s]) for s in services):
                    next_months[month] = versions
                    adopted.append(month)
                    continue
                seen = baseline
            if all(seen.get(s) == versions[s] for s in services):
                next_months[month] = versions
                unchanged += 1
                continue
            reason: Reason = "republished"
        else:
            if seen is not None and all(seen.get(s) == versions[s] for s in services):
                pending.append(month)
                continue
            reason = "new" if seen is None else "republished"

        if max_requests is not None and len(requests) >= max_requests:
            deferred.append(month)
            continue
        requests.append(ReleaseRequest(month=month, versions=versions, reason=reason, previous=seen))
        next_months[month] = versions

    return ReleaseDecision(
        requests=tuple(requests),
        cursor=ReleaseCursor(next_months),
        waiting=tuple(waiting),
        errors=errors,
        adopted=tuple(adopted),
        pending=tuple(pending),
        withdrawn=tuple(withdrawn),
        deferred=tuple(deferred),
        unchanged=unchanged,
    )
