"""The promotion rule of the ``taxi_fare_model`` registry: which registered version is champion (MLflow aliases;
stages are not used). This docstring is the one statement of the rule; the gate
(:func:`taxi_platform.model.gate.gate_challenger`) applies it, the ``fare_model`` asset and the README point here.

The rule
--------
Every registered version carries the tags ``train_months`` (comma list ``YYYY-MM``) and ``validation_month``.
A month's model is the *latest* version registered for that validation month: a re-run or a republished month
supersedes the month's earlier version. A version tagged ``checks_failed`` (its asset checks failed) is never
champion and supersedes nothing: a failed re-run leaves the month's earlier model in place.

The champion is *defined* as the result of a chronological replay over the months' models:

1. the first month's model (by validation month) is champion;
2. for each next month's model C, it and the current champion H are scored on C's validation month, a month
   neither trained on (H's training ends before H's validation month, which is before C's; C validates on it);
3. C replaces H unless ``MAE(C) > MAE(H) * (1 + tolerance)`` (default tolerance 1 %): a fresher model that is
   as good, within the tolerance, wins; a challenger whose training data ends before H's is never promoted.

Two optional parts keep a challenger out that passes step 3: the slice rule (``slice_tolerance``, default 5 %,
on every material slice with at least ``slice_min_support`` evaluation trips, :mod:`taxi_platform.model.gate_slices`)
and ``require_shadow`` (version tag ``shadow_verdict`` = ``pass`` needed).

Because the gate replays the whole history every time, the run order (a reversed backfill, two partitions in
parallel, a republished old month) cannot change the result: the alias ends on the model a chronological run
would have chosen. Scoring is cheap to repeat: each (version, evaluation month, data fingerprint) MAE is cached
as a version tag (:mod:`taxi_platform.model.gate_scoring`), so every pair is scored at most once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from taxi_platform.model.gate_slices import (
    DEFAULT_MIN_SUPPORT,
    DEFAULT_SLICE_TOLERANCE,
    SliceComparison,
    SliceMaes,
    compare,
)
from taxi_platform.model.registry_records import MonthModel
from taxi_platform.model.version_tags import SHADOW_VERDICT_TAG

DEFAULT_TOLERANCE = 0.01

# outcomes of one replay step
FIRST = "first"
PROMOTED = "promoted"
KEPT = "kept"
OLDER_TRAINING = "older_training"
NO_DATA = "no_evaluation_data"


def month_models(versions: Iterable[MonthModel]) -> dict[str, MonthModel]:
    """Validation month -> that month's model: its latest registered version that passed its checks.

    A re-run or republished month supersedes the month's earlier version; a version that failed its checks
    supersedes nothing (a failed re-run leaves the month's earlier model in place).
    """
    latest: dict[str, MonthModel] = {}
    for model in versions:
        if not model.eligible:
            continue
        held = latest.get(model.validation_month)
        if held is None or int(model.version) > int(held.version):
            latest[model.validation_month] = model
    return latest


# -- the replay ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplayStep:
    """What the replay decided when it reached one month's model."""

    version: str
    validation_month: str
    outcome: str  # first | promoted | kept | older_training | no_evaluation_data
    champion_before: str | None
    champion_before_month: str | None
    challenger_mae: float | None
    champion_mae: float | None
    reason: str
    worse_slices: tuple[str, ...] = ()  # material slices where the challenger lost by more than the tolerance

    @property
    def champion_after(self) -> str | None:
        return self.version if self.outcome in (FIRST, PROMOTED) else self.champion_before


@dataclass
class SliceRule:
    """The slice part of the gate: ``scores(model, month)`` gives a version's slice MAEs on the month."""

    scores: Callable[[MonthModel, str], SliceMaes | None]
    tolerance: float = DEFAULT_SLICE_TOLERANCE
    min_support: int = DEFAULT_MIN_SUPPORT

    def table(self, c: MonthModel, h: MonthModel, month: str) -> list[SliceComparison]:
        cs, hs = self.scores(c, month), self.scores(h, month)
        if cs is None or hs is None:
            return []
        return compare(cs, hs, self.tolerance, self.min_support)

    def worse(self, c: MonthModel, h: MonthModel, month: str) -> list[SliceComparison]:
        return [row for row in self.table(c, h, month) if row.worse]


def replay(
    models: Iterable[MonthModel],
    mae: Callable[[MonthModel, str], float | None],
    tolerance: float = DEFAULT_TOLERANCE,
    slices: SliceRule | None = None,
    require_shadow: bool = False,
) -> tuple[MonthModel | None, list[ReplayStep]]:
    """Replay the months' eligible models in validation-month order; the champion and one step per model.

    ``mae(model, month)`` scores ``model`` on ``month``'s evaluation sample (None: the month has no data).
    With ``slices``, a challenger within the overall tolerance is still kept out when it is worse than the champion
    on a material slice (:mod:`taxi_platform.model.gate_slices`). With ``require_shadow``, a challenger that passes
    is still kept out until its shadow quotes passed (version tag ``shadow_verdict`` = ``pass``).
    """
    champion: MonthModel | None = None
    steps: list[ReplayStep] = []
    for c in sorted((m for m in models if m.eligible), key=lambda m: (m.validation_month, int(m.version))):
        step = _step(c, champion, mae, tolerance, slices, require_shadow)
        steps.append(step)
        if step.outcome in (FIRST, PROMOTED):
            champion = c
    return champion, steps


def _step(
    c: MonthModel,
    h: MonthModel | None,
    mae: Callable[[MonthModel, str], float | None],
    tolerance: float,
    slices: SliceRule | None,
    require_shadow: bool,
) -> ReplayStep:
    """The replay's decision on challenger ``c`` against champion ``h`` (None: ``c`` is the first month's model)."""
    tag = f"v{c.version} ({c.validation_month})"
    if h is None:
        return ReplayStep(c.version, c.validation_month, FIRST, None, None, None, None,
                          f"{tag} is the first month's model: champion")  # fmt: skip
    htag = f"v{h.version} ({h.validation_month})"
    if c.train_end < h.train_end:
        return ReplayStep(
            c.version, c.validation_month, OLDER_TRAINING, h.version, h.validation_month, None, None,
            f"{tag} trained on data ending {c.train_end or 'nowhere'}, before champion {htag}'s "
            f"({h.train_end}): registered, never promoted",
        )  # fmt: skip
    month = c.validation_month
    c_mae = mae(c, month)
    h_mae = mae(h, month) if c_mae is not None else None
    if c_mae is None or h_mae is None:
        return ReplayStep(
            c.version, month, NO_DATA, h.version, h.validation_month, None, None,
            f"{tag}: trip_features has no data for {month} to score it on; champion {htag} kept",
        )  # fmt: skip
    return _scored_step(c, h, c_mae, h_mae, tolerance, slices, require_shadow)


def _scored_step(
    c: MonthModel,
    h: MonthModel,
    c_mae: float,
    h_mae: float,
    tolerance: float,
    slices: SliceRule | None,
    require_shadow: bool,
) -> ReplayStep:
    """The decision once both are scored on ``c``'s validation month: the overall MAE, slices, shadow verdict."""
    tag = f"v{c.version} ({c.validation_month})"
    htag = f"v{h.version} ({h.validation_month})"
    month = c.validation_month
    limit = h_mae * (1.0 + tolerance)
    worse = slices.worse(c, h, month) if slices is not None and c_mae <= limit else []
    verdict = c.tags.get(SHADOW_VERDICT_TAG)
    if require_shadow and c_mae <= limit and not worse and verdict != "pass":
        return ReplayStep(
            c.version, month, KEPT, h.version, h.validation_month, c_mae, h_mae,
            f"{tag} MAE {c_mae:.4f} on {month} passes the offline gate against champion {htag}'s {h_mae:.4f}, "
            f"but its shadow verdict is {verdict or 'not in yet'} (require_shadow): champion {htag} kept",
        )  # fmt: skip
    if worse:
        shown = "; ".join(f"{w.slice} {w.challenger_mae:.4f} vs {w.champion_mae:.4f} ({w.trips} trips)"
                          for w in worse[:5])  # fmt: skip
        return ReplayStep(
            c.version, month, KEPT, h.version, h.validation_month, c_mae, h_mae,
            f"{tag} MAE {c_mae:.4f} on {month} is within {tolerance:.2%} of champion {htag}'s {h_mae:.4f}, "
            f"but worse by more than {slices.tolerance:.2%} on {len(worse)} slice(s): {shown}; "
            f"champion {htag} kept",
            tuple(w.slice for w in worse),
        )  # fmt: skip
    if c_mae > limit:
        return ReplayStep(
            c.version, month, KEPT, h.version, h.validation_month, c_mae, h_mae,
            f"{tag} MAE {c_mae:.4f} on {month} is worse than champion {htag}'s {h_mae:.4f} by more than "
            f"{tolerance:.2%} (limit {limit:.4f}); champion {htag} kept",
        )  # fmt: skip
    return ReplayStep(
        c.version, month, PROMOTED, h.version, h.validation_month, c_mae, h_mae,
        f"{tag} MAE {c_mae:.4f} on {month} is within {tolerance:.2%} of (or better than) champion "
        f"{htag}'s {h_mae:.4f} (limit {limit:.4f}): the fresher model replaces it",
    )  # fmt: skip
