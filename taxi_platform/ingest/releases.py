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

Retries of failed runs: :mod:`taxi_platform.ingest.release_retries`; the cursor:
:mod:`taxi_platform.ingest.release_cursor`; version tokens and run keys: :mod:`taxi_platform.ingest.release_versions`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Literal

from taxi_platform.core.months import month_label, shift_label
from taxi_platform.ingest.release_cursor import Attempts, ReleaseCursor
from taxi_platform.ingest.release_retries import Failing, RetryPolicy, RunOutcome, shorten_error
from taxi_platform.ingest.release_versions import attempt_run_key, run_key, version_token
from taxi_platform.ingest.tlc_probe import ProbeResult

Reason = Literal["new", "republished", "retry"]


def safety_net_month(today: date, lag_months: int = 2) -> str:
    """``YYYY-MM`` of the month ``lag_months`` before ``today``'s month (the safety-net schedule's target)."""
    return shift_label(today.replace(day=1), -lag_months)


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
    services = tuple(sorted(set(services)))
    if not services:
        raise ValueError("no services configured: expected e.g. ('yellow', 'green')")
    tick = _Tick(
        cursor=cursor,
        services=services,
        done={month_label(m) for m in materialized},
        recorded=recorded_versions or {},
        max_requests=max_requests,
        outcomes=runs or {},
        clock=time.time() if now is None else now,
        policy=retry or RetryPolicy(),
    )
    for month in sorted(probes):
        tick.consider(month, probes[month])
    return tick.decision()


_WantedRun = tuple[
    Reason, Mapping[str, str] | None, ReleaseRequest | None
]  # reason, versions seen, retry request


