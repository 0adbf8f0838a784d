"""The dated NYC taxi rate card: which fare and surcharge amounts were in force on a pickup date.

The card is data, ``rate_card.csv`` next to this module: one row per (service, component, effective date) with
the columns ``service`` (``yellow``, ``green`` or ``*`` for both), ``component`` (one of :data:`COMPONENTS`),
``amount`` (US dollars), ``effective_from`` (ISO date; the amount holds from 00:00 of that day, in the pickup's
local time, until the next row of the same component and service), ``source`` (a public URL) and ``note``.
Lines starting with ``#`` are comments. Before a component's first row its amount is 0 (no congestion surcharge
before 2019-02-02, no CBD fee before 2025-01-05).

:func:`load_rate_card` reads and validates a card (the packaged one by default); :func:`amount_at` looks up a
component's amount at many pickup instants at once; :func:`tariff_changes` lists the dates on which the card
changes between two dates. stdlib and numpy only: this module ships with every model version.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

CARD_PATH = Path(__file__).with_name("rate_card.csv")
SERVICES = ("yellow", "green")
ANY_SERVICE = "*"
COLUMNS = ("service", "component", "amount", "effective_from", "source", "note")
COMPONENTS = (
    "initial_charge",  # the meter's drop charge
    "per_unit",  # each 1/5 mile moving or minute slow
    "jfk_flat_fare",  # JFK <-> Manhattan (RatecodeID 2)
    "newark_surcharge",  # added to the metered fare to or from Newark (RatecodeID 3)
    "peak_extra",  # weekdays 16:00-20:00
    "overnight_extra",  # 20:00-06:00
    "jfk_peak_extra",  # the peak extra on a JFK flat fare
    "mta_tax",
    "improvement_surcharge",
    "congestion_surcharge",  # trips touching Manhattan below 96th St
    "airport_fee",  # pickups at JFK and LaGuardia
    "cbd_congestion_fee",  # trips touching Manhattan below 60th St
    "toll_standard",  # a typical bridge or tunnel toll
    "newark_toll",  # the tolls of a trip to or from Newark
)


@dataclass(frozen=True)
class RateRow:
    """One row of the card: ``amount`` dollars of ``component`` for ``service`` (or ``*``) from
    ``effective_from``; ``line`` is its line number in the file it came from."""

    service: str
    component: str
    amount: float
    effective_from: date
    source: str
    note: str
    line: int = 0

    def applies_to(self, service: str) -> bool:
        """Whether the row sets the amount for ``service`` (its own row or a ``*`` row)."""
        return self.service in (service, ANY_SERVICE)


@dataclass(frozen=True)
class TariffChange:
    """The card's rows that take effect on ``effective_from``, and the components they set."""

    effective_from: date
    components: tuple[str, ...]
    rows: tuple[RateRow, ...]


@dataclass(frozen=True)
class RateCard:
    """A validated rate card: its rows in file order and the file they came from (``None`` if built in code)."""

    rows: tuple[RateRow, ...]
    path: Path | None = None

    def __post_init__(self) -> None:
        _validate(self.rows, self.path)

    def history(self, component: str, service: str) -> tuple[np.ndarray, np.ndarray]:
        """The effective dates (``datetime64[us]``, ascending) and amounts (float64) of ``component`` for
        ``service``."""
        _check_names(component, service)
        rows = sorted(
            (r for r in self.rows if r.component == component and r.applies_to(service)),
            key=lambda r: r.effective_from,
        )
        dates = np.array([np.datetime64(r.effective_from, "us") for r in rows], dtype="datetime64[us]")
        return dates, np.array([r.amount for r in rows], dtype=np.float64)


def load_rate_card(path: str | Path | None = None) -> RateCard:
    """Read and validate the card at ``path`` (default: the packaged ``rate_card.csv``).

    Raises ``ValueError`` naming the file and line of a row with an unknown service or component, a negative or
    unparsable amount, an unparsable date, or the same (service, component, date) as an earlier row.
    """
    if path is None:
        return _packaged_card()
    return _read(Path(path))


@functools.cache
def _packaged_card() -> RateCard:
    return _read(CARD_PATH)


def _read(path: Path) -> RateCard:
    with path.open(encoding="utf-8", newline="") as f:
        numbered = [
            (i, line) for i, line in enumerate(f, start=1) if line.strip() and not line.startswith("#")
        ]
    if not numbered:
        raise ValueError(f"{path}: no header row: expected the columns {', '.join(COLUMNS)}")
    header_line = numbered[0][0]
    reader = csv.reader(line for _, line in numbered)
    names = [n.strip() for n in next(reader)]
    if tuple(names) != COLUMNS:
        raise ValueError(f"{path}:{header_line}: header {names}: expected the columns {list(COLUMNS)}")
    rows = []
    for (line, _), cells in zip(numbered[1:], reader, strict=True):
        rows.append(_parse_row(path, line, cells))
    return RateCard(tuple(rows), path)


