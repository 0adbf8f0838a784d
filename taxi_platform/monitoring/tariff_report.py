"""The tariff in force for a monitored month, read from the dated rate card, so a fare change reads as a rule.

The TLC changes fares by rule on known dates (the rate card, :mod:`taxi_platform.fare_model.rate_card`). A month
scored after such a change shows a higher error and drifted fares; :func:`tariff_section` says which card was in
force on the month's first day, which changes took effect inside the month, inside the champion's training window,
or between the window and the month, and says it in one sentence. :func:`change_record` and
:func:`describe_change` describe one change (date, components, old → new amounts per service).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from taxi_platform.fare_model.rate_card import (
    COMPONENTS,
    SERVICES,
    RateCard,
    TariffChange,
    amount_at,
    load_rate_card,
    tariff_changes,
)

# Where a change falls relative to the scored month and the champion's training window.
IN_MONTH = "in_month"
AFTER_TRAINING = "after_training_window"
IN_TRAINING = "in_training_window"
WHERES = (IN_TRAINING, AFTER_TRAINING, IN_MONTH)


def month_start(month: str) -> date:
    """The first day of ``month`` (``YYYY-MM`` or ``YYYY-MM-DD``)."""
    return date.fromisoformat(month[:7] + "-01")


def next_month_start(month: str) -> date:
    """The first day of the month after ``month``."""
    first = month_start(month)
    return (first + timedelta(days=32)).replace(day=1)


def _card(card: RateCard | str | Path | None) -> RateCard:
    return card if isinstance(card, RateCard) else load_rate_card(card)


def amounts_in_force(day: date, card: RateCard | str | Path | None = None) -> dict[str, dict[str, float]]:
    """Per service, every card component's amount (dollars) in force at 00:00 of ``day`` (0 before its first row)."""
    rate_card = _card(card)
    when = np.datetime64(day, "us")
    return {
        service: {c: round(float(amount_at(c, service, when, rate_card)), 2) for c in COMPONENTS}
        for service in SERVICES
    }


def change_record(change: TariffChange, card: RateCard | str | Path | None = None) -> dict[str, Any]:
    """One change as a JSON-ready dict: ``effective_from`` (ISO date) and ``components``, a list of
    ``{"component", "services", "from", "to"}`` (old and new amounts in dollars; services sharing the same old and
    new amounts are listed together)."""
    rate_card = _card(card)
    at = np.datetime64(change.effective_from, "us")
    before = at - np.timedelta64(1, "us")
    grouped: dict[tuple[str, float, float], list[str]] = {}
    for component in change.components:
        for service in SERVICES:
            if not any(r.component == component and r.applies_to(service) for r in change.rows):
                continue
            old = round(float(amount_at(component, service, before, rate_card)), 2)
            new = round(float(amount_at(component, service, at, rate_card)), 2)
            grouped.setdefault((component, old, new), []).append(service)
    return {
        "effective_from": change.effective_from.isoformat(),
        "components": [
            {"component": c, "services": services, "from": old, "to": new}
            for (c, old, new), services in grouped.items()
        ],
    }


def describe_change(record: dict[str, Any]) -> str:
    """``2022-12-19: initial_charge 2.50→3.00, …, airport_fee 1.25→1.75 (yellow)`` for a :func:`change_record`."""
    parts = []
    for item in record["components"]:
        only = "" if len(item["services"]) == len(SERVICES) else f" ({', '.join(item['services'])})"
        parts.append(f"{item['component']} {item['from']:.2f}→{item['to']:.2f}{only}")
    return f"{record['effective_from']}: {', '.join(parts)}"


def tariff_section(
    month: str, train_months: Sequence[str], card: RateCard | str | Path | None = None
) -> dict[str, Any]:
    """The report's ``tariff`` section for ``month`` scored by a champion trained on ``train_months`` (``YYYY-MM``).

    Holds ``in_force`` (per service, component → amount at the month's first day), ``changes`` (every
    :func:`change_record` from the training window's first day to the month's end, each with ``where``: one of
    :data:`WHERES`), ``straddles`` (whether the month or the window up to it spans a change) and ``sentence`` (one
    line saying so, or that the card held throughout).
    """
    rate_card = _card(card)
    first, end = month_start(month), next_month_start(month)
    window = sorted(m[:7] for m in train_months)
    window_start = month_start(window[0]) if window else first
    window_end = next_month_start(window[-1]) if window else first
    changes = []
    for change in tariff_changes(min(window_start, first), end, card=rate_card):
        day = change.effective_from
        if day >= first:
            where = IN_MONTH
        elif day >= window_end:
            where = AFTER_TRAINING
        else:
            where = IN_TRAINING
        changes.append({**change_record(change, rate_card), "where": where})
    return {
        "month": month[:7],
        "as_of": first.isoformat(),
        "training_window": [window[0], window[-1]] if window else [],
        "in_force": amounts_in_force(first, rate_card),
        "changes": changes,
        "straddles": bool(changes),
        "sentence": tariff_sentence(month, window, changes),
    }


def _span(window: Sequence[str]) -> str:
    return window[0] if len(window) == 1 else f"{window[0]}..{window[-1]}"


def tariff_sentence(month: str, window: Sequence[str], changes: Sequence[dict[str, Any]]) -> str:
    """One human sentence for :func:`tariff_section`: each change with where it falls and what it means for the
    month's scores, or that the card in force on the month's first day held throughout."""
    month = month[:7]
    span = _span(window) if window else month
    if not changes:
        return (
            f"No tariff change in {month} or since the start of the champion's training window ({span}): "
            f"the card in force on {month}-01 held throughout."
        )
    sentences = []
    for change in changes:
        text = f"Tariff changed on {describe_change(change)}"
        if change["where"] == IN_MONTH:
            text += (
                f" — inside {month}: fares after it follow the new card, so the month's errors and drift mix "
                "two cards (a rule change, not drift)."
            )
        elif change["where"] == AFTER_TRAINING:
            text += (
                f" — after the champion's training window ({span}) and before {month}: its training trips all "
                "predate it, so unless the model prices by the card a higher error here is the rule change, not drift."
            )
        else:
            text += (
                f" — inside the champion's training window ({span}): it learnt from trips under both cards; "
                f"{month} follows the new one."
            )
        sentences.append(text)
    return " ".join(sentences)


def rule_changes(section: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The changes of a ``tariff`` section the champion cannot have learnt the new card from: inside the month or
    after its training window."""
    if not section:
        return []
    return [c for c in section.get("changes", ()) if c.get("where") in (IN_MONTH, AFTER_TRAINING)]
