"""Months: parsing, labels, shifts and ranges. The one place that knows how a month is written.

A month is written ``YYYY-MM`` (its *label*); Dagster's monthly partition keys are ``YYYY-MM-01``; both parse.
A range is ``FIRST:LAST`` (inclusive); a months list is comma-separated items, each a month or a range.
"""

from __future__ import annotations

import json
import re
from datetime import date

_MONTH_RE = re.compile(r"^(\d{4})-(\d{2})(?:-01)?$")
FIRST_TLC_YEAR = 2009


class MonthError(ValueError):
    """A month or months list that cannot be read; the message names the value and the expected form."""


def parse_month(value: str | date, variable: str = "month") -> date:
    """``YYYY-MM`` or a partition key ``YYYY-MM-01`` (or a date) → the first day of that month."""
    if isinstance(value, date):
        return value.replace(day=1)
    text = str(value).strip()
    match = _MONTH_RE.match(text)
    if not match:
        raise MonthError(f"{variable}={value!r} is not a month: expected YYYY-MM, e.g. 2024-03")
    year, month = int(match.group(1)), int(match.group(2))
    if not 1 <= month <= 12:
        raise MonthError(f"{variable}={value!r} has month {month:02d}: expected 01-12, e.g. 2024-03")
    if year < FIRST_TLC_YEAR or year > 2100:
        raise MonthError(f"{variable}={value!r}: TLC trip records start in 2009; expected a year 2009-2100")
    return date(year, month, 1)


def month_label(value: str | date) -> str:
    """``YYYY-MM`` of a month, a partition key or a date."""
    return parse_month(value).strftime("%Y-%m")


def partition_key(value: str | date) -> str:
    """``YYYY-MM-01``: the monthly partition key of a month."""
    return parse_month(value).strftime("%Y-%m-01")


def shift_month(value: str | date, delta: int) -> date:
    """The month ``delta`` months after ``value`` (before it if negative)."""
    month = parse_month(value) if not isinstance(value, date) else value
    index = month.year * 12 + (month.month - 1) + delta
    return date(index // 12, index % 12 + 1, 1)


def shift_label(value: str | date, delta: int) -> str:
    """:func:`shift_month` written as ``YYYY-MM``."""
    return shift_month(value, delta).strftime("%Y-%m")


def months_between(earlier: str | date, later: str | date) -> int:
    """Whole months from ``earlier`` to ``later``, negative if ``later`` is before."""
    a, b = parse_month(earlier), parse_month(later)
    return (b.year - a.year) * 12 + (b.month - a.month)


def month_range(first: str | date, last: str | date) -> list[date]:
    """Every month from ``first`` to ``last`` inclusive (empty if ``last`` is before ``first``)."""
    start = parse_month(first)
    return [shift_month(start, k) for k in range(months_between(start, last) + 1)]


def parse_months(text: str, variable: str = "months") -> list[date]:
    """``"2024-01:2024-06"``, ``"2024-03"``, comma-separated items of either, or a JSON list → sorted months.

    Duplicates collapse; a range that ends before it starts is an error, not an empty list.
    """
    raw = str(text).strip()
    if raw.startswith("["):
        try:
            items = [str(v).strip() for v in json.loads(raw)]
        except json.JSONDecodeError as exc:
            raise MonthError(f"{variable}={text!r} is not a JSON list of months: {exc.msg}") from exc
    else:
        items = [item.strip() for item in raw.split(",") if item.strip()]
    if not items:
        raise MonthError(f"{variable}={text!r} is empty: expected e.g. 2024-01:2024-06 or 2024-03")
    months: set[date] = set()
    for item in items:
        if ":" in item:
            first_text, _, last_text = item.partition(":")
            first, last = parse_month(first_text, variable), parse_month(last_text, variable)
            if last < first:
                raise MonthError(
                    f"{variable}={item!r} ends before it starts: expected FIRST:LAST, e.g. 2024-01:2024-06"
                )
            months.update(month_range(first, last))
        elif _MONTH_RE.match(item):
            months.add(parse_month(item, variable))
        else:
            raise MonthError(
                f"{variable} item {item!r} is not YYYY-MM or YYYY-MM:YYYY-MM, e.g. 2024-01:2024-06"
            )
    return sorted(months)


def parse_month_labels(text: str, variable: str = "months") -> tuple[str, ...]:
    """:func:`parse_months` written as ``YYYY-MM`` labels."""
    return tuple(m.strftime("%Y-%m") for m in parse_months(text, variable))