def _parse_row(path: Path, line: int, cells: list[str]) -> RateRow:
    where = f"{path}:{line}"
    if len(cells) != len(COLUMNS):
        raise ValueError(
            f"{where}: {len(cells)} cells {cells}: expected {len(COLUMNS)} ({', '.join(COLUMNS)})"
        )
    service, component, amount, effective_from, source, note = (c.strip() for c in cells)
    try:
        value = float(amount)
    except ValueError:
        raise ValueError(f"{where}: amount {amount!r} is not a number") from None
    try:
        day = date.fromisoformat(effective_from)
    except ValueError:
        raise ValueError(
            f"{where}: effective_from {effective_from!r} is not an ISO date (YYYY-MM-DD)"
        ) from None
    return RateRow(service, component, value, day, source, note, line)


def _validate(rows: Sequence[RateRow], path: Path | None) -> None:
    seen: dict[tuple[str, str, date], RateRow] = {}
    for row in rows:
        where = f"{path or 'rate card'}:{row.line}" if row.line else f"rate card row {row}"
        if row.service not in (*SERVICES, ANY_SERVICE):
            raise ValueError(f"{where}: unknown service {row.service!r}: expected one of {[*SERVICES, '*']}")
        if row.component not in COMPONENTS:
            raise ValueError(
                f"{where}: unknown component {row.component!r}: expected one of {list(COMPONENTS)}"
            )
        if not np.isfinite(row.amount) or row.amount < 0:
            raise ValueError(
                f"{where}: amount {row.amount!r} of {row.component}: expected a non-negative number"
            )
        for service in SERVICES if row.service == ANY_SERVICE else (row.service,):
            key = (service, row.component, row.effective_from)
            if key in seen:
                raise ValueError(
                    f"{where}: {row.component} for {service} from {row.effective_from} is already set "
                    f"(line {seen[key].line} of the card)"
                )
            seen[key] = row


def _check_names(component: str, service: str) -> None:
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}: expected one of {list(COMPONENTS)}")
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}: expected one of {list(SERVICES)}")


def _card(card: RateCard | str | Path | None) -> RateCard:
    return card if isinstance(card, RateCard) else load_rate_card(card)


def amount_at(
    component: str, service: str, when: ArrayLike, card: RateCard | str | Path | None = None
) -> np.ndarray:
    """The amount (float64 dollars) of ``component`` for ``service`` in force at each instant of ``when``.

    ``when`` holds pickup instants as ``datetime64`` values of any unit (or ISO strings); integers are read as
    microseconds since the epoch, the generator's unit. The result has the shape of ``when``; it is 0 before
    the component's first row. ``card`` is a :class:`RateCard`, the path of a card file, or ``None`` for the
    packaged card.
    """
    dates, amounts = _card(card).history(component, service)
    arr = np.asarray(when)
    if np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.int64).view("datetime64[us]")
    else:
        arr = arr.astype("datetime64[us]")
    idx = np.searchsorted(dates, arr, side="right") - 1
    in_force = np.concatenate(([0.0], amounts))
    return in_force[idx + 1]


def _instant(value: date | datetime | str) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    return datetime.fromisoformat(value)


def tariff_changes(
    start: date | datetime | str,
    end: date | datetime | str,
    service: str | None = None,
    card: RateCard | str | Path | None = None,
) -> list[TariffChange]:
    """The card's changes taking effect at or after ``start`` and before ``end``, one per date, in date order.

    ``start`` and ``end`` are dates (meaning their 00:00), datetimes or ISO strings; a change takes effect at
    00:00 of its ``effective_from``. ``service`` keeps the rows that apply to it (its own and ``*`` rows); ``None`` keeps every row. A change's
    ``components`` are the components its rows set, in :data:`COMPONENTS` order.
    """
    start_at, end_at = _instant(start), _instant(end)
    if service is not None and service not in SERVICES:
        raise ValueError(f"unknown service {service!r}: expected one of {list(SERVICES)} or None")
    by_day: dict[date, list[RateRow]] = {}
    for row in _card(card).rows:
        took_effect = _instant(row.effective_from)
        if start_at <= took_effect < end_at and (service is None or row.applies_to(service)):
            by_day.setdefault(row.effective_from, []).append(row)
    changes = []
    for day in sorted(by_day):
        rows = tuple(by_day[day])
        components = tuple(c for c in COMPONENTS if any(r.component == c for r in rows))
        changes.append(TariffChange(day, components, rows))
    return changes
