"""The release sensor's cursor: the file versions it acted on and the attempts of the months it requested.

The cursor is JSON ``{"format": 2, "months": {"YYYY-MM": {"yellow": "etag:…", "green": "etag:…"}},
"attempts": {"YYYY-MM": {"key": "raw_trips:…", "attempt": 1, "failed_at": null, "error": null, "run_id": null}}}``.
Format 1 cursors (no ``attempts``) are read as they are; a month they record as requested but not
materialised gets an attempt entry, so a run that failed before the upgrade is retried too. An unparseable cursor
or one written by another format is reset (with a warning) rather than failing the sensor.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

CURSOR_FORMAT = 2
READABLE_CURSOR_FORMATS = (1, 2)
_MONTH_KEY = re.compile(r"^\d{4}-\d{2}$")


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