@dataclass
class _Tick:
    """One call of :func:`decide`: its inputs, and the decision taking shape month by month (oldest first)."""

    cursor: ReleaseCursor
    services: tuple[str, ...]
    done: set[str]  # materialised months
    recorded: Mapping[str, Mapping[str, str]]
    max_requests: int | None
    outcomes: Mapping[str, RunOutcome]
    clock: float
    policy: RetryPolicy
    next_months: dict[str, dict[str, str]] = field(init=False)
    next_attempts: dict[str, Attempts] = field(init=False)
    requests: list[ReleaseRequest] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    errors: dict[str, tuple[str, ...]] = field(default_factory=dict)
    adopted: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    withdrawn: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    unchanged: int = 0
    failing: list[Failing] = field(default_factory=list)
    exhausted: list[Failing] = field(default_factory=list)
    canceled: list[str] = field(default_factory=list)
    retrying: list[str] = field(default_factory=list)
    reported: set[str] = field(
        default_factory=set
    )  # months follow_up filed as failing, exhausted, canceled or retrying

    def __post_init__(self) -> None:
        self.next_months = {m: dict(v) for m, v in self.cursor.months.items()}
        self.next_attempts = dict(self.cursor.attempts)

    def consider(self, month: str, month_probes: Mapping[str, ProbeResult]) -> None:
        """File one month: a request, or the reason it needs none."""
        if not self._all_published(month, month_probes):
            return
        versions = {s: version_token(month_probes[s]) for s in self.services}
        if month in self.done:
            wanted = self._materialised(month, versions)
        else:
            wanted = self._not_materialised(month, versions)
        if wanted is not None:
            self._request(month, versions, *wanted)

    def _all_published(self, month: str, month_probes: Mapping[str, ProbeResult]) -> bool:
        """Whether every service's file of ``month`` is published; if not, file the month as an error or waiting."""
        missing_probe = [s for s in self.services if s not in month_probes]
        if missing_probe:
            self.errors[month] = tuple(f"{s}: not probed" for s in missing_probe)
            return False
        failed = {s: month_probes[s] for s in self.services if month_probes[s].status == "error"}
        if failed:
            self.errors[month] = tuple(f"{s}: {p.message or 'error'} ({p.url})" for s, p in failed.items())
            return False
        if any(month_probes[s].status != "published" for s in self.services):
            (self.withdrawn if month in self.done else self.waiting).append(month)
            return False
        return True

    def _same(self, seen: Mapping[str, str], versions: Mapping[str, str]) -> bool:
        return all(seen.get(s) == versions[s] for s in self.services)

    def _materialised(self, month: str, versions: dict[str, str]) -> _WantedRun | None:
        """A run for a month ``raw_trips`` holds, if its files changed or its failed run is due a retry."""
        seen = self.cursor.months.get(month)
        if seen is None:
            baseline = self.recorded.get(month)
            if not baseline or all(baseline.get(s) in (None, versions[s]) for s in self.services):
                self.next_months[month] = versions
                self.adopted.append(month)
                return None
            seen = baseline
        if not self._same(seen, versions):
            return "republished", seen, None
        self.next_months[month] = versions
        retry_request = self.follow_up(month, versions)
        if retry_request is None:
            self.unchanged += month not in self.reported
            return None
        return "republished", seen, retry_request

    def _not_materialised(self, month: str, versions: dict[str, str]) -> _WantedRun | None:
        """A run for a month ``raw_trips`` lacks, unless one was requested at these versions and is not due again."""
        seen = self.cursor.months.get(month)
        if seen is None or not self._same(seen, versions):
            return ("new" if seen is None else "republished"), seen, None
        if month not in self.next_attempts:  # requested before attempts were kept (format-1 cursor)
            self.next_attempts[month] = Attempts(key=run_key(month, versions), attempt=1)
        retry_request = self.follow_up(month, versions)
        if retry_request is None:
            if month not in self.reported:
                self.pending.append(month)
            return None
        return "republished", seen, retry_request

    def _request(
        self,
        month: str,
        versions: dict[str, str],
        reason: Reason,
        seen: Mapping[str, str] | None,
        retry_request: ReleaseRequest | None,
    ) -> None:
        """Request the month's run (or its retry), unless this tick's request limit is reached."""
        if self.max_requests is not None and len(self.requests) >= self.max_requests:
            self.deferred.append(month)
            return
        if retry_request is not None:
            self.requests.append(retry_request)
            self.next_attempts[month] = Attempts(
                key=retry_request.base_run_key, attempt=retry_request.attempt
            )
            return
        request = ReleaseRequest(month=month, versions=versions, reason=reason, previous=seen)
        self.requests.append(request)
        self.next_months[month] = versions
        self.next_attempts[month] = Attempts(key=request.base_run_key, attempt=1)

    def follow_up(self, month: str, versions: Mapping[str, str]) -> ReleaseRequest | None:
        """For a month already acted on at ``versions``: a retry request if its failed run is due one."""
        state = self.next_attempts.get(month)
        if state is None:
            return None
        if state.key != run_key(month, versions):  # attempts of other file versions: stale
            del self.next_attempts[month]
            return None
        outcome = self.outcomes.get(month)
        if outcome is None or outcome.status == "running":
            return None
        if outcome.status == "succeeded":
            del self.next_attempts[month]
            return None
        if outcome.attempt < state.attempt:  # the attempt requested last has no run yet: wait for it
            return None
        if outcome.status in ("retrying", "canceled"):
            (self.retrying if outcome.status == "retrying" else self.canceled).append(month)
            self.reported.add(month)
            return None
        attempt = max(state.attempt, outcome.attempt)
        same_failure = state.run_id == outcome.run_id and state.failed_at is not None
        failed_at = (
            state.failed_at
            if same_failure
            else (outcome.ended_at if outcome.ended_at is not None else self.clock)
        )
        state = Attempts(state.key, attempt, failed_at, shorten_error(outcome.error), outcome.run_id)
        self.next_attempts[month] = state
        self.reported.add(month)
        if attempt >= self.policy.max_attempts:
            self.exhausted.append(
                Failing(month, attempt, self.policy.max_attempts, state.error, state.run_id, None)
            )
            return None
        due = failed_at + self.policy.delay(attempt)
        if self.clock < due:
            self.failing.append(
                Failing(month, attempt, self.policy.max_attempts, state.error, state.run_id, due)
            )
            return None
        return ReleaseRequest(month=month, versions=versions, reason="retry", attempt=attempt + 1)

    def decision(self) -> ReleaseDecision:
        return ReleaseDecision(
            requests=tuple(self.requests),
            cursor=ReleaseCursor(self.next_months, self.next_attempts),
            waiting=tuple(self.waiting),
            errors=self.errors,
            adopted=tuple(self.adopted),
            pending=tuple(self.pending),
            withdrawn=tuple(self.withdrawn),
            deferred=tuple(self.deferred),
            unchanged=self.unchanged,
            failing=tuple(self.failing),
            exhausted=tuple(self.exhausted),
            canceled=tuple(self.canceled),
            retrying=tuple(self.retrying),
        )
