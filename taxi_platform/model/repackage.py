"""Repackage a registered version: its fitted state, logged again with the installed ``fare_model`` package, so a
rate-card row added after the version was validated reaches its quotes from the row's date, without retraining.

A version is immutable: it ships the package (and so the rate card) it was validated with
(:mod:`taxi_platform.model.model_package`). When the TLC announces a fare change, the new rows go into
``fare_model/rate_card.csv`` of a new release; :func:`repackage` then makes a *new* version from the champion (or
any version) with that release's package and the same fitted state, and gates it like any other version:

1. **What changed** (:func:`plan`): the source's shipped card and the installed card are compared row by row
   (:func:`card_changes`). Refused — nothing is logged — when the cards are equal (nothing to repackage), when the
   first change takes effect on or before the last day of the version's validation month (its validated MAE would no
   longer describe it: retrain that month instead), when the source was built with another state format or feature
   version, or when package files other than the card differ (the release changed how quotes are priced, not only
   the tariff) unless ``allow_code_change``.
2. **Nothing else moved**: before anything is registered the new version is loaded from its logged files and both
   versions price the fixed probe quotes (:func:`~taxi_platform.model.model_package.probe_quotes`) dated in the
   validation month and in the two weeks before the first change: fares, ranges, items and totals must agree to
   1e-9, else the logged run is marked failed and :class:`RepackageError` names the worst quote.
3. **Registered and gated**: the new version carries the source's window, validation month, checks and data
   tags, plus ``repackaged_from`` and ``rate_card_changes``; it supersedes the source as its month's model
   (:mod:`taxi_platform.model.gate_rule`: the latest version of a month), and the gate's replay decides the
   champion, scoring it on the validation month's ``trip_features``, which must be in the lake (checked first: a
   version the gate cannot score would hand its month's place to nobody).
4. **Re-runs end where one run ends** (:func:`plan_or_resume`): a repackage killed after its version was registered
   left that version (all its tags are written at once); a re-run finds it and finishes its gate instead of
   registering another.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from taxi_platform.core.months import shift_month
from taxi_platform.fare_model.features import FEATURES_VERSION
from taxi_platform.fare_model.pyfunc import STATE_ARTIFACT, STATE_FORMAT
from taxi_platform.fare_model.rate_card import RateCard, RateRow, load_rate_card
from taxi_platform.model.model_package import (
    PACKAGE_DIR,
    SHIPPED_PREFIX,
    package_digest,
    package_files,
    probe_quotes,
)
from taxi_platform.model.version_tags import (
    CHECKS_FAILED_TAG,
    CODE_TAG,
    CONTRACT_TAG,
    DAGSTER_RUN_ID_TAG,
    DATA_SOURCE_TAG,
    FAMILY_TAG,
    FEATURES_TAG,
    GIT_SHA_TAG,
    INTERVAL_COVERAGE_TAG,
    MAX_TAG_VALUE,
    PARTITION_TAG,
    RATE_CARD_CHANGES_TAG,
    REPACKAGED_FROM_TAG,
    STATE_TAG,
    TRAIN_MONTHS_TAG,
    TRAINING_TAG,
    VALIDATION_MAE_TAG,
    VALIDATION_MONTH_TAG,
)

if TYPE_CHECKING:  # pragma: no cover
    from taxi_platform.lake.lake import Lake
    from taxi_platform.model.gate import GateDecision

CARD_FILE = "rate_card.csv"
TOLERANCE = 1e-9
# The source's tags a repackaged version keeps: what it was trained and validated on (the fitting is the same).
KEPT_TAGS = (
    TRAIN_MONTHS_TAG,
    VALIDATION_MONTH_TAG,
    VALIDATION_MAE_TAG,
    FAMILY_TAG,
    PARTITION_TAG,
    DAGSTER_RUN_ID_TAG,
    GIT_SHA_TAG,
    DATA_SOURCE_TAG,
    CHECKS_FAILED_TAG,
    INTERVAL_COVERAGE_TAG,
    CONTRACT_TAG,
)
KEPT_TAG_PREFIXES = ("tuning.",)


class RepackageError(RuntimeError):
    """A version cannot be repackaged (the reason says why and what to do); nothing was registered."""


@dataclass(frozen=True)
class CardChange:
    """One (service, component, effective date) whose amount differs between two cards (``None``: no such row)."""

    service: str
    component: str
    effective_from: date
    before: float | None
    after: float | None

    def describe(self) -> str:
        what = f"{self.service} {self.component} from {self.effective_from.isoformat()}"
        if self.before is None:
            return f"{what}: {self.after:.2f} (new row)"
        if self.after is None:
            return f"{what}: {self.before:.2f} removed"
        return f"{what}: {self.before:.2f} -> {self.after:.2f}"


def card_changes(before: RateCard, after: RateCard) -> list[CardChange]:
    """The rows of ``after`` that ``before`` lacks or prices differently, and the rows it dropped, by date."""

    def keyed(card: RateCard) -> dict[tuple[str, str, date], RateRow]:
        return {(r.service, r.component, r.effective_from): r for r in card.rows}

    old, new = keyed(before), keyed(after)
    out = []
    for key in sorted(set(old) | set(new), key=lambda k: (k[2], k[1], k[0])):
        a, b = old.get(key), new.get(key)
        if a is not None and b is not None and a.amount == b.amount:
            continue
        out.append(CardChange(key[0], key[1], key[2], a and a.amount, b and b.amount))
    return out


@dataclass(frozen=True)
class RepackagePlan:
    """What a repackage of ``source_version`` would change (see :func:`plan`)."""

    source_version: str
    source_dir: Path
    source_tags: Mapping[str, str]
    validation_month: str
    changes: tuple[CardChange, ...]
    code_files_changed: tuple[str, ...]  # package files other than the card that differ (allowed on request)
    source_built: Mapping[
        str, str
    ]  # what the source recorded of the code it was built with (its MLmodel metadata)
    installed_code: str

    @property
    def source_code(self) -> str:
        return self.source_built.get(CODE_TAG, "")

    @property
    def first_change(self) -> date:
        return min(c.effective_from for c in self.changes)

    def changes_text(self) -> str:
        return "; ".join(c.describe() for c in self.changes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source_version": self.source_version,
            "validation_month": self.validation_month,
            "rate_card_changes": [c.describe() for c in self.changes],
            "first_change": self.first_change.isoformat(),
            "code": {"source": self.source_code, "installed": self.installed_code},
            "code_files_changed": list(self.code_files_changed),
        }


def _shipped_package(path: Path) -> Path:
    code = path / "code"
    found = sorted(p for p in code.glob(f"{SHIPPED_PREFIX}*") if p.is_dir()) if code.is_dir() else []
    if len(found) != 1:
        raise RepackageError(
            f"{path} ships no {SHIPPED_PREFIX}<digest> package (found {len(found)}): only versions logged with "
            "their own fare_model package can be repackaged; retrain its month instead"
        )
    return found[0]


def _file_contents(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in package_files(root)}


def changed_code_files(shipped: Path, installed: Path = PACKAGE_DIR) -> list[str]:
    """Package files (other than the rate card) that differ between a shipped package and the installed one."""
    a, b = _file_contents(shipped), _file_contents(installed)
    return sorted(name for name in set(a) | set(b) if name != CARD_FILE and a.get(name) != b.get(name))


def plan(client: Any, model_name: str, version: str, allow_code_change: bool = False) -> RepackagePlan:
    """Compare ``version``'s shipped package with the installed one; raise :class:`RepackageError` when it must not
    be repackaged (the module's docstring lists the reasons)."""
    from mlflow.artifacts import download_artifacts

    from taxi_platform.model.model_loading import built_with, is_legacy

    mv = client.get_model_version(model_name, version)
    tags = dict(mv.tags or {})
    month = tags.get(VALIDATION_MONTH_TAG)
    if not month:
        raise RepackageError(
            f"{model_name} v{version} has no {VALIDATION_MONTH_TAG} tag: the gate could not place a repackaged "
            "version of it; only versions registered by fare_model can be repackaged"
        )
    source = client.get_model_version_download_uri(model_name, version)
    path = Path(download_artifacts(artifact_uri=source, tracking_uri=client.tracking_uri))
    if is_legacy(path):
        raise RepackageError(
            f"{model_name} v{version} was logged before the fare_model package: retrain {month}"
        )
    built = built_with(path)
    expected = {STATE_TAG: str(STATE_FORMAT), FEATURES_TAG: FEATURES_VERSION}
    differs = {k: (built.get(k), v) for k, v in expected.items() if built.get(k) != v}
    if differs:
        shown = ", ".join(f"{k} {a} (installed: {b})" for k, (a, b) in differs.items())
        raise RepackageError(
            f"{model_name} v{version} was built with {shown}: the installed package cannot read its fitted state "
            f"as it was fitted; retrain {month} instead"
        )
    shipped = _shipped_package(path)
    changes = card_changes(load_rate_card(shipped / CARD_FILE), load_rate_card())
    code_files = changed_code_files(shipped)
    installed_code = package_digest()
    if not changes:
        raise RepackageError(
            f"{model_name} v{version} already prices with the installed rate card"
            + (f" (other files differ: {', '.join(code_files)})" if code_files else "")
            + ": nothing to repackage"
        )
    last_day = shift_month(month, 1) - timedelta(days=1)
    early = [c for c in changes if c.effective_from <= last_day]
    if early:
        raise RepackageError(
            f"the installed rate card changes {'; '.join(c.describe() for c in early)}, on or before the last day "
            f"of v{version}'s validation month {month}: its validation MAE would no longer describe it; retrain "
            f"{month} (and later months) with the installed package instead"
        )
    if code_files and not allow_code_change:
        raise RepackageError(
            f"the installed fare_model package differs from v{version}'s in more than the rate card "
            f"({', '.join(code_files)}): a repackage would change how it prices, not only the tariff. Retrain, "
            "or pass --allow-code-change to repackage anyway (quotes before the first card change must still "
            "price exactly as before)"
        )
    return RepackagePlan(
        source_version=str(version),
        source_dir=path,
        source_tags=tags,
        validation_month=month,
        changes=tuple(changes),
        code_files_changed=tuple(code_files),
        source_built=built,
        installed_code=installed_code,
    )


def plan_or_resume(
    client: Any, model_name: str, version: str, allow_code_change: bool = False
) -> tuple[RepackagePlan, str | None]:
    """The plan for repackaging ``version``, and the version an interrupted repackage already registered for it
    (``None``: there is none, log a new one).

    A repackage killed after registering its version leaves one tagged ``repackaged_from`` with the installed
    code: a re-run gates that version instead of registering another, so re-running ends where an uninterrupted
    run ends. ``version`` may be that version itself (the gate had moved ``champion`` to it but not yet recorded all
    its decision tags): then its source is planned again and its gate finished.
    """
    from taxi_platform.model.registry_records import list_versions
    from taxi_platform.model.version_tags import GATE_DECISION_TAGS

    installed = package_digest()
    tags = dict(client.get_model_version(model_name, version).tags or {})
    source = tags.get(REPACKAGED_FROM_TAG)
    if source and tags.get(CODE_TAG) == installed and not all(k in tags for k in GATE_DECISION_TAGS):
        return plan(client, model_name, source, allow_code_change), str(version)
    the_plan = plan(client, model_name, version, allow_code_change)
    for mv in sorted(list_versions(client, model_name), key=lambda v: int(v.version)):
        found = dict(mv.tags or {})
        if found.get(REPACKAGED_FROM_TAG) == the_plan.source_version and found.get(CODE_TAG) == installed:
            return the_plan, str(mv.version)
    return the_plan, None


# -- the price guard -------------------------------------------------------------------------------------
def probes_around(day: date, after: bool = False) -> pd.DataFrame:
    """The probe quotes moved by whole weeks (weekdays and times kept) to the two weeks just before ``day``, or
    (``after``) to the two weeks from ``day``."""
    quotes = probe_quotes()
    stamps = pd.to_datetime(quotes["pickup_datetime"])
    first = stamps.min().normalize()  # the probes span the seven days from here
    days = (pd.Timestamp(day) - first).days
    weeks = -(-days // 7) if after else days // 7 - 1
    moved = stamps + pd.Timedelta(weeks=weeks)
    return quotes.assign(pickup_datetime=moved.dt.strftime("%Y-%m-%dT%H:%M:%S"))


def _priced(model: Any, quotes: pd.DataFrame) -> pd.DataFrame:
    return model.predict(quotes.copy())


def compare_prices(source: Any, repackaged: Any, quotes: pd.DataFrame) -> tuple[float, str]:
    """The largest absolute difference between two versions' pyfunc outputs on ``quotes`` and where it is: every
    numeric column (a value missing on one side counts as infinite); a text column that differs, or a column only
    one side has, counts as infinite too."""
    a, b = _priced(source, quotes), _priced(repackaged, quotes)
    if list(a.columns) != list(b.columns):
        return float("inf"), f"the outputs' columns differ: {list(a.columns)} vs {list(b.columns)}"
    worst, where = 0.0, ""
    for column in a.columns:
        if pd.api.types.is_numeric_dtype(a[column]) and pd.api.types.is_numeric_dtype(b[column]):
            x, y = a[column].to_numpy(dtype=np.float64), b[column].to_numpy(dtype=np.float64)
            diff = np.where(np.isnan(x) & np.isnan(y), 0.0, np.abs(x - y))
            diff = np.where(np.isnan(diff), np.inf, diff)
        else:
            x, y = a[column].to_numpy(dtype=object), b[column].to_numpy(dtype=object)
            diff = np.where(x == y, 0.0, np.inf)
        if len(diff) and diff.max() > worst:
            i = int(diff.argmax())
            worst = float(diff[i])
            where = f"{column} of quote {quotes.iloc[i].to_dict()}: {x[i]} vs {y[i]}"
    return worst, where


@dataclass
class RepackageResult:
    """A registered repackaged version, what changed, the guard's figures and the gate's decision."""

    plan: RepackagePlan
    version: str
    run_id: str
    guard_quotes: int
    guard_max_abs_diff: float
    total_change_from_first_change: dict[str, float] = field(default_factory=dict)
    decision: GateDecision | None = None
    resumed: bool = False  # an interrupted repackage's version, gated now (nothing new logged)

    def as_dict(self) -> dict[str, Any]:
        d = self.decision
        return {
            **self.plan.as_dict(),
            "version": self.version,
            "resumed": self.resumed,
            "run_id": self.run_id,
            "guard_quotes": self.guard_quotes,
            "guard_max_abs_diff": self.guard_max_abs_diff,
            "total_change_from_first_change": self.total_change_from_first_change,
            "promoted": None if d is None else d.promoted,
            "champion_version": None if d is None else d.champion_version,
            "gate_reason": None if d is None else d.reason,
        }


def _total_change(source: Any, repackaged: Any, day: date) -> dict[str, float]:
    """How the probe quotes' totals before tip move from ``day`` (new version minus source)."""
    quotes = probes_around(day, after=True)
    a, b = _priced(source, quotes), _priced(repackaged, quotes)
    delta = b["total_before_tip"].to_numpy(dtype=np.float64) - a["total_before_tip"].to_numpy(
        dtype=np.float64
    )
    return {
        "quotes": int(len(delta)),
        "changed": int((np.abs(delta) > 0.005).sum()),
        "mean": round(float(delta.mean()), 4),
        "max_abs": round(float(np.abs(delta).max()), 4),
    }


def repackage(
    client: Any,
    model_name: str,
    version: str,
    lake: Lake,
    *,
    allow_code_change: bool = False,
    tolerance: float | None = None,
    slice_tolerance: float | None = None,
    slice_min_support: int | None = None,
    require_shadow: bool = False,
    evaluation_rows: int = 100_000,
    seed: int | None = None,
    run_tags: Mapping[str, str] | None = None,
) -> RepackageResult:
    """Repackage ``version`` (see the module docstring) in the active MLflow experiment; returns what happened.

    The MLflow tracking URI must already point at ``client``'s store (``mlflow.set_tracking_uri``): the new
    version is logged with MLflow's fluent API, in a run named ``repackage v<version>``."""
    import mlflow

    from taxi_platform.model.gate import gate_challenger
    from taxi_platform.model.gate_rule import DEFAULT_TOLERANCE
    from taxi_platform.model.gate_scoring import GateScorer, LakeEvaluation
    from taxi_platform.model.gate_slices import DEFAULT_MIN_SUPPORT, DEFAULT_SLICE_TOLERANCE
    from taxi_platform.model.model_loading import artifact_path, load_version
    from taxi_platform.model.model_package import relog_fitted_state
    from taxi_platform.model.run_registration import record_decision
    from taxi_platform.model.thread_limits import small_data_threads
    from taxi_platform.model.training import TrainConfig

    the_plan, resumed = plan_or_resume(client, model_name, str(version), allow_code_change)
    seed = TrainConfig().seed if seed is None else seed
    evaluation = LakeEvaluation(lake, rows=evaluation_rows, seed=seed)
    if evaluation.fingerprint(the_plan.validation_month) is None:
        raise RepackageError(
            f"trip_features has no data for {the_plan.validation_month} in the lake at {lake.root}: the gate could "
            f"not score a repackaged v{the_plan.source_version} there, and the new version would take its month's "
            "place unscored. Point TAXI_LAKE_ROOT at the lake the model was trained from"
        )
    source_tags = the_plan.source_tags
    tags = {k: source_tags[k] for k in KEPT_TAGS if k in source_tags}
    tags.update({k: v for k, v in source_tags.items() if k.startswith(KEPT_TAG_PREFIXES)})
    tags[REPACKAGED_FROM_TAG] = the_plan.source_version
    tags[RATE_CARD_CHANGES_TAG] = the_plan.changes_text()[:MAX_TAG_VALUE]
    training_version = source_tags.get(TRAINING_TAG) or the_plan.source_built.get(TRAINING_TAG, "")
    if resumed is None:
        started = mlflow.start_run(
            run_name=f"repackage v{the_plan.source_version}", tags={**tags, **dict(run_tags or {})}
        )
    else:  # the interrupted run, when it is still there
        run_id = client.get_model_version(model_name, resumed).run_id
        started = mlflow.start_run(run_id=run_id) if run_id else mlflow.start_run(tags=tags)
    with started as run:
        try:
            if resumed is None:
                info = relog_fitted_state(
                    artifact_path(the_plan.source_dir, STATE_ARTIFACT), training_version, tags=tags
                )
                new_uri = info.model_uri
            else:
                new_uri = f"models:/{model_name}/{resumed}"
            source_model = load_version(str(the_plan.source_dir))
            new_model = load_version(new_uri)
            guard = pd.concat(
                [
                    probes_around(date.fromisoformat(f"{the_plan.validation_month}-15")),
                    probes_around(the_plan.first_change),
                ],
                ignore_index=True,
            )
            worst, where = compare_prices(source_model, new_model, guard)
            mlflow.log_metrics({"guard_quotes": len(guard), "guard_max_abs_diff": worst})
            if not worst <= TOLERANCE:
                raise RepackageError(
                    f"the repackaged v{the_plan.source_version} prices a quote before the first rate-card change "
                    f"({the_plan.first_change}) differently: {where} (max |diff| {worst:.6g})"
                    + ("; nothing was registered" if resumed is None else "")
                )
            moved = _total_change(source_model, new_model, the_plan.first_change)
            mlflow.log_dict(
                {"changes": [c.describe() for c in the_plan.changes], "total_change": moved}, "repackage.json"
            )
            if resumed is None:
                registered = mlflow.register_model(
                    info.model_uri, model_name, tags=_registry_tags(tags, info)
                )
                new_version = str(registered.version)
            else:
                new_version = resumed
            uri = client.tracking_uri
            decision = gate_challenger(
                client,
                model_name,
                new_version,
                evaluation,
                tolerance=DEFAULT_TOLERANCE if tolerance is None else tolerance,
                tracking_uri=uri,
                scorer=GateScorer(small_data_threads(None, evaluation_rows), registry_uri=uri),
                slice_tolerance=DEFAULT_SLICE_TOLERANCE if slice_tolerance is None else slice_tolerance,
                slice_min_support=DEFAULT_MIN_SUPPORT if slice_min_support is None else slice_min_support,
                require_shadow=require_shadow,
            )
            record_decision(client, model_name, new_version, decision)
        except BaseException as exc:
            mlflow.set_tag("repackage_error", f"{type(exc).__name__}: {exc}"[:MAX_TAG_VALUE])
            mlflow.end_run(status="FAILED")
            raise
    return RepackageResult(
        plan=the_plan,
        version=new_version,
        run_id=run.info.run_id,
        guard_quotes=len(guard),
        guard_max_abs_diff=worst,
        total_change_from_first_change=moved,
        decision=decision,
        resumed=resumed is not None,
    )


def version_or_champion(client: Any, model_name: str, version: str | None) -> str:
    """``version``, or the champion's version when it is ``None`` (:class:`RepackageError` without a champion)."""
    from taxi_platform.model.champion_lookup import current_champion

    if version is not None:
        return str(version)
    champion = current_champion(client, model_name)
    if champion is None:
        raise RepackageError(
            f"{model_name} has no champion at {client.tracking_uri}: name the version to repackage"
        )
    return str(champion.version)


def run_repackage(
    tracking_uri: str,
    lake: Lake,
    version: str | None = None,
    *,
    experiment: str,
    artifacts_dir: Path,
    **options: Any,
) -> RepackageResult:
    """:func:`repackage` ``version`` (default: the champion) at ``tracking_uri``, logging in ``experiment`` (created
    with its artifacts under ``artifacts_dir`` in a local store); MLflow's process-wide URIs and its ``MLFLOW_*``
    variables are put back afterwards. ``options`` go to :func:`repackage`. What the command and the
    ``repackage_champion`` job run."""
    import os

    import mlflow

    from taxi_platform.core.settings import MODEL_NAME
    from taxi_platform.model.gate import ensure_reachable
    from taxi_platform.model.registry_records import registry_client
    from taxi_platform.model.tracking import ensure_local_experiment

    ensure_reachable(tracking_uri)
    client = registry_client(tracking_uri)
    version = version_or_champion(client, MODEL_NAME, version)
    saved_env = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    try:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        ensure_local_experiment(tracking_uri, experiment, artifacts_dir)
        mlflow.set_experiment(experiment)
        return repackage(client, MODEL_NAME, version, lake, **options)
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
        for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
            os.environ.pop(key)
        os.environ.update(saved_env)


def _registry_tags(tags: Mapping[str, str], info: Any) -> dict[str, str]:
    """The version's tags in one registry write: the kept source tags and the code the new version was built with."""
    metadata = getattr(info, "metadata", None) or {}
    return {
        **tags,
        **{k: str(v) for k, v in metadata.items() if k in (CODE_TAG, FEATURES_TAG, TRAINING_TAG, STATE_TAG)},
    }


def describe(result: RepackageResult) -> str:
    """A few lines for people: what changed, the guard, how quotes move, the gate's decision."""
    p, d = result.plan, result.decision
    moved = result.total_change_from_first_change
    lines = [
        f"v{result.version}: v{p.source_version}'s fitted state (validated on {p.validation_month}) with fare_model "
        f"{p.installed_code} (was {p.source_code or 'unknown'})",
        f"rate card: {p.changes_text()}",
        f"guard: {result.guard_quotes} probe quotes before {p.first_change} price exactly as v{p.source_version}'s "
        f"(max |diff| {result.guard_max_abs_diff:.2g})",
        f"from {p.first_change}: {moved.get('changed', 0)} of {moved.get('quotes', 0)} probe totals change, mean "
        f"{moved.get('mean', 0.0):+.2f} $ (max {moved.get('max_abs', 0.0):.2f} $)",
    ]
    if p.code_files_changed:
        lines.append(f"other package files changed (allowed): {', '.join(p.code_files_changed)}")
    if d is not None:
        lines.append(f"gate: {'promoted' if d.promoted else 'not promoted'}: {d.reason}")
    return "\n".join(lines)
