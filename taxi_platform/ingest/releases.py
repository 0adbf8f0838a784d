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

Retries. Every month the sensor requests gets an attempt entry in the cursor (the run key of its file versions
and the attempts launched). On later ticks the sensor hands in the outcome of the latest run it launched for
that key (:class:`RunOutcome`); when that run failed (and Dagster's own run retries are not retrying it), the
month is requested again once the backoff has passed: ``backoff_seconds * factor ** (failed_attempts - 1)``
after the failure, capped at ``max_backoff_seconds``, up to ``max_attempts`` attempts in all
(:class:`RetryPolicy`). Attempt ``n > 1`` has the run key ``<key>:attempt=n``, so Dagster launches it (an
unchanged key would be deduplicated). A month whose attempts are used up stays "exhausted" (reported every
tick) until its file changes or its ``trip_features`` is materialised by other means; a cancelled run is not
retried. A succeeded run drops the entry.

The cursor is JSON ``{"format": 2, "months": {"YYYY-MM": {"yellow": "etag:…", "green": "etag:…"}},
"attempts": {"YYYY-MM": {"key": "raw_trips:…", "attempt": 1, "failed_at": null, "error": null, "run_id": null}}}``.
Format 1 cursors (no ``attempts``) are read as they are; a month they record as requested but not
materialised gets an attempt entry, so a run that failed before the upgrade is retried too. An unparseable cursor or one written by another
format is reset (with a warning) rather than failing the sensor.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Literal

from taxi_platform.core.months import month_label, shift_label
from taxi_platform.ingest.tlc_http import parse_http_date
from taxi_platform.ingest.tlc_probe import ProbeResult

CURSOR_FORMAT = 2
READABLE_CURSOR_FORMATS = (1, 2)
ATTEMPT_KEY_SEPARATOR = ":attempt="
MAX_ERROR_CHARS = 300
UNVERSIONED = "unversioned"
_MONTH_KEY = re.compile(r"^\d{4}-\d{2}$")
_MAX_TOKEN_IN_KEY = 48

Reason = Literal["new", "republished", "retry"]
RunStatus = Literal["running", "succeeded", "failed", "canceled", "retrying"]


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


def safety_net_month(today: date, lag_months: int = 2) -> str:
    """``YYYY-MM`` of the month ``lag_months`` before ``today``'s month (the safety-net schedule's target)."""
    return shift_label(today.replace(day=1), -lag_months)


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


def shorten_error(message: str | None, limit: int = MAX_ERROR_CHARS) -> str | None:
    """One line of at most ``limit`` characters (a failed run's error for tick messages and the cursor)."""
    if message is None:
        return None
    text = " ".join(message.split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


# -- retries ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RetryPolicy:
    """How often and how soon the release sensor requests a month again whose run failed."""

    max_attempts: int = 4  # runs in all, the first included; 1 = never retry
    backoff_seconds: float = 3600.0  # wait after the first failure
    factor: float = 2.0  # each further failure multiplies the wait
    max_backoff_seconds: float = 86400.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts={self.max_attempts}: at least 1 (the first run)")
        if not self.backoff_seconds > 0 or not math.isfinite(self.backoff_seconds):
            raise ValueError(f"backoff_seconds={self.backoff_seconds}: expected a positive number")
        if not self.factor >= 1 or not math.isfinite(self.factor):
            raise ValueError(f"factor={self.factor}: expected at least 1")
        if not self.max_backoff_seconds >= self.backoff_seconds:
            raise ValueError(
                f"max_backoff_seconds={self.max_backoff_seconds} is below backoff_seconds={self.backoff_seconds}"
            )

    def delay(self, failed_attempts: int) -> float:
        """Seconds to wait after the ``failed_attempts``-th failed attempt before the next one."""
        exponent = min(max(failed_attempts, 1) - 1, 1000)
        try:
            wait = self.backoff_seconds * self.factor**exponent
        except OverflowError:
            wait = math.inf
        return min(wait, self.max_backoff_seconds)


@dataclass(frozen=True)
class RunOutcome:
    """The latest run the sensor launched for a month's run key (any attempt), as the instance records it.

    ``status``: ``running`` (queued or in progress), ``succeeded``, ``failed``, ``canceled``, or ``retrying``
    (failed, and Dagster's run retries will re-execute it: not the sensor's business). ``ended_at``: POSIX
    time the run ended. ``error``: the failed step's error message (or the run failure's).
    """

    status: RunStatus
    run_id: str = ""
    attempt: int = 1
    ended_at: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class Attempts:
    """Cursor entry: the sensor's runs for one month at the file versions named by ``key``."""

    key: str  # the base run key (names the month's file versions)
    attempt: int = 1  # attempts launched so far
    failed_at: float | None = None  # when the latest attempt failed (None: not failed, or not known yet)
    error: str | None = None  # the latest failure's error, shortened
    run_id: str | None = None  # the failed run

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "attempt": self.attempt,
            "failed_at": self.failed_at,
            "error": self.error,
            "run_id": self.run_id,
        }

    @classmethod
    def from_dict(cls, data: object) -> Attempts | None:
        if not isinstance(data, dict):
            return None
        key, attempt = data.get("key"), data.get("attempt", 1)
        failed_at, error, run_id = data.get("failed_at"), data.get("error"), data.get("run_id")
        if (
            not isinstance(key, str)
            or not isinstance(attempt, int)
            or isinstance(attempt, bool)
            or attempt < 1
        ):
            return None
        if failed_at is not None and not (isinstance(failed_at, int | float) and math.isfinite(failed_at)):
            return None
        return cls(
            key=key,
            attempt=attempt,
            failed_at=float(failed_at) if failed_at is not None else None,
            error=error if isinstance(error, str) else None,
            run_id=run_id if isinstance(run_id, str) else None,
        )


@dataclass(frozen=True)
class Failing:
    """A month whose latest attempt failed: when the next one is due (``None``: attempts are used up)."""

    month: str
    attempt: int  # attempts made (the latest failed)
    max_attempts: int
    error: str | None
    run_id: str | None
    next_at: float | None

    def describe(self) -> str:
        error = self.error or "no error message recorded"
        if self.next_at is None:
            return f"{self.month}: gave up after {self.attempt} of {self.max_attempts} attempts ({error})"
        due = datetime.fromtimestamp(self.next_at, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return (
            f"{self.month}: attempt {self.attempt} of {self.max_attempts} failed ({error}); "
            f"attempt {self.attempt + 1} due at {due}"
        )


# -- cursor ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReleaseCursor:
    """Per month, the file version of each service that the sensor last acted on (requested or adopted),
    and the attempts of the months it requested (see :class:`Attempts`)."""

    months: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    attempts: Mapping[str, Attempts] = field(default_factory=dict)

    def to_json(self) -> str:
        months = {m: dict(sorted(v.items())) for m, v in sorted(self.months.items())}
        attempts = {m: a.to_dict() for m, a in sorted(self.attempts.items())}
        return json.dumps(
            {"format": CURSOR_FORMAT, "months": months, "attempts": attempts}, separators=(",", ":")
        )

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
        if not isinstance(data, dict) or data.get("format") not in READABLE_CURSOR_FORMATS:
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
        attempts: dict[str, Attempts] = {}
        raw_attempts = data.get("attempts", {})
        for month, entry in (raw_attempts if isinstance(raw_attempts, dict) else {}).items():
            parsed = Attempts.from_dict(entry) if isinstance(month, str) and _MONTH_KEY.match(month) else None
            if parsed is None:
                dropped.append(f"attempts:{month}")
            else:
                attempts[month] = parsed
        if not isinstance(raw_attempts, dict):
            dropped.append("attempts")
        warning = f"release sensor cursor: ignored malformed entries {dropped[:5]}" if dropped else None
        return cls(clean, attempts), warning


# -- decision --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReleaseRequest:
    """One month to (re)ingest."""

    month: str  # YYYY-MM
    versions: Mapping[str, str]  # service -> version token
    reason: Reason
    previous: Mapping[str, str] | None = None  # versions last acted on, for a republished month
    attempt: int = 1  # > 1 for a retry of a failed run

    @property
    def partition_key(self) -> str:
        return f"{self.month}-01"

    @property
    def base_run_key(self) -> str:
        """The key naming the file versions (the first attempt's run key)."""
        return run_key(self.month, self.versions)

    @property
    def run_key(self) -> str:
        return attempt_run_key(self.base_run_key, self.attempt)

    @property
    def changed_services(self) -> tuple[str, ...]:
        if self.reason == "retry":
            return ()
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
    failing: tuple[Failing, ...] = ()  # latest attempt failed, next attempt waits for its backoff
    exhausted: tuple[Failing, ...] = ()  # every attempt failed; no more runs at these file versions
    canceled: tuple[str, ...] = ()  # the latest run was canceled: not retried
    retrying: tuple[str, ...] = ()  # the latest run failed and Dagster's run retries re-execute it

    def summary(self) -> str:
        parts = [f"{len(self.requests)} to run"]
        if self.requests:
            parts[0] += (
                " ("
                + ", ".join(
                    f"{r.month} {r.reason}" + (f" attempt {r.attempt}" if r.attempt > 1 else "")
                    for r in self.requests
                )
                + ")"
            )
        parts.append(f"{self.unchanged} unchanged")
        for label, months in (
            ("adopted", self.adopted),
            ("pending", self.pending),
            ("waiting for the TLC", self.waiting),
            ("withdrawn from the source", self.withdrawn),
            ("deferred to the next tick", self.deferred),
            ("run failed, Dagster run retries re-executing", self.retrying),
            ("run canceled, not retried", self.canceled),
        ):
            if months:
                parts.append(f"{label}: {_span(months)}")
        if self.errors:
            parts.append(f"probe errors for {_span(sorted(self.errors))}")
        for label, items in (("failing", self.failing), ("attempts exhausted", self.exhausted)):
            if items:
                more = f"; and {len(items) - 3} more (see the tick's log)" if len(items) > 3 else ""
                parts.append(f"{label}: " + "; ".join(f.describe() for f in items[:3]) + more)
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
    runs: Mapping[str, RunOutcome] | None = None,
    now: float | None = None,
    retry: RetryPolicy | None = None,
) -> ReleaseDecision:
    """Decide which months to run.

    ``probes``: month (``YYYY-MM``) -> service -> probe of that service's file. Months absent here are not
    looked at and keep their cursor entries. ``materialized``: months (``YYYY-MM`` or partition keys) that
    ``raw_trips`` holds. ``recorded_versions``: for materialised months, the versions recorded in their
    latest materialisation (used when the cursor does not know the month). ``max_requests`` caps the runs
    requested in one tick, oldest months first; the rest are deferred (their cursor entries stay as they were,
    so a later tick requests them). ``runs``: month -> the latest run launched for the run key in the month's
    cursor attempt entry (absent: none found). ``now``: POSIX time of the tick (default: the clock).
    ``retry``: the retry policy (default :class:`RetryPolicy`).
    """
    policy = retry or RetryPolicy()
    clock = time.time() if now is None else now
    outcomes = runs or {}
    services = tuple(sorted(set(services)))
    if not services:
        raise ValueError("no services configured: expected e.g. ('yellow', 'green')")
    done = {month_label(m) for m in materialized}
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
    next_attempts: dict[str, Attempts] = dict(cursor.attempts)
    failing: list[Failing] = []
    exhausted: list[Failing] = []
    canceled: list[str] = []
    retrying: list[str] = []
    reported: set[str] = set()  # months follow_up filed as failing, exhausted, canceled or retrying

    def follow_up(month: str, versions: Mapping[str, str]) -> ReleaseRequest | None:
        """For a month already acted on at ``versions``: a retry request if its failed run is due one."""
        state = next_attempts.get(month)
        if state is None:
            return None
        if state.key != run_key(month, versions):  # attempts of other file versions: stale
            del next_attempts[month]
            return None
        outcome = outcomes.get(month)
        if outcome is None or outcome.status == "running":
            return None
        if outcome.status == "succeeded":
            del next_attempts[month]
            return None
        if outcome.attempt < state.attempt:  # the attempt requested last has no run yet: wait for it
            return None
        if outcome.status in ("retrying", "canceled"):
            (retrying if outcome.status == "retrying" else canceled).append(month)
            reported.add(month)
            return None
        attempt = max(state.attempt, outcome.attempt)
        same_failure = state.run_id == outcome.run_id and state.failed_at is not None
        failed_at = (
            state.failed_at if same_failure else (outcome.ended_at if outcome.ended_at is not None else clock)
        )
        state = Attempts(state.key, attempt, failed_at, shorten_error(outcome.error), outcome.run_id)
        next_attempts[month] = state
        reported.add(month)
        if attempt >= policy.max_attempts:
            exhausted.append(Failing(month, attempt, policy.max_attempts, state.error, state.run_id, None))
            return None
        due = failed_at + policy.delay(attempt)
        if clock < due:
            failing.append(Failing(month, attempt, policy.max_attempts, state.error, state.run_id, due))
            return None
        return ReleaseRequest(month=month, versions=versions, reason="retry", attempt=attempt + 1)

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
                retry_request = follow_up(month, versions)
                if retry_request is None:
                    unchanged += month not in reported
                    continue
            else:
                retry_request = None
            reason: Reason = "republished"
        else:
            if seen is not None and all(seen.get(s) == versions[s] for s in services):
                if month not in next_attempts:  # requested before attempts were kept (format-1 cursor)
                    next_attempts[month] = Attempts(key=run_key(month, versions), attempt=1)
                retry_request = follow_up(month, versions)
                if retry_request is None:
                    if month not in reported:
                        pending.append(month)
                    continue
            else:
                retry_request = None
            reason = "new" if seen is None else "republished"

        if max_requests is not None and len(requests) >= max_requests:
            deferred.append(month)
            continue
        if retry_request is not None:
            requests.append(retry_request)
            next_attempts[month] = Attempts(key=retry_request.base_run_key, attempt=retry_request.attempt)
            continue
        request = ReleaseRequest(month=month, versions=versions, reason=reason, previous=seen)
        requests.append(request)
        next_months[month] = versions
        next_attempts[month] = Attempts(key=request.base_run_key, attempt=1)

    return ReleaseDecision(
        requests=tuple(requests),
        cursor=ReleaseCursor(next_months, next_attempts),
        waiting=tuple(waiting),
        errors=errors,
        adopted=tuple(adopted),
        pending=tuple(pending),
        withdrawn=tuple(withdrawn),
        deferred=tuple(deferred),
        unchanged=unchanged,
        failing=tuple(failing),
        exhausted=tuple(exhausted),
        canceled=tuple(canceled),
        retrying=tuple(retrying),
    )
