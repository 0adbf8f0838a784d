"""How the release sensor retries a month whose run failed: the policy, the runs' outcomes, the failing months.

Retries. Every month the sensor requests gets an attempt entry in the cursor (the run key of its file versions
and the attempts launched). On later ticks the sensor hands in the outcome of the latest run it launched for
that key (:class:`RunOutcome`); when that run failed (and Dagster's own run retries are not retrying it), the
month is requested again once the backoff has passed: ``backoff_seconds * factor ** (failed_attempts - 1)``
after the failure, capped at ``max_backoff_seconds``, up to ``max_attempts`` attempts in all
(:class:`RetryPolicy`). Attempt ``n > 1`` has the run key ``<key>:attempt=n``, so Dagster launches it (an
unchanged key would be deduplicated). A month whose attempts are used up stays "exhausted" (reported every
tick) until its file changes or its ``trip_features`` is materialised by other means; a cancelled run is not
retried. A succeeded run drops the entry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

MAX_ERROR_CHARS = 300

RunStatus = Literal["running", "succeeded", "failed", "canceled", "retrying"]


def shorten_error(message: str | None, limit: int = MAX_ERROR_CHARS) -> str | None:
    """One line of at most ``limit`` characters (a failed run's error for tick messages and the cursor)."""
    if message is None:
        return None
    text = " ".join(message.split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


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
